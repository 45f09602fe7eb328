"""`mailmag issues …`: compose, render again, preview and list issues."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailmag import schedule
from mailmag.audience import subscribers
from mailmag.cli.common import AppContext, local_time, pass_app, print_json
from mailmag.content import issues
from mailmag.delivery import dispatch, outbox
from mailmag.delivery.transports import make_transport
from mailmag.models import Issue, utcnow


@click.group(name="issues")
def group() -> None:
    """Compose, preview and send issues of the mail magazine."""


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def as_dict(issue: Issue) -> dict:
    return {
        "number": issue.number, "title": issue.title, "status": issue.status,
        "items": [entry.item_id for entry in issue.entries],
        "langs": sorted(r.lang for r in issue.renderings),
        "created_at": issue.created_at, "rendered_at": issue.rendered_at,
        "scheduled_at": issue.scheduled_at, "sent_at": issue.sent_at,
    }


@group.command()
@click.option("--title", default=None, help="Title of the issue (default: [compose] title_template).")
@click.option("--item", "item_ids", type=int, multiple=True,
              help="An item to include; repeatable (default: every approved item not yet in an issue).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def new(app: AppContext, title: str | None, item_ids: tuple[int, ...], as_json: bool) -> None:
    """Compose a draft issue from approved items and render it once (HTML and text)."""
    with app.ready_services().session() as session:
        composed = issues.compose(session, app.config, title=title, item_ids=item_ids)
        document = as_dict(composed.issue)
    _print_warnings(composed.warnings)
    if as_json:
        print_json({key: document[key] for key in ("number", "title", "items", "status", "langs")})
        return
    click.echo(f"composed issue {document['number']} 「{document['title']}」 with "
               f"{len(document['items'])} items; check it with: mailmag issues preview {document['number']}")


@group.command(name="render")
@click.argument("number", type=int)
@pass_app
def render_(app: AppContext, number: int) -> None:
    """Render a draft or scheduled issue again from its items' current text."""
    with app.ready_services().session() as session:
        composed = issues.rerender(session, app.config, number)
        langs = ", ".join(sorted(r.lang for r in composed.issue.renderings))
    _print_warnings(composed.warnings)
    click.echo(f"rendered issue {number} again ({langs})")


@group.command()
@click.argument("number", type=int)
@click.option("--format", "fmt", type=click.Choice(issues.FORMATS), default=None,
              help="html or text (default: html for an -o FILE ending in .html, else text).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: standard output).")
@click.option("--lang", type=click.Choice(["ja", "en"]), default=None, help="Edition to show.")
@pass_app
def preview(app: AppContext, number: int, fmt: str | None, output: Path | None, lang: str | None) -> None:
    """Show an issue as subscribers get it, with a sample recipient's links filled in."""
    if fmt is None:
        fmt = "html" if output is not None and output.suffix.lower() in (".html", ".htm") else "text"
    with app.ready_services().session() as session:
        shown = issues.preview(session, app.config, number, fmt, lang)
    if output is None:
        click.echo(shown, nl=not shown.endswith("\n"))
        return
    output.write_text(shown, encoding="utf-8")
    click.echo(f"wrote issue {number} ({fmt}) to {output}", err=True)


