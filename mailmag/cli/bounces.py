"""`mailmag bounces process PATH`: read a bounce mailbox and record what it reports."""

from __future__ import annotations

from pathlib import Path

import click

from mailmag.audience import bounces
from mailmag.cli.common import AppContext, pass_app, print_json


@click.group(name="bounces")
def group() -> None:
    """Bounces, complaints and mailto unsubscribe requests."""


@group.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("-v", "--verbose", is_flag=True, help="Also list every report recorded.")
@pass_app
def process(app: AppContext, path: Path, as_json: bool, verbose: bool) -> None:
    """Read a Maildir or an mbox of bounce reports; the mailbox is never changed.

    Hard bounces stop mail to the address at once, soft ones count ([bounces] in the
    configuration), complaints and mailto requests with their signed tag unsubscribe. A request
    written by hand (no tag) is answered with the subscriber's own unsubscribe link: its From
    may be forged. Processing the same mailbox again changes nothing.
    """
    services = app.ready_services()
    with services.session() as session:
        report = bounces.process_mailbox(session, path, services.config, services.verify_keys)
    bounces.send_unsubscribe_links(services, report)
    if as_json:
        print_json(report.as_dict())
        return
    click.echo(report.summary())
    if verbose:
        for e in report.events:
            code = f" {e.code}" if e.code else ""
            named = f"; the report names {', '.join(e.names_instead)}" if e.names_instead else ""
            click.echo(f"{e.key}: {e.kind}{code} {e.email} (matched by {e.matched_by}{named}): {e.action}")
    for key, reason in report.unmatched:
        click.echo(f"unmatched {key}: {reason}")
    for key, reason in report.unreadable:
        click.echo(f"unreadable {key}: {reason}")
    for key, reason in report.unanswered:
        click.echo(f"unanswered {key}: {reason}")


commands = [group]
