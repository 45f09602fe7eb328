"""What every command shares: the lazily built services, JSON output, time display."""

from __future__ import annotations

import datetime as dt
import json
from functools import cached_property
from typing import Any

import click

from mailmag import db
from mailmag.config import Config, load_config
from mailmag.scheduling.when import shown
from mailmag.services import Services


class AppContext:
    """The click context object: configuration and services are built on first use."""

    def __init__(self, config_path: str | None, debug: bool = False) -> None:
        self.config_path = config_path
        self.debug = debug

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    @cached_property
    def services(self) -> Services:
        return Services(self.config)

    def ready_services(self) -> Services:
        """Services whose database is initialised and current (else a one-line error)."""
        db.check_schema(self.services.engine)
        return self.services

    def close(self) -> None:
        if "services" in self.__dict__:
            self.services.close()


pass_app = click.make_pass_decorator(AppContext)


def print_json(document: Any) -> None:
    """One JSON document on stdout and nothing else (the scripts' contract)."""
    click.echo(json.dumps(document, ensure_ascii=False, indent=2, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def local_time(value: dt.datetime | None, config: Config) -> str:
    """A stored UTC time shown in the configured zone, e.g. '2026-12-01 09:00 JST'."""
    return "-" if value is None else shown(value, config.zone)
