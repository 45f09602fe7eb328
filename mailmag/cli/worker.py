"""`mailmag worker`: deliver the outbox."""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import sys
import threading
from collections.abc import Callable

import click

from mailmag.cli.common import AppContext, local_time, pass_app, plural, window_note
from mailmag.delivery import outbox
from mailmag.delivery.dispatch import Stats
from mailmag.delivery.transports import make_transport
from mailmag.models import utcnow
from mailmag.scheduling.processes import run_processes
from mailmag.scheduling.sending import make_dispatcher
from mailmag.scheduling.signals import stop_on_signals
from mailmag.services import Services


@click.command()
@click.option("--once", is_flag=True, help="Exit when nothing is due instead of waiting for more (or when "
              "[smtp] rate_per_hour is reached: the rest waits for a later run).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None,
              help="SMTP connections (default: [smtp] max_connections).")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Sending processes, sharing the connections out and keeping one rate limit: more "
                   "than one uses more than one CPU core.")
@pass_app
def worker(app: AppContext, once: bool, concurrency: int | None, processes: int) -> None:
    """Deliver queued messages; several workers may share one queue."""
    services = app.ready_services(wait_for_database=True, once=once)
    with _progress(services, once) as progress:
        stats = _deliver(services, once, concurrency, processes, progress)
    lost = f", lost lease {stats.lost}" if stats.lost else ""
    if stats.cancelled:  # refused or deferred as the reader left: neither failed nor to be sent again
        lost += f", cancelled while sending {stats.cancelled}"
    ambiguous = f" ({stats.ambiguous} after the final dot: may arrive twice)" if stats.ambiguous else ""
    click.echo(f"sent {stats.sent}, failed {stats.failed}, deferred {stats.deferred}{ambiguous}{lost}")
    if stats.unreachable:
        click.echo(f"warning: the relay could not be reached: {stats.unreachable}", err=True)
    if stats.held_back:
        click.echo(stats.held_back, err=True)
    if once:
        _once_notes(services)


def _once_notes(services: Services) -> None:
    """Why mail is still waiting after `--once`: the send window, retries not due yet, or rows
    another worker holds."""
    now = utcnow()
    with services.read_session() as session:
        closed = window_note(outbox.due_count(session, now), services.config)
        later, first = outbox.waiting(session, now)
        held, until = outbox.leased(session, now)
    if closed:
        click.echo(closed, err=True)
    if later:  # helper-81: the run ended on "deferred 69" and said nothing of the 11 still to go
        wait = "waits" if later == 1 else "wait"
        # to the minute after: "at 05:34" read at 05:34:10 sent the operator back too soon (helper-84)
        due = first + dt.timedelta(seconds=59) if first is not None else None
        click.echo(f"note: {plural(later, 'message')} {wait} for a retry, the first due by "
                   f"{local_time(due, services.config)}: run the worker again then (`mailmag run` "
                   "sends each when it is due)", err=True)
    if held:
        # shown to the minute: "by" the minute after the last lease ends, not the one it ends in
        by = until + dt.timedelta(seconds=59) if until is not None else None
        are, back = "is" if held == 1 else "are", local_time(by, services.config)
        click.echo(f"note: {plural(held, 'message')} {are} held by another worker, or by one that stopped "
                   f"without handing them back: they return to the queue by {back}", err=True)


def _deliver(services: Services, once: bool, concurrency: int | None, processes: int,
             progress: Callable[[int], None] | None) -> Stats:
    if processes == 1:
        dispatcher = make_dispatcher(services, make_transport(services.config),
                                     concurrency=concurrency, progress=progress)
        with _stop_on_signals(dispatcher.stop):
            return dispatcher.run(once=once)
    services.close()  # the sending processes open their own connections: none is shared by a fork
    stop = threading.Event()
    with _stop_on_signals(stop):
        return run_processes(services.config, processes, concurrency or services.config.smtp.max_connections,
                             once=once, stop=stop, progress=progress)


def _stop_on_signals(stop: threading.Event) -> contextlib.AbstractContextManager[None]:
    """SIGINT/SIGTERM: finish the message in flight, hand the rest of the batch back."""

    def stopping(sig: signal.Signals) -> None:  # in stop_on_signals' thread, not a signal handler
        stop.set()  # first: nothing that fails after it (stderr gone) may keep us going
        click.echo(f"stopping ({sig.name}): finishing messages in flight", err=True)

    return stop_on_signals(stopping)


@contextlib.contextmanager
def _progress(services, once: bool):
    """A progress bar on a terminal for `--once`; nothing for scripts and services."""
    if not (once and sys.stderr.isatty()):
        yield None
        return
    with services.session() as session:
        total = outbox.due_count(session, utcnow())
    with click.progressbar(length=total, label="sending", file=sys.stderr) as bar:
        yield bar.update


commands = [worker]
