"""`mailmag doctor`: check the installation without sending; one line per finding, DNS records to publish."""

from __future__ import annotations

import dataclasses

import click

from mailmag import doctor as doctor_mod
from mailmag.cli.common import AppContext, pass_app, print_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def doctor(app: AppContext, as_json: bool) -> None:
    """Check configuration, database, secret key, templates, SMTP relay and DKIM; print DNS records.

    Nothing is sent. Exit status 1 when any problem is found; warnings do not count.
    """
    report = doctor_mod.diagnose(app.config_path)
    if as_json:
        print_json({
            "ok": not report.problems,
            "findings": [dataclasses.asdict(f) for f in report.findings],
            "dns": [dataclasses.asdict(r) for r in report.dns],
        })
    else:
        _print(report)
    if report.problems:
        raise click.exceptions.Exit(1)


def _print(report: doctor_mod.Report) -> None:
    for finding in report.findings:
        click.echo(f"{finding.status:<8} {finding.check}: {finding.message}")
    if report.dns:
        click.echo("\nDNS records to publish (zone-file format; check them with your DNS provider):")
        for record in report.dns:
            click.echo(f"  {record.name} IN {record.type} {record.value}\n      ; {record.note}")
    count = len(report.problems)
    click.echo(f"\n{count} problem{'s' if count != 1 else ''}" if count else "\nno problems", err=True)


commands = [doctor]
