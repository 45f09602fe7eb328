"""Sending from several processes on one machine (`worker --processes N`, `run --processes N`).

Each process runs a Dispatcher of its own, exactly as workers on several machines do: leases
keep them apart, so nothing is sent twice. What this buys is CPU: a dispatcher's threads take
turns on one interpreter lock, so one process uses barely one core whatever the machine has; two
processes of two connections sent ~20 % more than one of four on 2 cores (benchmarks/README.md,
Round 5).

The relay's connections are shared out ([smtp] max_connections, or --concurrency, in all); the
rate limits and the 421 throttle live in shared memory, so [smtp] rate_per_second and
rate_per_hour hold for the worker as a whole, and a relay that asks for fewer connections gets
fewer from the worker, down to one. The processes stand and fall together, as one process's threads do:
a stop reaches all of them, and one that fails or dies stops the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from mailmag.config import Config
from mailmag.delivery.dispatch import Dispatcher, Stats, batch_size
from mailmag.delivery.ratelimit import RateLimiter
from mailmag.delivery.transports import make_transport
from mailmag.delivery.workstate import Throttle
from mailmag.errors import ConfigError, Fix, MailmagError
from mailmag.scheduling.sending import deliver_until_stopped, make_dispatcher
from mailmag.scheduling.signals import STOPS, stop_on_signals
from mailmag.services import Services

_COUNTED = ("sent", "failed", "deferred", "lost", "cancelled", "ambiguous")
_NOTES = ("unreachable", "held_back")  # the first process's that has one is the worker's
Report = tuple[dict[str, Any], "BaseException | None"]  # a process's counts, and why it failed


def shares(total: int, processes: int) -> list[int]:
    """`total` connections shared out over `processes` (the first ones take what does not divide)."""
    return [total // processes + (1 if i < total % processes else 0) for i in range(processes)]


def check(config: Config, processes: int, concurrency: int) -> None:
    """ConfigError when the processes could not start, raised here as one line (as one process
    raises it), not by each process after the fork."""
    if processes > concurrency:
        raise ConfigError(f"--processes {processes} needs at least as many connections "
                          f"(--concurrency or [smtp] max_connections is {concurrency})")
    services = Services(config)
    try:  # the secret key, the DKIM key, the transport: what each process is about to read
        make_dispatcher(services, make_transport(config))
    finally:
        services.close()


@dataclasses.dataclass
class Sender:
    """A sending process and the pipe its report comes back by."""

    process: Any
    reports: multiprocessing.connection.Connection
    accepted: Any  # its count of accepted messages, for the progress bar (None without one)
    report: Report | None = None

    def listen(self) -> None:
        """Read the report once the process has sent it (it does as it ends)."""
        with contextlib.suppress(EOFError, OSError):  # died before reporting: no report
            if self.report is None and self.reports.poll():
                self.report = self.reports.recv()

    def wrong(self, once: bool) -> bool:
        """This process failed, died, or (not `once`: a worker sends until stopped) ended."""
        code = self.process.exitcode
        if code is not None:  # it reported before it ended: read that first, or its end looks like a death
            self.listen()
        if self.report is not None and self.report[1] is not None:
            return True
        return code is not None and (code != 0 or self.report is None or not once)


def run_processes(config: Config, processes: int, concurrency: int, *, once: bool, stop: threading.Event,
                  progress: Callable[[int], None] | None = None) -> Stats:
    """Run `processes` dispatchers, each in a process of its own, until all have ended (the worker)."""
    check(config, processes, concurrency)
    return wait(start(config, processes, concurrency, once=once, progress=progress), once, stop, progress)


def start(config: Config, processes: int, concurrency: int, *, once: bool = False, service: bool = False,
          progress: Callable[[int], None] | None = None) -> list[Sender]:
    """Fork the sending processes. `service` (`mailmag run`): each one outlives a relay that refuses
    us and a database away, trying again after a pause, as one process's delivery does; otherwise
    (the worker) such a failure ends it, and the worker with it, with the reason."""
    context = multiprocessing.get_context("fork")  # no threads or connections here yet: a safe fork
    limiter = RateLimiter(config.smtp.rate_per_second, config.smtp.rate_per_hour, context=context)
    throttle = Throttle(concurrency, config.smtp.throttle_seconds, context=context)
    # each thread claims its share of the whole worker's rate, not of its process's
    own = dataclasses.replace(config, dispatch=dataclasses.replace(
        config.dispatch, batch_size=batch_size(config, concurrency)))
    senders, split = [], shares(concurrency, processes)
    with _stops_held():
        for i, connections in enumerate(split):
            reports, report = context.Pipe(duplex=False)
            # one count per process, written by it alone: no lock a killed process could keep
            accepted = context.Value("q", 0, lock=False) if progress else None
            relay = Relay(limiter, throttle, first_connection=sum(split[:i]))
            process = context.Process(target=_child, name=f"mailmag-send-{i + 1}",
                                      args=(own, connections, once, service, accepted, relay, report,
                                            os.getpid()))
            process.start()
            report.close()  # the process holds its end
            senders.append(Sender(process, reports, accepted))
    return senders


def wait(senders: list[Sender], once: bool, stop: threading.Event,
         progress: Callable[[int], None] | None = None) -> Stats:
    """Until every process has ended. `stop` (set by the caller's signal handler) stops them all
    as SIGTERM stops one, and so does one process failing or dying. Their counts are summed; the
    first error any of them raised is raised once all have ended."""
    first = _wait(senders, once, stop, progress)
    total = _summed(senders)
    # A stop of the whole group (systemd's) reaches the processes and this one at once, and a
    # process may end before this one's handler has run: it is given a moment to.
    if first is not None and not once and not stop.wait(STOP_GRACE_SECONDS):
        raise _ended_alone(senders, first)
    return total


# How long a process that ended alone waits for the group's stop to reach this one (wait()).
STOP_GRACE_SECONDS = 2.0


@contextlib.contextmanager
def _stops_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait while processes start: a process forked with them blocked lets
    them in once its own handlers are set, and the worker's own once all have started (the
    handler a fork inherits stops nothing of the new process's)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _wait(senders: list[Sender], once: bool, stop: threading.Event,
          progress: Callable[[int], None] | None) -> Sender | None:
    """The processes' end; returns the one that ended (or failed) first, unasked (None when `stop`
    ended them)."""
    shown, stopping, first = 0, False, None

    def show() -> None:
        nonlocal shown
        now = sum(s.accepted.value for s in senders) if progress is not None else shown  # read once
        if progress is not None and now != shown:
            progress(now - shown)
            shown = now

    while alive := [s for s in senders if s.process.is_alive()]:
        if not stopping and (stop.is_set() or any(s.wrong(once) for s in senders)):
            stopping = True
            first = None if stop.is_set() else next(s for s in senders if s.wrong(once))
            for sender in alive:
                with contextlib.suppress(OSError):  # already gone
                    sender.process.terminate()  # SIGTERM: finish the message in flight, hand the rest back
        # wakes when a process ends, else every 0.2 s to look at `stop` and the progress
        multiprocessing.connection.wait([s.process.sentinel for s in alive], timeout=0.2)
        for sender in senders:
            sender.listen()
        show()
    show()
    return first


def _summed(senders: list[Sender]) -> Stats:
    total, error, codes = Stats(), None, []
    for sender in senders:
        sender.process.join()
        sender.listen()
        codes.append(str(sender.process.exitcode))
        if sender.report is None:
            continue
        counts, failure = sender.report
        for field in _COUNTED:
            total.add(field, counts.get(field, 0))
        for field in _NOTES:
            setattr(total, field, getattr(total, field) or counts.get(field, ""))
        error = error or failure
    if error is None and any(sender.report is None for sender in senders):
        error = MailmagError(
            f"a sending process ended without a report (exit codes {', '.join(codes)}); the rows it "
            "held go back to the queue when their leases pass", fixes=[Fix("deliver_again")])
    if error is not None:
        raise error
    return total


def _ended_alone(senders: list[Sender], first: Sender) -> MailmagError:
    """A process that stopped cleanly while the others went on: a SIGTERM or SIGINT sent to it
    alone (`kill` of the wrong pid, a tool that signals every mailmag process it sees one by one).
    The worker stopped the others, and must not then end as if asked to (exit 0), which would leave
    the queue half-sent and a service manager that restarts only failures doing nothing."""
    number = senders.index(first) + 1
    return MailmagError(
        f"sending process {number} of {len(senders)} (pid {first.process.pid}) stopped on its own, "
        f"although mailmag (pid {os.getpid()}) was not stopping: a SIGTERM or SIGINT sent to that "
        f"process alone (to stop mailmag, signal pid {os.getpid()})? The others stopped with it, and "
        "what they held is back in the queue", fixes=[Fix("deliver_again")])


@dataclasses.dataclass(frozen=True)
class Relay:
    """What a process shares with the others about the relay: its rate limits and its 421s, and
    where this process's connections start in the worker's numbering."""

    limiter: RateLimiter
    throttle: Throttle
    first_connection: int


def _child(config: Config, concurrency: int, once: bool, service: bool, accepted: Any, relay: Relay,
           report: multiprocessing.connection.Connection, parent: int) -> None:
    """One sending process: a dispatcher that stops on SIGTERM or SIGINT, and when its parent dies."""
    stop = threading.Event()  # a signal before the dispatcher exists stops it as soon as it does
    current: list[Dispatcher] = []

    def stopped(_sig: signal.Signals) -> None:  # in stop_on_signals' thread, not a signal handler
        stop.set()  # before current is read, as new_dispatcher appends before it reads stop
        for dispatcher in current[-1:]:
            dispatcher.stop.set()

    with stop_on_signals(stopped):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # a stop sent while this process started lands now
        _stop_with(parent)
        _titled(multiprocessing.current_process().name)
        _log_as(multiprocessing.current_process().name)
        services = Services(config)
        tick = None if accepted is None else _counter(accepted)

        def new_dispatcher() -> Dispatcher:
            current.append(make_dispatcher(services, make_transport(config), concurrency=concurrency,
                                           progress=tick, limiter=relay.limiter, throttle=relay.throttle,
                                           first_connection=relay.first_connection))
            if stop.is_set():
                current[-1].stop.set()
            return current[-1]

        counts: dict[str, Any] = {}
        failure: BaseException | None = None
        try:
            if service:
                deliver_until_stopped(services, stop, new_dispatcher)
            else:
                counts = _counts(new_dispatcher().run(once=once), (*_COUNTED, *_NOTES))
        except MailmagError as exc:
            failure = exc
        except Exception as exc:  # reported as one line; the process's own traceback is on stderr
            failure = MailmagError(f"a sending process failed: {exc!r}")
            raise
        finally:
            if not counts and current:
                counts = _counts(current[-1].stats, _COUNTED)
            report.send((counts, failure))
            services.close()


def _counts(stats: Stats, fields: tuple[str, ...]) -> dict[str, Any]:
    return {field: getattr(stats, field) for field in fields}


def _counter(accepted: Any) -> Callable[[int], None]:
    lock = threading.Lock()  # this process's threads: it dies with them

    def tick(n: int) -> None:
        with lock:
            accepted.value += n
    return tick


def _stop_with(parent: int) -> None:
    """SIGTERM this process when the worker that started it dies (even by SIGKILL), so no
    dispatcher goes on alone, unseen by whoever stopped the worker (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl: nobody would see this process
        os.kill(os.getpid(), signal.SIGTERM)


def _log_as(name: str) -> None:
    """Begin each of mailmag's log lines in this process with its name ("mailmag-send-2: delivery
    …"), so an operator reading the worker's stderr or the journal tells which process said it.
    The record, not a handler's format: `worker` prints through logging's last-resort handler."""
    make = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = make(*args, **kwargs)
        if made.name.startswith("mailmag"):
            made.msg = f"{name}: {made.msg}"
        return made

    logging.setLogRecordFactory(record)


def _titled(name: str) -> None:
    """Name this process as `ps -o pid,comm` and `top` show it (mailmag-send-1, ...), so that an
    operator tells the sending processes from mailmag's own (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15])  # PR_SET_NAME
