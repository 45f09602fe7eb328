"""`mailmag subscribers …`: add, import, list, export, remove."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailmag.audience import imports, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.cli.common import AppContext, local_time, pass_app, print_json
from mailmag.errors import InvalidInput, StateError
from mailmag.models import SUBSCRIBER_STATUSES


@click.group(name="subscribers")
def group() -> None:
    """Manage the subscriber list."""


@group.command()
@click.argument("email")
@click.option("--name", default="", help="Display name (氏名).")
@click.option("--org", "organization", default="", help="Organization (所属).")
@click.option("--lang", type=click.Choice(subscribers.LANGS), default=None, help="ja (default) or en.")
@click.option("--topic", "topics", multiple=True, help="A topic to receive; repeatable.")
@click.option("--pending", is_flag=True, help="Add as pending (waits for double opt-in).")
@click.option("--resubscribe", is_flag=True, help="Reactivate an unsubscribed or bounced address.")
@click.option("--source", default="added by the secretariat", help="Consent source recorded.")
@pass_app
def add(app: AppContext, email: str, name: str, organization: str, lang: str | None,
        topics: tuple[str, ...], pending: bool, resubscribe: bool, source: str) -> None:
    """Add one subscriber (or update their details)."""
    address = subscribers.parse_address(email)
    with app.ready_services().session() as session:
        outcome, subscriber = subscribers.add(
            session, address, Consent("cli", source), name=name, organization=organization,
            lang=lang or "", topics=subscribers.parse_topics(topics), pending=pending,
            resubscribe=resubscribe,
        )
        if outcome == "suppressed":
            status = subscriber.status if subscriber else "forgotten (removed with --forget)"
            raise StateError(
                f"{address.email} is {status}; pass --resubscribe only if they asked to be "
                "added again"
            )
        if outcome == "added" and not lang:
            subscriber.lang = "ja"
    click.echo(f"{outcome} {address.email}")


@group.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--encoding", type=click.Choice(imports.ENCODINGS), default="auto", show_default=True)
@click.option("--source", default=None, help="Consent source recorded (default: the file name).")
@click.option("--strict", is_flag=True, help="Land nothing if any row is invalid.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option("--resubscribe", is_flag=True, help="Reactivate unsubscribed and bounced addresses.")
@pass_app
def import_(app: AppContext, file: Path, encoding: str, source: str | None, strict: bool,
            dry_run: bool, resubscribe: bool) -> None:
    """Import subscribers from a CSV file (UTF-8 or CP932, Japanese or English headers)."""
    consent = Consent("import", source or f"imported from {file.name}")
    services = app.ready_services()
    session = services.sessions()
    try:
        with _progress(file) as bar:
            report = imports.import_file(session, file, consent, encoding=encoding,
                                         resubscribe=resubscribe, progress=bar)
        landing = not dry_run and not (strict and report.invalid)
        session.commit() if landing else session.rollback()
    finally:
        session.close()
    _print_report(report, dry_run=dry_run, strict_refused=strict and bool(report.invalid))


class _progress:
    """A progress bar on a terminal only; scripts get clean output."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.bar = None

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not sys.stderr.isatty():
            return None
        lines = max(sum(1 for _ in self.file.open("rb")) - 1, 0)
        self.bar = click.progressbar(length=lines, label="importing", file=sys.stderr)
        return self.bar.__enter__().update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _print_report(report: imports.ImportReport, *, dry_run: bool, strict_refused: bool) -> None:
    click.echo(report.summary() + (" (dry run: nothing written)" if dry_run else ""))
    for line, reason in report.invalid:
        click.echo(f"line {line}: {reason}")
    for line, reason in report.suppressed:
        click.echo(f"line {line}: skipped: {reason}")
    if report.ignored_columns:
        click.echo(f"ignored columns: {', '.join(report.ignored_columns)}", err=True)
    if strict_refused:
        raise InvalidInput(
            f"{len(report.invalid)} invalid rows and --strict: nothing was imported"
        )


@group.command(name="list")
@click.option("--status", type=click.Choice(SUBSCRIBER_STATUSES), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def list_(app: AppContext, status: str | None, as_json: bool) -> None:
    """List subscribers."""
    with app.ready_services().session() as session:
        rows = subscribers.listing(session, status)
        if as_json:
            print_json([_as_dict(s) for s in rows])
            return
        for s in rows:
            reason = f"  ({s.status_reason})" if s.status_reason and s.status != "active" else ""
            click.echo(f"{s.email}\t{s.name}\t{s.lang}\t{s.status}\t"
                       f"{local_time(s.created_at, app.config)}{reason}")
        click.echo(f"{len(rows)} subscribers", err=True)


def _as_dict(s) -> dict:  # type: ignore[no-untyped-def]
    return {
        "email": s.email, "name": s.name, "organization": s.organization, "status": s.status,
        "status_reason": s.status_reason, "lang": s.lang, "topics": s.topics,
        "created_at": s.created_at,
    }


@group.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: standard output).")
@click.option("--encoding", type=click.Choice(["utf-8-sig", "cp932"]), default="utf-8-sig",
              show_default=True, help="utf-8-sig opens correctly in Excel.")
@click.option("--header", type=click.Choice(["ja", "en"]), default="ja", show_default=True)
@pass_app
def export(app: AppContext, output: Path | None, encoding: str, header: str) -> None:
    """Export every subscriber as CSV that Excel opens correctly."""
    with app.ready_services().session() as session:
        if output is None:
            stream = click.get_text_stream("stdout")
            imports.export_csv(session, stream, header=header)
            return
        try:
            with output.open("w", encoding=encoding, errors="strict", newline="") as out:
                count = imports.export_csv(session, out, header=header)
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"a subscriber's data cannot be written in {encoding} ({exc.object[exc.start]!r}); "
                "use --encoding utf-8-sig"
            ) from exc
    click.echo(f"exported {count} subscribers to {output}", err=True)


@group.command()
@click.argument("email")
@click.option("--forget", is_flag=True,
              help="Erase personal data; keep only a hash so the address is never mailed again.")
@pass_app
def remove(app: AppContext, email: str, forget: bool) -> None:
    """Unsubscribe an address (kept suppressed); --forget erases it."""
    with app.ready_services().session() as session:
        subscriber = subscribers.get(session, email)
        consent = Consent("cli", "removed by the secretariat")
        if forget:
            subscribers.forget(session, subscriber, consent)
            message = f"forgot {subscriber.email} (a hashed suppression remains)"
        elif subscribers.unsubscribe(session, subscriber, consent):
            message = f"unsubscribed {subscriber.email}"
        else:
            message = f"{subscriber.email} was already unsubscribed"
    click.echo(message)


commands = [group]
