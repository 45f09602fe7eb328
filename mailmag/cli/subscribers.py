"""`mailmag subscribers …`: add, import, list, export, remove."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from mailmag import topics as topics_mod
from mailmag.addresses import smtputf8_note
from mailmag.audience import exports, imports, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.cli.common import AppContext, echo_rows, local_time, pass_app, plural, print_json
from mailmag.errors import InvalidInput, StateError
from mailmag.models import SUBSCRIBER_STATUSES, Subscriber


@click.group(name="subscribers")
def group() -> None:
    """Manage the subscriber list."""


@group.command()
@click.argument("email")
@click.option("--name", default="", help="Display name (氏名).")
@click.option("--org", "organization", default="", help="Organization (所属).")
@click.option("--lang", type=click.Choice(subscribers.LANGS), default=None, help="ja (default) or en.")
@click.option("--topic", "topics", multiple=True,
              help="A topic to receive ([web] topics); repeatable. None: every issue.")
@click.option("--pending", is_flag=True, help="Add as pending (waits for double opt-in).")
@click.option("--resubscribe", is_flag=True,
              help="Reactivate an unsubscribed, bounced or erased address (only if they asked again).")
@click.option("--source", default="added by the secretariat", show_default=True,
              help="Consent source recorded in the consent log.")
@pass_app
def add(app: AppContext, email: str, name: str, organization: str, lang: str | None,
        topics: tuple[str, ...], pending: bool, resubscribe: bool, source: str) -> None:
    """Add one subscriber (or update their details)."""
    address = subscribers.parse_address(email)
    chosen = topics_mod.check_codes(subscribers.parse_topics(topics), app.config.topics)
    with app.ready_services().session() as session:
        outcome, subscriber = subscribers.add(
            session, address, Consent("cli", source), name=name, organization=organization,
            lang=lang or "", topics=chosen, pending=pending,
            resubscribe=resubscribe,
        )
        if subscriber is None:
            raise StateError(
                f"{address.email} is suppressed (erased with remove --forget, or imported as unsubscribed, "
                "bounced or erased): nothing changed; pass --resubscribe only if they asked to be added again"
            )
        if outcome == "suppressed":
            raise StateError(
                f"{subscriber.email} is {subscriber.status}: nothing changed; pass --resubscribe "
                "only if they asked to be added again"
            )
        stored = subscriber.email
    click.echo(f"{outcome} {stored}")
    if address.needs_smtputf8:
        click.echo(f"note: {smtputf8_note(address.email)}", err=True)


@group.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--encoding", type=click.Choice(imports.ENCODINGS), default="auto", show_default=True,
              help="auto tells UTF-8 (with or without BOM) from CP932 (Shift_JIS).")
@click.option("--source", default=None, help="Consent source recorded (default: 'imported from FILE').")
@click.option("--strict", is_flag=True, help="Land nothing if any row is invalid.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option("--resubscribe", is_flag=True, help="Reactivate unsubscribed, bounced and erased addresses.")
@pass_app
def import_(app: AppContext, file: Path, encoding: str, source: str | None, strict: bool,
            dry_run: bool, resubscribe: bool) -> None:
    """Import subscribers from a CSV file (UTF-8 or CP932, Japanese or English headers).

    Prints `added A, updated U, unchanged K, invalid I, suppressed S`, then one
    `line L: reason` per row that was not imported. See subscribers/README.md.
    """
    consent = Consent("import", source or f"imported from {file.name}")
    services = app.ready_services()
    session = services.read_sessions() if dry_run else services.sessions()  # a dry run only reads
    try:
        with _progress(file) as progress:
            report = imports.import_file(session, file, consent, encoding=encoding, resubscribe=resubscribe,
                                         progress=progress, topics=app.config.topics, write=not dry_run)
        refused = strict and bool(report.invalid)
        if dry_run or refused:
            session.rollback()
        else:
            session.commit()
    finally:
        session.close()
    _print_report(report)
    if refused:
        rows = "row is" if len(report.invalid) == 1 else "rows are"
        raise InvalidInput(f"{len(report.invalid)} {rows} invalid and --strict is given: nothing was "
                           "imported; fix the rows above and import again")
    if dry_run:
        click.echo("dry run: nothing was written", err=True)


@contextlib.contextmanager
def _progress(file: Path) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on a terminal only: scripts and cron get clean output."""
    if not sys.stderr.isatty():
        yield None
        return
    try:
        with file.open("rb") as f:
            rows = max(sum(1 for _ in f) - 1, 0)
    except OSError:
        yield None  # import_file names the problem
        return
    with click.progressbar(length=rows, label="importing", file=sys.stderr) as bar:
        yield bar.update
        bar.update(rows - bar.pos)  # blank and invalid lines were not counted