@group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List issues, newest first."""
    with app.ready_services().session() as session:
        rows = [as_dict(issue) for issue in issues.listing(session)]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['number']}\t{row['status']}\t{len(row['items'])} items\t"
                   f"{local_time(row['rendered_at'], app.config)}\t{row['title']}")
    click.echo(f"{len(rows)} issues", err=True)


@group.command()
@click.argument("number", type=int)
@click.option("--at", "at", default=None, metavar='"YYYY-MM-DD HH:MM"',
              help="Send later, at this time in [mailmag] timezone (ISO 8601; an offset is optional).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def send(app: AppContext, number: int, at: str | None, yes: bool) -> None:
    """Send an issue to its subscribers now, or schedule it with --at."""
    services = app.ready_services()
    with services.session() as session:
        issue = issues.get(session, number)
        if at is not None:
            when = schedule.parse_when(at, app.config.zone, utcnow())
            schedule.schedule_send(session, issue, when)
            click.echo(f"issue {number} scheduled for {local_time(when, app.config)}; "
                       "`mailmag run` sends it then")
            return
        audience = outbox.audience_count(session, issue)
        question = f"Send issue {number} 「{issue.title}」 to {audience} subscribers now?"
    _confirm(yes, question)  # outside any transaction: SQLite would hold its write lock meanwhile
    with services.session() as session:
        queued = outbox.send_issue(session, issues.get(session, number), app.config)
    click.echo(f"issue {number}: {queued} messages queued; `mailmag worker` (or `mailmag run`) delivers them")


def _confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError("add --yes to send without a confirmation question")
    click.confirm(question, abort=True)


@group.command(name="test")
@click.argument("number", type=int)
@click.option("--to", "addresses", multiple=True, required=True, help="A test recipient; repeatable.")
@click.option("--lang", type=click.Choice(["ja", "en"]), default=None, help="Edition to send.")
@pass_app
def test_(app: AppContext, number: int, addresses: tuple[str, ...], lang: str | None) -> None:
    """Send the real message of an issue now to test addresses (not through the outbox)."""
    services = app.ready_services()
    valid = [subscribers.parse_address(a).email for a in addresses]
    with services.session() as session:
        issue = issues.get(session, number)
        issue.renderings  # noqa: B018 - loaded now: no transaction stays open during SMTP
    results = dispatch.send_test(services, make_transport(app.config), issue, valid, lang)
    for address, outcome in results:
        click.echo(f"{address}: {outcome}")
    if any(outcome.startswith("not sent") for _, outcome in results):
        raise click.exceptions.Exit(1)


@group.command()
@click.argument("number", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def status(app: AppContext, number: int, as_json: bool) -> None:
    """Show how far the sending of an issue has come (counted from delivery states)."""
    with app.ready_services().session() as session:
        issue = issues.get(session, number)
        counts = outbox.counts(session, issue.id)
        missed = schedule.last_send_run(session, issue)
        document = {
            "number": number, "status": issue.status, "total": counts.total, "sent": counts.sent,
            "failed": counts.failed, "pending": counts.pending, "queued": counts.queued,
            "sending": counts.sending, "dead": counts.dead, "cancelled": counts.cancelled,
            "scheduled_at": issue.scheduled_at, "sent_at": issue.sent_at,
            "last_timed_send": (
                None if missed is None else {"outcome": missed.outcome, "detail": missed.detail}
            ),
            "relay_waiting_since": issue.relay_waiting_since, "relay_error": issue.relay_error,
        }
    if as_json:
        print_json(document)
        return
    when = f", scheduled for {local_time(issue.scheduled_at, app.config)}" if issue.scheduled_at else ""
    click.echo(f"issue {number}: {issue.status}{when}")
    click.echo(f"total {counts.total}, sent {counts.sent}, failed {counts.failed}, pending {counts.pending}"
               f", dead {counts.dead}, cancelled {counts.cancelled}")
    if missed is not None and missed.outcome != "sent":
        click.echo(f"last timed send: {missed.outcome}: {missed.detail}")
    if issue.relay_waiting_since is not None and issue.status == "sending":
        click.echo(f"waiting for the relay since {local_time(issue.relay_waiting_since, app.config)}: "
                   f"{issue.relay_error}")


@group.command()
@click.argument("number", type=int)
@pass_app
def cancel(app: AppContext, number: int) -> None:
    """Unschedule a scheduled issue, or stop the messages of a send still queued."""
    with app.ready_services().session() as session:
        stopped = schedule.cancel(session, issues.get(session, number))
    if stopped is None:
        click.echo(f"issue {number} unscheduled; it is a draft again")
    else:
        click.echo(f"issue {number} cancelled; {stopped} queued messages will not be sent")


@group.command()
@click.argument("number", type=int)
@click.option("--dead", is_flag=True, required=True,
              help="Queue again the messages that went dead (their worker died while sending them).")
@pass_app
def retry(app: AppContext, number: int, dead: bool) -> None:
    """Queue dead messages of an issue again; the worker sends them."""
    with app.ready_services().session() as session:
        requeued = outbox.retry_dead(session, issues.get(session, number), utcnow())
    click.echo(f"issue {number}: {requeued} dead messages queued again; `mailmag worker` sends them")


commands = [group]
