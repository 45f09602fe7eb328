"""`mailmag schedule add|list|remove` (automatic issues) and `mailmag run` (scheduler + worker)."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import sys
from typing import Any

import click

from mailmag import topics
from mailmag.cli.common import AppContext, echo_rows, local_time, pass_app, plural, print_json
from mailmag.config import Config
from mailmag.models import utcnow
from mailmag.scheduling import jobs
from mailmag.scheduling.node import Node
from mailmag.scheduling.signals import stop_on_signals
from mailmag.scheduling.when import cron_trigger, next_fire_time


@click.group()
def schedule() -> None:
    """Automatic issues: composed from the approved items and sent on a crontab schedule."""


@schedule.command("add")
@click.option("--cron", required=True,
              help='Crontab line in [mailmag] timezone: minute hour day month weekday, e.g. "0 9 1,15 * *".')
@click.option("--name", default=None, help="A label for `schedule list` (default: the crontab line).")
@click.option("--topic", default=None,
              help="The issues go to this topic's subscribers ([web] topics) and those who chose none "
                   "(default: every subscriber).")
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
@pass_app
def add(app: AppContext, cron: str, name: str | None, topic: str | None, as_json: bool) -> None:
    """Compose and send an issue at each moment of CRON (skipped when nothing is approved)."""
    services = app.ready_services()
    with services.session() as session:
        added = jobs.add_auto(session, cron, name, services.config, topic=topic)
        upcoming = _next(added.cron, services.config)
        info = _as_dict(jobs.AutoInfo(added.id, added.name, added.cron, upcoming, None, added.topic),
                        services.config)
    if as_json:
        print_json(info)
        return
    click.echo(f"automatic issue {info['id']} added: {info['cron']} for "
               f"{topics.describe(info['topic'], services.config.topics)} "
               f"(next: {local_time(upcoming, services.config)})")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """Automatic issues with their next moment and what their last one did."""
    services = app.ready_services()
    config = services.config
    now = utcnow()
    with services.read_session() as session:
        infos = jobs.list_auto(session, config, now)
    if as_json:
        print_json([_as_dict(info, config) for info in infos])
        return
    rows = []
    for info in infos:
        last = info.last_run
        done = "never run" if last is None else (
            f"{last.outcome} {local_time(last.scheduled_for, config)}: {last.detail}")
        rows.append([info.id, info.name, info.cron, info.topic or "all",
                     f"next {local_time(info.next_run, config)}", f"last {done}"])
    echo_rows(rows, "automatic issue")
    for info in infos:
        if info.overdue is not None:
            click.echo(f"overdue: automatic issue {info.id}: {info.overdue.describe(now, config)}", err=True)
        if info.troubles:
            latest = info.troubles[0]
            earlier = plural(len(info.troubles), "earlier moment")
            click.echo(f"automatic issue {info.id}: {earlier} of the last {jobs.TROUBLE_DAYS} days not sent; "
                       f"latest {latest.outcome} "
                       f"{local_time(latest.scheduled_for, config)}: {latest.detail}", err=True)
    if not infos:
        click.echo('add one with `mailmag schedule add --cron "0 9 1,15 * *"`', err=True)


@schedule.command("remove")
@click.argument("schedule_id", metavar="ID", type=int)
@pass_app
def remove(app: AppContext, schedule_id: int) -> None:
    """Stop an automatic issue (items and issues already made stay)."""
    services = app.ready_services()
    with services.session() as session:
        name = jobs.remove_auto(session, schedule_id)
    click.echo(f"automatic issue {schedule_id} removed ({name})")


def _next(cron: str, config: Config) -> dt.datetime | None:
    return next_fire_time(cron_trigger(cron, config.zone), utcnow())


def _as_dict(info: jobs.AutoInfo, config: Config) -> dict[str, Any]:
    """Times as every JSON document has them (ISO 8601 UTC with Z, see cli.common)."""
    last = info.last_run
    return {
        "id": info.id, "name": info.name, "cron": info.cron, "topic": info.topic, "next_run": info.next_run,
        "last_run": None if last is None else {
            "scheduled_for": last.scheduled_for, "outcome": last.outcome, "detail": last.detail,
            "at": last.at,
        },
        "overdue_since": None if info.overdue is None else info.overdue.due_at,
        "earlier_troubles": [
            {"scheduled_for": run.scheduled_for, "outcome": run.outcome, "detail": run.detail}
            for run in info.troubles],
    }


@click.command()
@click.option("--no-scheduler", is_flag=True, help="Only deliver; never run the scheduler on this node.")
@click.option("--no-worker", is_flag=True, help="Only run the scheduler; another process delivers.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None,
              help="SMTP connections (default: [smtp] max_connections).")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Sending processes, sharing the connections out and keeping one rate limit: more "
                   "than one uses more than one CPU core.")
@pass_app
def run(app: AppContext, no_scheduler: bool, no_worker: bool, concurrency: int | None,
        processes: int) -> None:
    """Scheduler and delivery worker, until SIGINT or SIGTERM."""
    if no_scheduler and no_worker:
        raise click.UsageError("--no-scheduler and --no-worker together leave nothing to run")
    if no_worker and processes > 1:
        raise click.UsageError("--processes is for delivering, which --no-worker leaves to another process")
    _log_to_stderr(app.config.zone)
    services = app.ready_services(wait_for_database=True)
    node = Node(services, scheduler=not no_scheduler, worker=not no_worker, concurrency=concurrency,
                processes=processes)

    def stop(sig: signal.Signals) -> None:  # in stop_on_signals' thread, not a signal handler
        node.stop.set()  # first: nothing that fails after it (stderr gone) may keep us going
        logging.getLogger("mailmag").info("%s: stopping after the jobs and messages in flight", sig.name)

    with stop_on_signals(stop):
        node.run()
    click.echo("stopped", err=True)


class OneLineAPScheduler(logging.Filter):
    """APScheduler's records in one line each, as mailmag's own: an exception's type and text
    after the message, not a traceback (a journal reads each line as an event). A job handed
    to the executor as `run` stopped is no error: its moment is caught up at the next start."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("apscheduler"):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RuntimeError) and "after shutdown" in str(error):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "%s came due as mailmag run stopped: caught up at the next start", (
                record.args[0] if isinstance(record.args, tuple) and record.args else "a job",)
            error = None
        text = record.getMessage() + (f": {type(error).__name__}: {error}" if error else "")
        record.msg, record.args = " | ".join(text.splitlines()), None
        record.exc_info, record.exc_text = None, None
        return True


class _RunHandler(logging.StreamHandler):
    """`run`'s own stderr handler: added once however often `run` starts in one process."""


class _ZonedFormatter(logging.Formatter):
    """Each line's time in [mailmag] timezone, named: the machine's own zone (UTC on most servers)
    put '19:56' beside 'due at 04:56 JST' in the same line (helper-81)."""

    def __init__(self, zone: dt.tzinfo) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.zone = zone

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = dt.datetime.fromtimestamp(record.created, self.zone)
        return f"{moment:%Y-%m-%d %H:%M:%S},{int(record.msecs):03d} {moment:%Z}"


def _log_to_stderr(zone: dt.tzinfo) -> None:
    """`run` is a service: what it does goes to stderr (journald), one line per event."""
    root = logging.getLogger("mailmag")
    if any(isinstance(h, _RunHandler) for h in root.handlers):
        return
    handler = _RunHandler(sys.stderr)
    handler.setFormatter(_ZonedFormatter(zone))
    handler.addFilter(OneLineAPScheduler())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # APScheduler's INFO is one line per job run; keep its warnings and errors.
    logging.getLogger("apscheduler").addHandler(handler)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


commands = [schedule, run]
