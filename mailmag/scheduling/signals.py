"""Stopping on SIGINT and SIGTERM without a handler that can deadlock.

A Python signal handler runs in the main thread between two bytecodes, possibly while that thread
(or an earlier run of the same handler) holds a lock: a handler that takes the lock itself, as
`Event.set()`, logging and `click.echo` do, then waits for ever, and the process ignores every
further SIGTERM (a sending process outlived `mailmag run` so). Here the handler only writes the
signal's number to a pipe (the self-pipe pattern); a thread reads it and calls `on_stop`, where
taking locks is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

STOPS = (signal.SIGINT, signal.SIGTERM)

# The write ends of this process's pipes, closed in a forked child (os.register_at_fork below).
_open: set[int] = set()


@contextlib.contextmanager
def stop_on_signals(on_stop: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Call `on_stop` (in a thread of its own, once for each signal) on SIGINT and SIGTERM while
    inside; the handlers before are back on leaving, after every call of `on_stop` has returned."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # the handler must never wait on a full pipe
    reader = threading.Thread(target=_relay, args=(read_end, on_stop), name="mailmag-signals", daemon=True)
    reader.start()
    _open.add(write_end)
    handler = _writer(write_end)
    previous: dict[signal.Signals, Any] = {}  # whatever signal.signal() returned
    try:
        for sig in STOPS:
            previous[sig] = signal.signal(sig, handler)
        yield
    finally:
        for sig, before in previous.items():
            if before is not None:  # None: set outside Python, and cannot be set back from it
                signal.signal(sig, before)
        _open.discard(write_end)
        os.close(write_end)  # the reader reads the signals left, then the end of the pipe
        reader.join()
        os.close(read_end)


def _writer(write_end: int) -> Callable[[int, object], None]:
    """The handler: one os.write, which takes no lock (nor does anything else here)."""
    owner = os.getpid()

    def handler(signum: int, _frame: object) -> None:
        # A forked child runs this until it sets handlers of its own, with the pipe closed: the
        # parent's on_stop is not the child's to call.
        if os.getpid() != owner:
            return
        # Full pipe: 64 KiB of signals unread already; on_stop is called for those.
        with contextlib.suppress(BlockingIOError):
            os.write(write_end, bytes([signum]))

    return handler


def _relay(read_end: int, on_stop: Callable[[signal.Signals], None]) -> None:
    """Until the write end is closed: on_stop for each signal number read."""
    while numbers := os.read(read_end, 64):
        for sig in map(signal.Signals, numbers):
            try:
                on_stop(sig)
            except Exception:  # logged, and the next signal is still relayed: it may stop us yet
                log.exception("stopping on %s failed", sig.name)


def _close_in_child() -> None:
    """A forked child (a sending process) must not hold the parent's write ends: the parent's
    reader would wait for the child's end as well before it ends."""
    for write_end in _open:
        with contextlib.suppress(OSError):
            os.close(write_end)
    _open.clear()


os.register_at_fork(after_in_child=_close_in_child)
