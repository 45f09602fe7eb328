"""`mailmag admins …`: the web console's accounts, made and changed only at the terminal."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import click
from sqlalchemy.orm import Session

from mailmag.access import accounts, audit
from mailmag.cli.common import AppContext, local_time, pass_app, print_json
from mailmag.models import ADMIN_ROLES
from mailmag.scheduling.when import parse_when

# parse_when refuses moments before `now`; --since is about the past, so "now" is the epoch.
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@click.group(name="admins")
def group() -> None:
    """Accounts of the web console (/admin/): add, list, change roles, remove, reset passwords, audit log."""


def _password(from_stdin: bool) -> str:
    """From one line of standard input (scripts), else asked twice without echo; never logged."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _record(session: Session, action: str, detail: str) -> None:
    audit.record(session, audit.CLI_ACTOR, action, detail)


@group.command()
@click.argument("name")
@click.option("--email", required=True, help="The person's address (test sends go there).")
@click.option("--role", type=click.Choice(ADMIN_ROLES), required=True,
              help="editor: review and compose; sender: also test, schedule, send; owner: also manage.")
@click.option("--totp", "with_totp", is_flag=True, help="Set up a one-time code (TOTP) at once.")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of standard input.")
@pass_app
def add(app: AppContext, name: str, email: str, role: str, with_totp: bool, password_stdin: bool) -> None:
    """Make a console account (the password is asked for, or read with --password-stdin)."""
    password = accounts.check_password(_password(password_stdin))
    with app.ready_services().session() as session:
        admin = accounts.add(session, name, email, role, password)
        uri = ""
        if with_totp:
            accounts.set_totp(session, name)
            uri = accounts.totp_uri(admin, app.config.sender.list_id)
        _record(session, "admin.add", f"{name} ({role}){' with TOTP' if with_totp else ''}")
    click.echo(f"account {name} ({role}) added; log in at {app.config.mailmag.base_url.rstrip('/')}/admin/")
    if uri:
        click.echo(f"one-time code: add this to an authenticator app: {uri}")


@group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List the console accounts."""
    with app.ready_services().read_session() as session:
        rows = [{"name": a.name, "email": a.email, "role": a.role, "totp": bool(a.totp_secret),
                 "created_at": a.created_at} for a in accounts.listing(session)]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']}\t{row['role']}\t{row['email']}\t{'TOTP' if row['totp'] else '-'}")
    click.echo(f"{len(rows)} accounts", err=True)


@group.command()
@click.argument("name")
@pass_app
def remove(app: AppContext, name: str) -> None:
    """Delete an account; its sessions end at once (the audit log keeps its name)."""
    with app.ready_services().session() as session:
        accounts.remove(session, name)
        _record(session, "admin.remove", name)
    click.echo(f"account {name} removed")


@group.command()
@click.argument("name")
@click.argument("role", type=click.Choice(ADMIN_ROLES))
@pass_app
def role(app: AppContext, name: str, role: str) -> None:
    """Change an account's role; it holds from the account's next page (no one is logged out)."""
    with app.ready_services().session() as session:
        old = accounts.set_role(session, name, role)
        if old != role:  # the audit log records changes, not commands that changed nothing
            _record(session, "admin.role", f"{name}: {old} → {role}")
        locked_out = name in accounts.without_needed_code(session, app.config.admin.require_totp)
    click.echo(f"{name} is now {role} (was {old})" if old != role else f"{name} is {role} already")
    if locked_out:
        click.echo(f"warning: [admin] require_totp asks owners and senders for a one-time code, and {name} "
                   f"has none: it cannot log in until `mailmag admins totp {name}`", err=True)


@group.command(name="reset-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of standard input.")
@pass_app
def reset_password(app: AppContext, name: str, password_stdin: bool) -> None:
    """Give an account a new password; every browser logged in as it is logged out."""
    password = accounts.check_password(_password(password_stdin))
    with app.ready_services().session() as session:
        ended = accounts.reset_password(session, name, password)
        _record(session, "admin.reset-password", name)
    click.echo(f"password of {name} changed; {ended} sessions ended")


@group.command()
@click.argument("name")
@click.option("--off", is_flag=True, help="Remove the one-time code instead.")
@pass_app
def totp(app: AppContext, name: str, off: bool) -> None:
    """Set up (or replace) the account's one-time code and print the link for an authenticator app;
    every browser logged in as it is logged out."""
    with app.ready_services().session() as session:
        if off:
            accounts.clear_totp(session, name)
        else:
            accounts.set_totp(session, name)
            uri = accounts.totp_uri(accounts.get(session, name), app.config.sender.list_id)
        _record(session, "admin.totp-off" if off else "admin.totp", name)
    click.echo(f"one-time code of {name} removed; its sessions ended" if off
               else f"one-time code of {name}: add this to an authenticator app: {uri}\n"
                    f"its sessions ended: {name} logs in again with the new code")


@group.command(name="audit")
@click.option("--since", default=None, metavar='"YYYY-MM-DD HH:MM"', help="Only entries from this time on.")
@click.option("--limit", type=int, default=None, help="At most this many entries (newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def audit_(app: AppContext, since: str | None, limit: int | None, as_json: bool) -> None:
    """Export the audit log: who did what in the console (or to accounts), when, from where."""
    start = parse_when(since, app.config.zone, _EPOCH) if since else None
    with app.ready_services().read_session() as session:
        rows: list[dict[str, Any]] = [
            {"at": e.at, "actor": e.actor, "action": e.action, "detail": e.detail, "ip": e.ip}
            for e in audit.listing(session, since=start, limit=limit)]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        click.echo(f"{local_time(row['at'], app.config)}\t{row['actor']}\t{row['ip'] or '-'}\t"
                   f"{row['action']}\t{row['detail']}")
    click.echo(f"{len(rows)} entries", err=True)


commands = [group]
