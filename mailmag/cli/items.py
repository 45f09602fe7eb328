"""`mailmag items …`: submit, add from files, list, show, edit, approve and reject items."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from mailmag import text_ja
from mailmag.cli.common import AppContext, echo_rows, local_time, pass_app, print_json
from mailmag.content import dates, issues, items, markup
from mailmag.errors import InvalidInput
from mailmag.models import ITEM_STATUSES, Item

_FIELD_OPTIONS = [
    click.option("--title", default=None, help="Title (one line; it can become the mail subject)."),
    click.option("--body", default=None, help="Body in Markdown (meeting summary, news text …)."),
    click.option("--body-file", default=None, help="Read the body from a file ('-': standard input)."),
    click.option("--date", default=None, help="2026-12-01, 2026年12月1日, R8.12.1, 12/1, 11/22〜23."),
    click.option("--end-date", default=None, help="Last day of a multi-day event."),
    click.option("--time", "time_text", default=None, help="Time as it should print, e.g. 13:30〜17:00."),
    click.option("--venue", "--place", "venue", default=None, help="Venue or meeting place."),
    click.option("--url", default=None, help="Link for details or applications (http/https)."),
    click.option("--deadline", default=None, help="Application deadline (a date)."),
    click.option("--fee", default=None, help="Fee as it should print, e.g. 無料, 3,000円."),
    click.option("--event", "event_name", default=None, help="exhibitors: the event wanting them."),
    click.option("--how-to-apply", default=None, help="exhibitors: how to apply (Markdown)."),
]


def _field_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_FIELD_OPTIONS):
        command = option(command)
    return command


def _fields(body_file: str | None, **given: Any) -> dict[str, Any]:
    """The options given on the command line (None = not given), the body read from its file."""
    if body_file is not None:
        if given.get("body") is not None:
            raise InvalidInput("give --body or --body-file, not both")
        given["body"] = sys.stdin.read() if body_file == "-" else items.read_text(body_file)
    return {key: value for key, value in given.items() if value is not None}


def as_dict(item: Item) -> dict[str, Any]:
    return {
        "id": item.id, "org": item.org.code, "org_name": item.org.name, "kind": item.kind,
        "kind_label": items.KIND_LABELS[item.kind], "title": item.title, "status": item.status,
        "date": item.date, "end_date": item.end_date, "time": item.time_text, "venue": item.venue,
        "url": item.url, "deadline": item.deadline, "fee": item.fee, "event": item.event_name,
        "how_to_apply": item.how_to_apply, "body": item.body, "reject_reason": item.reject_reason,
        "channel": item.channel, "created_at": item.created_at, "updated_at": item.updated_at,
    }


def _row(item: Item) -> list[Any]:
    return [item.id, item.status, item.kind, item.org.code, item.date.isoformat() if item.date else "",
            item.title]


@click.group(name="items")
def group() -> None:
    """Items from member orgs: submission and review."""


@group.command()
@click.option("--org", "org_code", required=True, help="Code of the submitting org (see orgs list).")
@click.option("--kind", required=True, help="meeting | event | exhibitors | news")
@_field_options
@click.option("--json", "as_json", is_flag=True, help="Print the stored item as JSON.")
@pass_app
def submit(app: AppContext, org_code: str, kind: str, body_file: str | None, as_json: bool,
           **given: Any) -> None:
    """Submit one item on behalf of an org; it waits for review as 'submitted'."""
    fields = _fields(body_file, **given)
    today = dates.today_in(app.config.zone)
    with app.ready_services().session() as session:
        item = items.submit(session, org_code, kind, fields, channel="cli", today=today,
                            limit_kb=app.config.compose.item_size_limit_kb)
        if as_json:
            print_json(as_dict(item))
        else:
            click.echo(f"submitted item {item.id} ({item.kind}: {item.title})")


@group.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the stored items as JSON.")
@pass_app
def add(app: AppContext, files: tuple[str, ...], as_json: bool) -> None:
    """Submit items from Markdown FILES with TOML front matter (+++ … +++); one bad file stores none."""
    today = dates.today_in(app.config.zone)
    with app.ready_services().session() as session:
        done = items.add_files(session, list(files), today=today,
                               limit_kb=app.config.compose.item_size_limit_kb)
        if as_json:
            print_json([as_dict(item) for item in done.items])
            return
        for item in done.items:
            click.echo(f"submitted item {item.id} ({item.kind}: {item.title})")
        for path, item in done.already:
            click.echo(f"{path}: already stored as item {item.id} ({item.status}); nothing added "
                       f"(change it with mailmag items edit {item.id})")


@group.command(name="list")
@click.option("--status", default=None, help=f"Only items in this status: {', '.join(ITEM_STATUSES)}.")
@click.option("--org", "org_code", default=None, help="Only items of this org (code).")
@click.option("--kind", default=None, help="Only items of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def list_(app: AppContext, status: str | None, org_code: str | None, kind: str | None,
          as_json: bool) -> None:
    """List items, oldest first."""
    with app.ready_services().read_session() as session:
        rows = items.listing(session, status=status, org=org_code, kind=kind)
        if as_json:
            print_json([as_dict(item) for item in rows])
            return
        echo_rows([_row(item) for item in rows], "item")


@group.command()
@click.argument("item_id", metavar="ID", type=int)
@pass_app
def show(app: AppContext, item_id: int) -> None:
    """Show one item: its fields and the body as the issue will show it."""
    with app.ready_services().read_session() as session:
        item = items.get(session, item_id)
        click.echo(_describe(item, app))


def _describe(item: Item, app: AppContext) -> str:
    lines = [
        f"item {item.id}: {item.title}",
        f"status: {item.status}" + (f" ({item.reject_reason})" if item.status == "rejected" else ""),
        f"kind: {item.kind} ({items.KIND_LABELS[item.kind]})",
        f"org: {item.org.code} ({item.org.name})",
    ]
    shown_fields = set(items.allowed_fields(item.kind)) - {"title", "body", "how_to_apply"}
    for attr in [a for a in items.FIELD_NAMES if a in shown_fields]:
        value = getattr(item, attr)
        shown = text_ja.format_date_ja(value) if hasattr(value, "isoformat") else value
        lines.append(f"{items.FIELD_NAMES[attr]}: {shown or '-'}")
    lines.append(f"submitted: {local_time(item.created_at, app.config)} via {item.channel}")
    for attr in ("how_to_apply", "body"):
        if getattr(item, attr):
            lines += ["", f"--- {items.FIELD_NAMES[attr]} (preview) ---", markup.to_text(getattr(item, attr))]
    return "\n".join(lines)


@group.command()
@click.argument("item_id", metavar="ID", type=int)
@_field_options
@click.option("--json", "as_json", is_flag=True, help="Print the edited item as JSON.")
@pass_app
def edit(app: AppContext, item_id: int, body_file: str | None, as_json: bool, **given: Any) -> None:
    """Change an item's fields ('' clears one); an approved item goes back to submitted."""
    fields = _fields(body_file, **given)
    if not fields:
        raise InvalidInput("nothing to change: give at least one field option (see --help)")
    today = dates.today_in(app.config.zone)
    with app.ready_services().session() as session:
        item = items.update(session, items.get(session, item_id), fields, today=today,
                            limit_kb=app.config.compose.item_size_limit_kb)
        waiting = issues.waiting_in(session, item)
        if as_json:
            print_json(as_dict(item))
        else:
            click.echo(f"edited item {item.id}; status: {item.status}")
        if waiting is not None and waiting.status == "scheduled":  # (helper-101: said nothing)
            click.echo(f"warning: item {item.id} is in issue {waiting.id}, scheduled for "
                       f"{local_time(waiting.scheduled_at, app.config)}: approve it again and render the "
                       f"issue again before then (`mailmag items approve {item.id}`, then `mailmag issues "
                       f"render {waiting.id}`), or at that time the send is refused and the issue becomes "
                       "a draft again", err=True)


@group.command()
@click.argument("item_ids", metavar="ID...", nargs=-1, required=True, type=int)
@pass_app
def approve(app: AppContext, item_ids: tuple[int, ...]) -> None:
    """Approve items: the next issue picks them up."""
    with app.ready_services().session() as session:
        approved = items.approve(session, list(item_ids))
        click.echo(f"approved {', '.join(str(i.id) for i in approved)}")


@group.command()
@click.argument("item_id", metavar="ID", type=int)
@click.option("--reason", required=True, help="Why; the submitting org reads it.")
@pass_app
def reject(app: AppContext, item_id: int, reason: str) -> None:
    """Reject an item with a reason."""
    with app.ready_services().session() as session:
        item = items.reject(session, item_id, reason)
        click.echo(f"rejected item {item.id}: {item.reject_reason}")


commands = [group]
