"""`mailmag issues …`: compose, render again, preview, test, send, cancel, delete and list issues.

Every command takes the issue's ID (what `issues new` prints and `issues list` shows first).
The public number, 第N号, is given when the issue's sending starts, so the archive counts
what was sent, without gaps; a draft has none yet.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import click

from mailmag import topics
from mailmag.audience import subscribers
from mailmag.cli import fixes
from mailmag.cli.common import AppContext, echo_rows, local_time, pass_app, plural, print_json, window_note
from mailmag.config import Config
from mailmag.content import issues, transitions
from mailmag.delivery import dispatch, messages, outbox
from mailmag.delivery.transports import make_transport
from mailmag.delivery.window import waiting_for_window, waiting_note
from mailmag.errors import Sentence
from mailmag.models import Issue, utcnow
from mailmag.scheduling import jobs
from mailmag.scheduling.when import parse_when

_ID: dict[str, Any] = {"metavar": "ID", "type": int}
HELD_SHOWN = 10  # held address refusals and failures `issues status` lists one by one
FAILURES_LISTED = 200  # failures its --json lists, as the console's issue page does


@click.group(name="issues")
def group() -> None:
    """Compose, preview and send issues of the mail magazine (each addressed by its ID)."""


def _print_warnings(warnings: list[Sentence]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def as_dict(issue: Issue) -> dict:
    return {
        "id": issue.id, "number": issue.number, "title": issue.title, "status": issue.status,
        "topic": issue.topic, "items": [entry.item_id for entry in issue.entries],
        "langs": sorted(r.lang for r in issue.renderings),
        "created_at": issue.created_at, "rendered_at": issue.rendered_at,
        "scheduled_at": issue.scheduled_at, "sent_at": issue.sent_at,
    }


@group.command()
@click.option("--title", default=None, help="Title of the issue (default: [compose] title_template).")
@click.option("--item", "item_ids", type=int, multiple=True,
              help="An item to include; repeatable (default: every approved item not yet in an issue). "
                   "A published item may be named again (an event announced once more).")
@click.option("--topic", default=None,
              help="Send only to subscribers of this topic ([web] topics) and those who chose none "
                   "(default: every subscriber).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def new(app: AppContext, title: str | None, item_ids: tuple[int, ...], topic: str | None,
        as_json: bool) -> None:
    """Compose a draft issue from approved items and render it once (HTML and text)."""
    with app.ready_services().session() as session:
        composed = issues.compose(session, app.config, title=title, item_ids=item_ids, topic=topic,
                                  rerun_published=True)
        document = as_dict(composed.issue)
        reached = issues.audience(session, composed.issue)
    _print_warnings(composed.warnings)
    if as_json:
        keys = ("id", "number", "title", "items", "status", "langs", "topic")
        print_json({**{key: document[key] for key in keys}, "audience": reached})
        return
    to = topics.describe(document["topic"], app.config.topics)
    click.echo(f"composed issue {document['id']} 「{document['title']}」 with "
               f"{plural(len(document['items']), 'item')} for {to} ({plural(reached, 'subscriber')} now); "
               f"check it with: mailmag issues preview {document['id']}")


@group.command(name="render")
@click.argument("issue_id", **_ID)
@pass_app
def render_(app: AppContext, issue_id: int) -> None:
    """Render a draft or scheduled issue again from its items' current text."""
    with app.ready_services().session() as session:
        composed = issues.rerender(session, app.config, issue_id)
        langs = ", ".join(sorted(r.lang for r in composed.issue.renderings))
    _print_warnings(composed.warnings)
    click.echo(f"rendered issue {issue_id} again ({langs})")


@group.command()
@click.argument("issue_id", **_ID)
@click.option("--format", "fmt", type=click.Choice(issues.FORMATS), default=None,
              help="html or text (default: html for an -o FILE ending in .html, else text).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: standard output).")
