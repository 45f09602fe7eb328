"""Sending from several processes on one machine (`mailmag worker --processes N`).

Each process runs a Dispatcher of its own, exactly as workers on several machines do: leases
keep them apart, so nothing is sent twice, and a process that dies leaves its rows to the
others once their leases pass. What this buys is CPU: a dispatcher's threads take turns on one
interpreter lock, so one process uses barely one core whatever the machine has; two processes
of two connections sent ~20 % more than one of four on 2 cores (benchmarks/README.md, Round 5).

The relay's connections are shared out ([smtp] max_connections, or --concurrency, in all), and
so is [smtp] rate_per_second. [smtp] rate_per_hour is not: each dispatcher counts the whole
last hour's mail against its own limit, so that limit is kept by one process only.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
from collections.abc import Callable
from typing import Any

from mailmag.config import Config
from mailmag.delivery.dispatch import Stats
from mailmag.delivery.transports import make_transport
from mailmag.errors import ConfigError, MailmagError
from mailmag.scheduling.sending import make_dispatcher
from mailmag.services import Services

_COUNTED = ("sent", "failed", "deferred", "lost", "ambiguous")
_REPORT_SECONDS = 2.0  # a process that has ended flushed its report before it exited


def shares(total: int, processes: int) -> list[int]:
    """`total` connections shared out over `processes` (the first ones take what does not divide)."""
    return [total // processes + (1 if i < total % processes else 0) for i in range(processes)]


def check(config: Config, processes: int, concurrency: int) -> None:
    """ConfigError when `processes` cannot keep the configuration's promises."""
    if processes > concurrency:
        raise ConfigError(f"--processes {processes} needs at least as many connections "
                          f"(--concurrency or [smtp] max_connections is {concurrency})")
    if processes > 1 and config.smtp.rate_per_hour:
        raise ConfigError("[smtp] rate_per_hour is counted by one process: run the worker without "
                          "--processes, or set rate_per_hour = 0")


def run_processes(config: Config, processes: int, concurrency: int, *, once: bool, stop: threading.Event,
                  progress: Callable[[int], None] | None = None) -> Stats:
    """Run `processes` dispatchers, each in a process of its own, until all have ended.

    `stop` (set by the caller's signal handler) stops them all as SIGTERM stops one. Their
    counts are summed; the first error any of them raised is raised once all have ended.
    """
    check(config, processes, concurrency)
    context = multiprocessing.get_context("fork")  # no threads or connections here yet: a safe fork
    sent = context.Value("q", 0) if progress else None  # accepted messages, for the progress bar
    reports: Any = context.Queue()
    rate = config.smtp.rate_per_second / processes
    own = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, rate_per_second=rate))
    children = [
        context.Process(target=_child, args=(own, n, once, sent, reports, os.getpid()),
                        name=f"mailmag-send-{i}")
        for i, n in enumerate(shares(concurrency, processes))
    ]
    for child in children:
        child.start()
    _wait(children, stop, sent, progress)
    return _summed(children, reports)


def _wait(children: list[Any], stop: threading.Event, sent: Any,
          progress: Callable[[int], None] | None) -> None:
    shown, stopping = 0, False

    def show() -> None:
        nonlocal shown
        now = sent.value if progress is not None else shown  # read once: a tick between two reads is lost
        if progress is not None and now != shown:
            progress(now - shown)
            shown = now

    while alive := [child for child in children if child.is_alive()]:
        # wakes when a process ends, else every 0.2 s to look at `stop` and the progress
        multiprocessing.connection.wait([child.sentinel for child in alive], timeout=0.2)
        if stop.is_set() and not stopping:
            stopping = True
            for child in alive:
                with contextlib.suppress(OSError):  # already gone
                    child.terminate()  # SIGTERM: finish the message in flight, hand the rest back
        show()
    show()


def _summed(children: list[Any], reports: Any) -> Stats:
    total, error, heard = Stats(), None, 0
    while heard < len(children):
        try:
            counts, failure = reports.get(timeout=_REPORT_SECONDS)
        except queue.Empty:
            break  # a process killed outright (SIGKILL, the OOM killer) never reports
        heard += 1
        for field in _COUNTED:
            total.add(field, counts.get(field, 0))
        for field in ("unreachable", "held_back"):
            setattr(total, field, getattr(total, field) or counts.get(field, ""))
        error = error or failure
    for child in children:
        child.join()
    if heard < len(children):
        codes = ", ".join(str(child.exitcode) for child in children)
        error = error or MailmagError(
            f"a sending process ended without a report (exit codes {codes}); the rows it held "
            "go back to the queue when their leases pass: run the worker again")
    if error is not None:
        raise error
    return total


def _child(config: Config, concurrency: int, once: bool, sent: Any, reports: Any, parent: int) -> None:
    """One sending process: a dispatcher that stops on SIGTERM or SIGINT, and when its parent dies."""
    early = threading.Event()  # a signal before the dispatcher exists stops it as soon as it does
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: early.set())
    _stop_with(parent)
    services = Services(config)
    tick = None if sent is None else _counter(sent)
    dispatcher = make_dispatcher(services, make_transport(config), concurrency=concurrency, progress=tick)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: dispatcher.stop.set())
    if early.is_set():
        dispatcher.stop.set()
    counts: dict[str, Any] = {}
    failure: BaseException | None = None
    try:
        stats = dispatcher.run(once=once)
        counts = {field: getattr(stats, field) for field in (*_COUNTED, "unreachable", "held_back")}
    except MailmagError as exc:
        failure = exc
    except Exception as exc:  # reported as one line; the process's own traceback is on stderr
        failure = MailmagError(f"a sending process failed: {exc!r}")
        raise
    finally:
        counts = counts or {field: getattr(dispatcher.stats, field) for field in _COUNTED}
        reports.put((counts, failure))
        services.close()


def _counter(sent: Any) -> Callable[[int], None]:
    def tick(n: int) -> None:
        with sent.get_lock():
            sent.value += n
    return tick


def _stop_with(parent: int) -> None:
    """SIGTERM this process when the worker that started it dies (even by SIGKILL), so no
    dispatcher goes on alone, unseen by whoever stopped the worker (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl: nobody would see this process
        os.kill(os.getpid(), signal.SIGTERM)
