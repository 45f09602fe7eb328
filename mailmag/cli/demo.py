"""`mailmag demo`: the fresh-machine tour (a sample council, issue 1 sent into .eml files)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from mailmag import demo as demo_mod
from mailmag.cli.common import AppContext, pass_app, plural


@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=demo_mod.DEFAULT_DIR, show_default=True,
              help="Folder for the demo's configuration, database, outbox and previews (fresh each run).")
@pass_app
def demo(app: AppContext, directory: Path) -> None:
    """Build a sample council and send its issue 1 through the file transport (offline, seconds)."""
    if app.config_path:
        raise click.UsageError("the demo writes its own configuration into --dir; leave out --config")
    result = demo_mod.run(directory)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"sample council in {_shown(result.directory)}/: {result.orgs} member organizations, "
        f"{plural(result.items, 'item')} approved, {plural(result.subscribers, 'subscriber')}"
    )
    click.echo(f"issue {result.issue_number} 「{result.issue_title}」 composed and sent through the "
               f"file transport: {result.sent} sent, {result.failed} failed")
    click.echo(f"  subject:          {result.subject}")
    click.echo(f"  preview (HTML):   {_shown(result.preview_html)}   open it in a browser")
    click.echo(f"  preview (text):   {_shown(result.preview_text)}")
    click.echo(f"  messages (.eml):  {_shown(result.outbox)}/ ({len(result.messages)} files; "
               "open one in a mail program)")
    click.echo(f"  subscribers CSV:  {_shown(result.subscribers_csv)}   the file that was imported")
    click.echo("\nTry next:")
    prog = _prog()
    for args, what in demo_mod.next_steps(result):
        click.echo(f"  {prog} {shlex.join(args)}\n      {what}")


def _shown(path: Path) -> str:
    """A path relative to the current folder when it is inside it, else absolute."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _prog() -> str:
    """How to call mailmag again: as invoked (.venv/bin/mailmag) when that is a path to it."""
    invoked = sys.argv[0] if sys.argv else ""
    if os.path.basename(invoked) == "mailmag" and os.sep in invoked:
        return shlex.quote(invoked)
    return "mailmag"


commands = [demo]
