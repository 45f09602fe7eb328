"""`mailmag init`: create or upgrade the database."""

from __future__ import annotations

import click

from mailmag import db
from mailmag.cli.common import AppContext, pass_app


@click.command()
@pass_app
def init(app: AppContext) -> None:
    """Create or upgrade the database (safe to run again)."""
    outcome = db.init_db(app.services.engine)
    click.echo(f"database {outcome}: {app.services.engine.url.render_as_string(hide_password=True)}")


commands = [init]
