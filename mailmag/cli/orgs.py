"""`mailmag orgs …`: member organizations and their private submission links."""

from __future__ import annotations

import click

from mailmag.cli.common import AppContext, echo_rows, pass_app, plural, print_json
from mailmag.content import orgs


@click.group(name="orgs")
def group() -> None:
    """Manage the member organizations that submit items."""


@group.command()
@click.argument("code")
@click.argument("name")
@click.option("--short-name", default="", help="Short name shown in listings (略称), e.g. 広大.")
@click.option("--contact", default="", help="Contact e-mail address of the org.")
@pass_app
def add(app: AppContext, code: str, name: str, short_name: str, contact: str) -> None:
    """Register an org: CODE (e.g. hiroshima-u) and its Japanese NAME."""
    with app.ready_services().session() as session:
        org = orgs.add(session, code, name, short_name=short_name, contact=contact)
        click.echo(f"added org {org.code} ({org.name})")


@group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List the member organizations."""
    with app.ready_services().read_session() as session:
        rows = orgs.listing(session)
        counts = orgs.item_counts(session)
        if as_json:
            print_json([
                {"code": o.code, "name": o.name, "short_name": o.short_name, "contact": o.contact,
                 "items": counts.get(o.id, 0), "created_at": o.created_at}
                for o in rows
            ])
            return
        echo_rows([[o.code, o.name, o.short_name, o.contact, plural(counts.get(o.id, 0), "item")]
                   for o in rows], "org")


@group.command()
@click.argument("code")
@click.option("--rotate", is_flag=True, help="Make a new link; the old one stops working at once.")
@pass_app
def token(app: AppContext, code: str, rotate: bool) -> None:
    """Print the org's private submission link (keep it between you and the org)."""
    services = app.ready_services()
    secret = services.secret_key
    with services.session() as session:
        org = orgs.get(session, code)
        if rotate:
            orgs.rotate_token(session, org)
        link = orgs.submission_link(app.config.mailmag.base_url, secret, org)
    if rotate:
        click.echo(f"rotated: the previous link of {org.code} no longer works", err=True)
    click.echo(link)


commands = [group]
