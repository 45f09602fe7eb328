"""Relay limits as sliding windows: never more than N messages in any second or any hour.

The per-second limit is spread over the second (R a second: R/10 every tenth of a second), not
let go in a burst at its start: a relay counts arrivals, and a burst that reaches it late meets
the next one inside the relay's second. The hourly limit lets its messages go as they come.

In the limits themselves (the second and the hour) a turn counts from when its message is done,
not from when it was taken: a message reaches the relay some time after its turn (the previous
result's commit, building it, other threads holding the interpreter: 40-100 ms with eight
connections; more behind a slow relay), so turns spaced a second apart reached the relay less
than a second apart. A turn in flight (taken, its message not done yet) counts as at every
moment from now on; `done` then records it at the moment the relay's reply was read, which is
after the relay counted it. The tenths only spread the turns, and count them as they are taken:
counted as the limits are, they would let no more than R/10 messages be in flight at once,
and a relay that takes 300 ms a message would get a third of R.

A limiter is kept by one process's threads, or (made with a multiprocessing context) by every
process forked after it: `worker --processes N` sends under the relay's one limit, not N.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, MutableSequence
from typing import Any

from mailmag.delivery import shared
from mailmag.delivery.shared import LOCK_SECONDS

# How long a sender waits before asking again when every turn of a window is in flight: a
# message is done in milliseconds, or fails within [smtp] timeout_seconds.
IN_FLIGHT_WAIT_SECONDS = 0.01


class Window:
    """At most `limit` events in any `seconds`-long window (a strict sliding window).

    The last `limit` events' times are kept in a ring: `state` holds the oldest one's index and
    how many the ring holds, so that the same code runs on a list or on shared memory.
    `when_done`: an event is a message done (else a turn taken), and turns in flight count.
    """

    def __init__(self, limit: int, seconds: float, times: MutableSequence[float],
                 state: MutableSequence[int], *, when_done: bool = True) -> None:
        self.limit = limit
        self.seconds = seconds
        self.times = times
        self.state = state
        self.when_done = when_done

    def wait_time(self, now: float, in_flight: int) -> float:
        """Seconds until one more turn fits beside `in_flight` turns whose messages are not done
        (each may reach the relay at any moment): the window from then back holds at most
        limit - in_flight - 1 of the done ones."""
        room = self.limit - in_flight - 1
        if room < 0:
            return IN_FLIGHT_WAIT_SECONDS
        oldest, held = self.state[0], self.state[1]
        if held <= room:
            return 0.0
        # the (room + 1)-th most recent done turn must have left the window
        return max(0.0, self.times[(oldest + held - 1 - room) % self.limit] + self.seconds - now)

    def add(self, now: float) -> None:
        oldest, held = self.state[0], self.state[1]
        if held < self.limit:
            self.times[(oldest + held) % self.limit] = now
            self.state[1] = held + 1
        else:  # the oldest leaves the ring and its place holds the newest
            self.times[oldest] = now
            self.state[0] = (oldest + 1) % self.limit


class RateLimiter:
    """Messages per second and per hour (0 = unlimited), shared by a worker's threads.

    `context` (a multiprocessing context): the windows live in shared memory under a
    process-shared lock, so the processes forked after the limiter was made share its limits.
    time.monotonic is one clock for every process of the machine.
    """

    def __init__(self, per_second: float, per_hour: int, clock: Callable[[], float] = time.monotonic,
                 *, context: Any = None, lock_seconds: float = LOCK_SECONDS) -> None:
        # clock is an argument so tests can run an hour of limits in no time.
        self.per_hour = per_hour
        self.clock = clock
        self.lock_seconds = lock_seconds
        self.windows: list[Window] = []
        if per_second > 0:
            # a tenth of the second's messages in each tenth of a second (2.5/s: one per 0.4 s)
            limit = max(int(per_second / 10), 1)
            self.windows.append(Window(limit, limit / per_second, *_cells(context, limit), when_done=False))
        if per_second >= 1:
            # and the second itself: 12.5 tenths of 2 (25/s) fit 26 into one second
            whole = math.ceil(per_second)  # 2.5/s: one per 0.4 s, so 3 in some seconds, never 4
            self.windows.append(Window(whole, 1.0, *_cells(context, whole)))
        if per_hour > 0:
            self.windows.append(Window(per_hour, 3600.0, *_cells(context, per_hour)))
        self.lock = shared.make_lock(context)
        self._primed: MutableSequence[int] = shared.numbers(context, "q", 1)
        self._in_flight: MutableSequence[int] = shared.numbers(context, "q", 1)

    @property
    def primed(self) -> bool:
        """The last hour is counted (by this dispatcher, or by another that shares the limiter)."""
        return bool(self._primed[0])

    def prime(self, ages: Iterable[float]) -> None:
        """Count the messages sent before this process started, `ages` seconds ago, against the
        hourly window (once: the dispatchers that share a limiter each call this as they start)."""
        with self._locked():
            if self._primed[0]:
                return
            self._primed[0] = 1
            now, oldest_first = self.clock(), sorted(ages, reverse=True)
            for window in self.windows:
                if window.seconds == 3600.0:
                    for age in oldest_first[-window.limit :]:  # the newest the window holds
                        window.add(now - max(age, 0.0))  # "sent" later than now (a clock stepped back): now

    def take_turn(self) -> float:
        """Take a turn if one is free now (0.0), which the caller gives back with `done` once its
        message is; else the seconds until one may be, taking none (the caller waits that long,
        or less, and asks again: another may take it meanwhile)."""
        if not self.windows:  # no limit set (the usual relay): every message, no lock to take
            return 0.0
        with self._locked():
            now, in_flight = self.clock(), self._in_flight[0]
            wait = max(w.wait_time(now, in_flight if w.when_done else 0) for w in self.windows)
            if wait > 0:
                return wait
            self._in_flight[0] = in_flight + 1
            for window in self.windows:
                if not window.when_done:
                    window.add(now)
            return 0.0

    def done(self) -> None:
        """The message of a turn taken is done (accepted, refused, or not sent at all: counted
        all the same), now: its turn counts from this moment."""
        if not self.windows:
            return
        with self._locked():
            self._in_flight[0] = max(self._in_flight[0] - 1, 0)
            now = self.clock()
            for window in self.windows:
                if window.when_done:
                    window.add(now)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with shared.held(self.lock, self.lock_seconds, "the rate limit"):
            yield


def _cells(context: Any, size: int) -> tuple[MutableSequence[float], MutableSequence[int]]:
    """`size` times and a ring's two counters (the limiter's lock guards them)."""
    return shared.numbers(context, "d", size), shared.numbers(context, "q", 2)
