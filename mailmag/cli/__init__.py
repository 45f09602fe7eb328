"""The command line: `mailmag …`. Commands parse, call one domain function, and print."""

from __future__ import annotations

import importlib

import click
from sqlalchemy.exc import OperationalError

from mailmag.cli import fixes
from mailmag.cli.common import AppContext
from mailmag.delivery.workstate import reason
from mailmag.errors import MailmagError

# One module per command group; each exposes `commands`, a list of click commands.
COMMAND_MODULES = ("worker", "setup", "subscribers", "orgs", "items", "bounces", "issues", "schedule", "web",
                   "admins",
                   "demo", "doctor")


class MailmagGroup(click.Group):
    """Turns MailmagError, and a database that is locked or away, into click's one-line
    'Error: …' and exit 1 (traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (MailmagError, OperationalError) as exc:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            if isinstance(exc, OperationalError):  # the unit of work in hand was rolled back
                raise click.ClickException(
                    f"the database is locked or unavailable ({reason(exc)}); the command was stopped: run it "
                    "again when the database is free ([database] busy_timeout_seconds is how long it waits)"
                ) from exc
            raise click.ClickException(fixes.said(exc)) from exc


@click.group(cls=MailmagGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Configuration file (default: $MAILMAG_CONFIG, else ./mailmag.toml).")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="mailmag")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """mailmag: compose and send the council's mail magazine (メールマガジン)."""
    ctx.obj = AppContext(config_path=config_path, debug=debug)
    ctx.call_on_close(ctx.obj.close)


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(f"mailmag.cli.{_name}").commands:
        cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mailmag")