@click.option("--lang", type=click.Choice(["ja", "en"]), default=None, help="Edition to show.")
@pass_app
def preview(app: AppContext, issue_id: int, fmt: str | None, output: Path | None, lang: str | None) -> None:
    """Show an issue as subscribers get it, with a sample recipient's links filled in."""
    if fmt is None:
        fmt = "html" if output is not None and output.suffix.lower() in (".html", ".htm") else "text"
    with app.ready_services().read_session() as session:
        shown = issues.preview(session, app.config, issue_id, fmt, lang)
        issue = issues.get(session, issue_id)
        note = _audience_note(issue, issues.audience(session, issue), app)
        stale = issues.stale_warning(issue)
        number = issues.number_warning(session, issue)
    if stale:
        click.echo(fixes.said(stale), err=True)
    _print_warnings([number] if number else [])
    if output is None:
        click.echo(shown, nl=not shown.endswith("\n"))
    else:
        output.write_text(shown, encoding="utf-8")
        click.echo(f"wrote issue {issue_id} ({fmt}) to {output}", err=True)
    click.echo(note, err=True)


def _audience_note(issue: Issue, reached: int, app: AppContext) -> str:
    to = topics.describe(issue.topic, app.config.topics)
    if issue.status in issues.RENDERABLE:
        return (f"issue {issue.id} goes to {to}: {plural(reached, 'subscriber')} now; its number "
                f"(shown as 第{issue.rendered_number}号) is given when it is sent")
    return f"{issues.label(issue)} is {issue.status}, for {to}"