def _print_report(report: imports.ImportReport) -> None:
    click.echo(report.summary())
    for line, reason in sorted(report.invalid):
        click.echo(f"line {line}: {reason}")
    for line, reason in report.suppressed:
        click.echo(f"line {line}: skipped: {reason} (--resubscribe reactivates)")
    for line, reason in report.left_out:
        click.echo(f"line {line}: skipped: {reason}")
    for line, reason in report.kept_choices:
        click.echo(f"line {line}: {reason}")
    for line, email in report.needs_smtputf8:
        click.echo(f"note: line {line}: {smtputf8_note(email)}", err=True)  # stdout lines are invalid rows
    if report.ignored_columns:
        click.echo(f"ignored columns: {', '.join(report.ignored_columns)}", err=True)


@group.command(name="list")
@click.option("--status", type=click.Choice(SUBSCRIBER_STATUSES), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def list_(app: AppContext, status: str | None, as_json: bool) -> None:
    """List subscribers: address, name, language, status (with its reason), added."""
    with app.ready_services().read_session() as session:
        rows = subscribers.listing(session, status)
    if as_json:
        print_json([_as_dict(s) for s in rows])
        return
    echo_rows([[s.email, s.name, s.lang, ",".join(s.topics) or "all",
                s.status + (f" ({s.status_reason})" if s.status_reason and s.status != "active" else ""),
                local_time(s.created_at, app.config)] for s in rows], "subscriber")


def _as_dict(s: Subscriber) -> dict[str, Any]:
    return {
        "email": s.email, "name": s.name, "organization": s.organization, "status": s.status,
        "status_reason": s.status_reason, "lang": s.lang, "topics": s.topics,
        "created_at": s.created_at,
    }


@group.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: standard output).")
@click.option("--encoding", type=click.Choice(exports.ENCODINGS), default="utf-8-sig",
              show_default=True, help="utf-8-sig (with BOM) and cp932 both open correctly in Excel.")
@click.option("--header", type=click.Choice(["ja", "en"]), default="ja", show_default=True,
              help="Column names in Japanese or English.")
@pass_app
def export(app: AppContext, output: Path | None, encoding: str, header: str) -> None:
    """Export every subscriber as CSV that Excel opens correctly."""
    with app.ready_services().read_session() as session:
        data, count = exports.export_bytes(session, encoding=encoding, header=header,
                                           zone=app.config.zone)
    if output is None:
        click.echo(data, nl=False)  # bytes: the BOM and the encoding reach a redirected file
        return
    exports.write_export(output, data)
    click.echo(f"exported {plural(count, 'subscriber')} to {output}", err=True)


@group.command()
@click.argument("email")
@click.option("--forget", is_flag=True,
              help="Erase personal data; keep only a hash so the address is never mailed again.")
@pass_app
def remove(app: AppContext, email: str, forget: bool) -> None:
    """Unsubscribe an address (it stays suppressed); --forget erases it."""
    with app.ready_services().session() as session:
        subscriber = subscribers.get(session, email)
        consent = Consent("cli", "removed by the secretariat")
        if forget:
            subscribers.forget(session, subscriber, consent)
            message = f"erased {subscriber.email} (a hashed suppression remains)"
        elif subscribers.unsubscribe(session, subscriber, consent):
            message = f"unsubscribed {subscriber.email}"
        else:
            message = f"{subscriber.email} was already unsubscribed"
    click.echo(message)


commands = [group]
