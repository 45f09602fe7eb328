"""State that the sending processes of one worker share (`worker --processes N`): numbers in
shared memory under one lock, or in plain lists under a thread lock when one process sends.

The relay's limits (delivery.ratelimit) and its feedback (delivery.workstate.Throttle) are the
whole worker's, not each process's: a relay that allows 10 messages a second or 2 connections
allows them to the machine, however the work is split.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, MutableSequence
from typing import Any

from mailmag.errors import Fix, MailmagError

LOCK_SECONDS = 10.0  # the lock is held for microseconds: this long means its holder died


def numbers(context: Any, typecode: str, size: int) -> MutableSequence[Any]:
    """`size` zeros ('d': floats, 'q': integers): in this process's memory, or (with a
    multiprocessing context) shared with the processes forked after; unlocked, as their
    owner's lock guards them."""
    if context is None:
        return [0.0 if typecode == "d" else 0] * size
    return context.Array(typecode, size, lock=False)


def make_lock(context: Any) -> Any:
    """A lock for one process's threads, or for every process forked after it."""
    return threading.Lock() if context is None else context.Lock()


@contextlib.contextmanager
def held(lock: Any, seconds: float, what: str) -> Iterator[None]:
    """`lock`, or an error after `seconds`: a process killed while holding a shared lock never
    releases it, and the others must stop (the worker with them) rather than wait for ever."""
    if not lock.acquire(timeout=seconds):
        raise MailmagError(
            f"{what}'s lock was not released in {seconds:g} s: a sending process died holding it; "
            "the rows held come back to the queue when their leases pass", fixes=[Fix("deliver_again")])
    try:
        yield
    finally:
        lock.release()