@group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List issues, newest first: ID, 第N号, status (with its dead messages, if any), when (sent,
    scheduled or rendered), items, topic, title, and why its mail waits, when it waits for the
    send window."""
    now = utcnow()
    with app.ready_services().read_session() as session:
        pending, dead = outbox.pending_by_issue(session), outbox.dead_by_issue(session)
        rows = [as_dict(issue) | {"waiting_for_window": waiting_for_window(
            pending.get(issue.id, 0), now, app.config), "dead": dead.get(issue.id, 0),
            "overdue": jobs.overdue_send(issue, now, app.config) is not None}
            for issue in issues.listing(session)]
    if as_json:
        print_json(rows)
        return
    # "sent" alone would hide messages nobody received, which `issues retry N --dead` sends
    echo_rows([[row["id"], f"第{row['number']}号" if row["number"] else "",
                row["status"] + (f", {row['dead']} dead" if row["dead"] else "")
                + (", OVERDUE (is `mailmag run` running?)" if row["overdue"] else ""),
                _when_column(row, app.config),
                plural(len(row["items"]), "item"), row["topic"] or "all", row["title"],
                *_waiting_column(row["waiting_for_window"], app)]
               for row in rows], "issue")


def _when_column(row: dict, config: Config) -> str:
    """When it was sent or is to be sent; a draft's time is when it was rendered, and says so
    (helper-90: read as a time it was scheduled for)."""
    if row["sent_at"] or row["scheduled_at"]:
        return local_time(row["sent_at"] or row["scheduled_at"], config)
    return f"rendered {local_time(row['rendered_at'], config)}"


def _waiting_column(waiting: dt.datetime | None, app: AppContext) -> list[str]:
    return [waiting_note(waiting, app.config)] if waiting else []


@group.command()
@click.argument("issue_id", **_ID)
@click.option("--at", "at", default=None, metavar='"YYYY-MM-DD HH:MM"',
              help="Send later, at this time in [mailmag] timezone: 2030-12-02 09:00, "
                   "2030年12月2日 9:00, R12.12.2 9:00, 12/2 9:00, 明日 午後3時 (a UTC offset is optional).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--allow-empty", is_flag=True,
              help="Send even when no active subscriber matches (the issue still goes to the archive).")
@pass_app
def send(app: AppContext, issue_id: int, at: str | None, yes: bool, allow_empty: bool) -> None:
    """Send an issue to its subscribers now, or schedule it with --at."""
    services = app.ready_services()
    note = messages.one_click_note(app.config)
    if note:
        click.echo(f"note: {note}", err=True)
    with services.session() as session:
        issue = issues.get(session, issue_id)
        if at is not None:
            when = parse_when(at, app.config.zone, utcnow())
            reached = jobs.schedule_send(session, issue, when, config=app.config, allow_empty=allow_empty)
            click.echo(f"issue {issue_id} scheduled for {local_time(when, app.config)} "
                       f"({plural(reached, 'subscriber')} now); `mailmag run` sends it then")
            return
        reached = issues.check_sendable(session, app.config, issue, allow_empty=allow_empty)
        to = topics.describe(issue.topic, app.config.topics)
        question = f"Send issue {issue_id} 「{issue.title}」 to {plural(reached, 'subscriber')} ({to}) now?"
    _confirm(yes, question)  # outside any transaction: SQLite would hold its write lock meanwhile
    with services.session() as session:
        issue = issues.get(session, issue_id)
        queued = issues.start_sending(session, app.config, issue, allow_empty=allow_empty)
        number = issue.number
    click.echo(f"issue {issue_id} is 第{number}号: {plural(queued, 'message')} queued; "
               "`mailmag worker` (or `mailmag run`) delivers them")
    closed = window_note(queued, app.config)
    if closed:
        click.echo(closed, err=True)


def _interactive() -> bool:
    """A person at a terminal can answer the question; cron and scripts pass --yes."""
    return sys.stdin.isatty()


def _confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not _interactive():
        raise click.UsageError("add --yes to send without a confirmation question")
    click.confirm(question, abort=True)


@group.command(name="test")
@click.argument("issue_id", **_ID)
@click.option("--to", "addresses", multiple=True, required=True, help="A test recipient; repeatable.")
@click.option("--lang", type=click.Choice(["ja", "en"]), default=None, help="Edition to send.")
@pass_app
def test_(app: AppContext, issue_id: int, addresses: tuple[str, ...], lang: str | None) -> None:
    """Send the real message of an issue now to test addresses (not through the outbox)."""
    services = app.ready_services()
    valid = [subscribers.parse_address(a).email for a in addresses]
    with services.session() as session:
        issue = issues.test_ready(session, app.config, issue_id)
        stale = issues.stale_warning(issue)
        number = issues.number_warning(session, issue)
    if stale:
        click.echo(fixes.said(stale), err=True)
    _print_warnings([number] if number else [])
    results = dispatch.send_test(services, make_transport(app.config), issue, valid, lang)
    for result in results:
        click.echo(str(result))
    if not all(result.sent for result in results):
        raise click.exceptions.Exit(1)


@group.command()
@click.argument("issue_id", **_ID)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def status(app: AppContext, issue_id: int, as_json: bool) -> None:
    """Show an issue's audience and how far its sending has come (counted from delivery states)."""
    now = utcnow()
    with app.ready_services().read_session() as session:
        issue = issues.get(session, issue_id)
        counts = outbox.counts(session, issue.id)
        ambiguous = outbox.ambiguous_count(session, issue.id)
        maybe_sent = outbox.cancelled_maybe_sent(session, issue.id) if counts.cancelled else 0
        kept = outbox.failed_readers_kept(session, issue.id) if counts.failed else 0
        failed = outbox.failures(session, issue.id, FAILURES_LISTED) if counts.failed + counts.dead else []
        held = outbox.held_refusals(session, issue.id, limit=HELD_SHOWN)
        held_count = outbox.held_refusal_count(session, issue.id) if len(held) == HELD_SHOWN else len(held)
        missed = jobs.last_send_run(session, issue)
        late = jobs.overdue_send(issue, now, app.config)
        waiting = waiting_for_window(counts.pending, now, app.config)
        reached = issues.audience(session, issue) if issue.status in issues.RENDERABLE else counts.total
        # readers added to a frozen audience since (they took back an unsubscribe)
        caught_up = 0 if issue.status in issues.RENDERABLE else outbox.caught_up_count(session, issue.id)
        document = {
            "id": issue.id, "number": issue.number, "status": issue.status, "topic": issue.topic,
            "audience": reached, "added_since": caught_up, "total": counts.total, "sent": counts.sent,
            "failed": counts.failed, "pending": counts.pending, "queued": counts.queued,
            "sending": counts.sending, "dead": counts.dead, "cancelled": counts.cancelled,
            "cancelled_maybe_sent": maybe_sent, "ambiguous": ambiguous, "held_refusals": held_count,
            "failed_reader_kept": kept,
            "failures": [{"email": email, "status": state, "reply": reply} for email, state, reply in failed],
            "scheduled_at": issue.scheduled_at, "sent_at": issue.sent_at, "waiting_for_window": waiting,
            "last_timed_send": (
                None if missed is None else {"outcome": missed.outcome, "detail": missed.detail}
            ),
            "relay_waiting_since": issue.relay_waiting_since, "relay_error": issue.relay_error,
            "overdue": None if late is None else {"due_at": late.due_at, "last_chance": late.last_chance},
        }
    if as_json:
        print_json(document)
        return
    when = f", scheduled for {local_time(issue.scheduled_at, app.config)}" if issue.scheduled_at else ""
    click.echo(f"{issues.label(issue)}: {issue.status}{when}")
    if late is not None:
        send_now = f"; `mailmag issues send {issue.id}` sends it now" if late.too_late(now) else ""
        click.echo(f"overdue: {late.describe(now, app.config)}{send_now}")
    to = topics.describe(issue.topic, app.config.topics)
    if issue.status in issues.RENDERABLE:
        click.echo(f"audience: {plural(reached, 'subscriber')} now ({to})")
    else:
        since = f", {caught_up} of them added since (they took back an unsubscribe)" if caught_up else ""
        click.echo(f"audience: {plural(reached, 'subscriber')} ({to}), frozen when sending started{since}")
    click.echo(f"total {counts.total}, sent {counts.sent}, failed {counts.failed}, pending {counts.pending}"
               f", dead {counts.dead}, cancelled {counts.cancelled}")
    if failed:
        _say_failed(failed, counts.failed + counts.dead, issue.id)
    if counts.dead and issue.status in ("sending", "sent"):
        times = app.config.dispatch.max_lease_expiries
        click.echo(f"dead: {plural(counts.dead, 'message')} given up on (a worker died sending each "
                   f"{plural(times, 'time')}, [dispatch] max_lease_expiries: each may have arrived "
                   f"{_up_to(times)} already); `mailmag issues retry {issue.id} --dead` queues them again")
    if kept:
        click.echo(f"failed, reader kept: {kept} of the failed (still subscribed: a temporary failure or a "
                   "refusal not believed until [retry] lifetime_seconds, or the content refused; they "
                   "get the next issue)")
    if ambiguous:
        click.echo(f"may have arrived more than once: {ambiguous} (connection lost after the final dot, or "
                   "a worker died sending it; last_reply starts with 'ambiguous')")
    if maybe_sent:
        click.echo(f"cancelled, but may have arrived: {maybe_sent} (connection lost after the final dot, or "
                   "a worker died sending it, before the cancel: their readers may have this issue)")
    if held_count:
        _say_held(held, held_count, app.config)
    if waiting is not None:
        click.echo(waiting_note(waiting, app.config))
    if missed is not None and missed.outcome != "sent":
        click.echo(f"last timed send: {missed.outcome}: {missed.detail}")
    if issue.relay_waiting_since is not None and issue.status == "sending":
        click.echo(f"waiting for the relay since {local_time(issue.relay_waiting_since, app.config)}: "
                   f"{issue.relay_error}")


