"""`mailmag worker`: deliver the outbox."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

import click

from mailmag.cli.common import AppContext, pass_app, window_note
from mailmag.delivery import outbox
from mailmag.delivery.dispatch import Dispatcher
from mailmag.delivery.transports import make_transport
from mailmag.models import utcnow
from mailmag.scheduling.sending import make_dispatcher


@click.command()
@click.option("--once", is_flag=True, help="Exit when nothing is due instead of waiting for more (or when "
              "[smtp] rate_per_hour is reached: the rest waits for a later run).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None,
              help="SMTP connections (default: [smtp] max_connections).")
@pass_app
def worker(app: AppContext, once: bool, concurrency: int | None) -> None:
    """Deliver queued messages; several workers may share one queue."""
    services = app.ready_services(wait_for_database=True)
    with _progress(services, once) as progress:
        dispatcher = make_dispatcher(services, make_transport(services.config),
                                     concurrency=concurrency, progress=progress)
        with _stop_on_signals(dispatcher):
            stats = dispatcher.run(once=once)
    lost = f", lost lease {stats.lost}" if stats.lost else ""
    ambiguous = f" ({stats.ambiguous} after the final dot: may arrive twice)" if stats.ambiguous else ""
    click.echo(f"sent {stats.sent}, failed {stats.failed}, deferred {stats.deferred}{ambiguous}{lost}")
    if stats.unreachable:
        click.echo(f"warning: the relay could not be reached: {stats.unreachable}", err=True)
    if stats.held_back:
        click.echo(stats.held_back, err=True)
    if once:
        with services.session() as session:
            closed = window_note(outbox.due_count(session, utcnow()), services.config)
        if closed:
            click.echo(closed, err=True)


@contextlib.contextmanager
def _stop_on_signals(dispatcher: Dispatcher) -> Iterator[None]:
    """SIGINT/SIGTERM: finish the message in flight, hand the rest of the batch back."""

    def stop(signum: int, _frame: object) -> None:
        click.echo(f"stopping ({signal.Signals(signum).name}): finishing messages in flight", err=True)
        dispatcher.stop.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
