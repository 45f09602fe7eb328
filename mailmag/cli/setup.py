"""`mailmag init`: create or upgrade the database."""

from __future__ import annotations

import click

from mailmag import db
from mailmag.cli.common import AppContext, pass_app


@click.command()
@click.option("--copy-from", "source", metavar="URL",
              help="Then fill the new, empty database with every row of this one ([database] url form; "
                   "a move from SQLite to PostgreSQL): links in mail already sent keep working.")
@pass_app
def init(app: AppContext, source: str | None) -> None:
    """Create or upgrade the database (safe to run again)."""
    old = db.source_engine(source) if source else None  # a malformed URL stops before anything is made
    outcome = db.init_db(app.services.engine)
    click.echo(f"database {outcome}: {app.services.engine.url.render_as_string(hide_password=True)}")
    if old is not None:
        try:
            copied = db.copy_database(old, app.services.engine)
        finally:
            old.dispose()
        rows = sum(copied.values())
        click.echo(f"copied {rows} rows from {old.url.render_as_string(hide_password=True)}: "
                   f"{copied.get('subscribers', 0)} subscribers, {copied.get('issues', 0)} issues, "
                   f"{copied.get('deliveries', 0)} deliveries")


commands = [init]