def _say_failed(failed: list[tuple[str, str, str]], count: int, issue_id: int) -> None:
    """Who did not get the issue, and the relay's last word on each (the console lists them too)."""
    for email, state, reply in failed[:HELD_SHOWN]:
        click.echo(f"  {email} ({state}): {reply}")
    if count > HELD_SHOWN:
        click.echo(f"  … and {count - HELD_SHOWN} more (`mailmag issues status {issue_id} --json` lists "
                   f"up to {FAILURES_LISTED})")


def _say_held(held: list[tuple[str, str, dt.datetime]], count: int, config: Config) -> None:
    """Address refusals not believed yet (dispatch._hold): pending, not failed, nobody bounced."""
    click.echo(f"refused, not believed yet: {plural(count, 'address', 'addresses')} (the relay has accepted "
               "no message begun after their refusal; each is asked again after one is; past [retry] "
               "lifetime_seconds the message fails and the reader stays on the list)")
    now = utcnow()
    for email, reply, at in held:
        when = "when a worker next runs" if at <= now else local_time(at, config)  # due: not "in the past"
        click.echo(f"  {email}: {reply}; next try {when}")
    if count > len(held):
        click.echo(f"  … and {count - len(held)} more")


@group.command()
@click.argument("issue_id", **_ID)
@pass_app
def cancel(app: AppContext, issue_id: int) -> None:
    """Unschedule a scheduled issue (a draft again), or stop the messages of a send still queued."""
    with app.ready_services().session() as session:
        done = issues.cancel(session, issue_id)
        number = done.issue.number
    if done.unscheduled:
        click.echo(f"issue {issue_id} unscheduled; it is a draft again")
    elif done.issue.number is not None:  # something went, may have, or is on its way
        # A held message already on its way to the relay still goes (one a connection at most):
        # how many did is known only once the workers have recorded them (helper-58).
        stopped = f"{plural(done.not_sent, 'queued message')} will not be sent"
        if done.maybe_sent:
            stopped += (f", though {done.maybe_sent} of them may have reached the relay already (the "
                        "connection was lost after the final dot, or a worker died sending it)")
        if done.in_flight:
            stopped = (f"up to {stopped} ({done.in_flight} of them held by a worker: a message already on "
                       "its way to the relay still goes, however long the relay takes; `issues status` "
                       "counts it)")
        went = (f"{plural(done.sent - done.dead, 'message')} went, {done.dead} given up on may have"
                if done.dead else f"{plural(done.sent, 'message')} went")
        if done.maybe_failed:
            went += f", {done.maybe_failed} failed after the relay may have taken it"
        earlier = (f", {done.opted_out} cancelled earlier (their readers unsubscribed)"
                   if done.opted_out else "")
        click.echo(f"issue {issue_id} (第{number}号) cancelled: {went}, {stopped}{earlier}; 第{number}号 "
                   "stays in the archive")
    else:
        click.echo(f"issue {issue_id} cancelled before any message went: {plural(done.not_sent, 'message')} "
                   f"not sent, no number used; {plural(done.items_returned, 'item')} approved again for the "
                   "next issue")


