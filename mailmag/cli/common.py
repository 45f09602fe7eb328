"""What every command shares: the lazily built services, JSON output, list rows, counts, time display.

One format for every listing: one row per line, tab-separated columns, "-" for an empty
value, and the count ("3 issues") on stderr, so `cut -f` and `sort` work on stdout.
JSON times are ISO 8601 in UTC with a Z ("2026-12-01T00:00:00Z"); dates are YYYY-MM-DD.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from functools import cached_property
from typing import Any

import click

from mailmag import db
from mailmag.config import Config, describe_search, load_config
from mailmag.delivery.window import waiting_for_window, waiting_note
from mailmag.delivery.workstate import DatabaseGuard
from mailmag.models import utcnow
from mailmag.scheduling.when import shown
from mailmag.services import Services


class AppContext:
    """The click context object: configuration and services are built on first use."""

    def __init__(self, config_path: str | None, debug: bool = False) -> None:
        self.config_path = config_path
        self.debug = debug

    @cached_property
    def config(self) -> Config:
        config = load_config(self.config_path)
        if config.source is None:  # a command run in the wrong folder says so before anything else
            click.echo(f"note: {describe_search()}", err=True)
        return config

    @cached_property
    def services(self) -> Services:
        return Services(self.config)

    def ready_services(self, *, wait_for_database: bool = False, once: bool = False) -> Services:
        """Services whose database is initialised and current (else a one-line error).

        `wait_for_database`: a service (worker, run) that starts while the database is locked
        (a backup) or away (a restart) waits for it, as it does once it is running; a one-shot
        run (`once`: a cron job) waits at most [dispatch] database_max_retry_seconds, then says
        why, so that a database that will never come (a wrong name) does not hold it for ever.
        """
        if wait_for_database:
            dispatch = self.config.dispatch
            most = dispatch.database_max_retry_seconds
            guard = DatabaseGuard(dispatch.database_retry_seconds, most, threading.Event(),
                                  give_up_after=most if once else None,
                                  waiting=f"waiting up to {most:g} s for it" if once else "waiting for it")
            guard.call(lambda: db.current_revision(self.services.engine))
        # read only: on SQLite every command, `issues status` too, waited for the write lock here
        # while an import or an enqueue held it (up to busy_timeout_seconds, then "locked")
        db.check_schema(self.services.read_engine)
        return self.services

    def close(self) -> None:
        if "services" in self.__dict__:
            self.services.close()


pass_app = click.make_pass_decorator(AppContext)


def print_json(document: Any) -> None:
    """One JSON document on stdout and nothing else (the scripts' contract)."""
    click.echo(json.dumps(document, ensure_ascii=False, indent=2, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return json_time(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_time(value: dt.datetime) -> str:
    """The one convention for times in JSON: ISO 8601, UTC, whole seconds, 'Z'."""
    return value.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def plural(count: int, noun: str, many: str | None = None) -> str:
    """'1 item', '2 items', '0 items'; `many` for irregular nouns."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


def echo_rows(rows: list[list[Any]], noun: str, many: str | None = None) -> None:
    """A listing: tab-separated columns on stdout ('-' for empty), the count on stderr."""
    for row in rows:
        click.echo("\t".join("-" if value in (None, "") else str(value) for value in row))
    click.echo(plural(len(rows), noun, many), err=True)


def local_time(value: dt.datetime | None, config: Config) -> str:
    """A stored UTC time shown in the configured zone, e.g. '2026-12-01 09:00 JST'."""
    return "-" if value is None else shown(value, config.zone)


def window_note(pending: int, config: Config) -> str | None:
    """For commands that queue or send: say so when the closed send window holds the mail back,
    rather than leave the secretariat wondering why nothing left."""
    opens = waiting_for_window(pending, utcnow(), config)
    return None if opens is None else f"note: {plural(pending, 'message')} {waiting_note(opens, config)}"