@group.command()
@click.argument("issue_id", **_ID)
@pass_app
def delete(app: AppContext, issue_id: int) -> None:
    """Delete a draft issue; its items stay approved, for the next issue."""
    with app.ready_services().session() as session:
        issue = issues.delete(session, issue_id)
        count = len(issue.entries)
    click.echo(f"deleted draft issue {issue_id}; its {plural(count, 'item')} wait for the next issue")


@group.command()
@click.argument("issue_id", **_ID)
@click.option("--dead", is_flag=True, required=True,
              help="Queue again the messages that went dead (their worker died while sending them).")
@pass_app
def retry(app: AppContext, issue_id: int, dead: bool) -> None:
    """Queue dead messages of an issue again; the worker sends them."""
    with app.ready_services().session() as session:
        requeued = transitions.retry_dead(session, issues.get(session, issue_id), utcnow())
    if not requeued:  # none dead (or queued by an earlier retry): no warning about copies
        click.echo(f"issue {issue_id}: no dead messages to queue again")
        return
    queued = plural(requeued, "dead message")
    times = app.config.dispatch.max_lease_expiries
    click.echo(f"issue {issue_id}: {queued} queued again; `mailmag worker` sends them "
               f"(each may have arrived {_up_to(times)} already: a worker died sending it)")


def _up_to(times: int) -> str:
    return "once" if times == 1 else f"up to {times} times"


commands = [group]
