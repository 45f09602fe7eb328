"""Relay limits as sliding windows: never more than N messages in any second or any hour."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable


class Window:
    """At most `limit` events in any `seconds`-long window (a strict sliding window)."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.times: collections.deque[float] = collections.deque(maxlen=limit)

    def wait_time(self, now: float) -> float:
        if len(self.times) < self.limit:
            return 0.0
        return max(0.0, self.times[0] + self.seconds - now)


class RateLimiter:
    """Messages per second and per hour (0 = unlimited), shared by a worker's threads."""

    def __init__(self, per_second: float, per_hour: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        # clock and sleep are arguments so tests can run an hour of limits in no time.
        self.per_hour = per_hour
        self.clock = clock
        self.sleep = sleep
        self.windows: list[Window] = []
        if per_second > 0:
            # A fractional rate (0.5/s) becomes one message per 1/rate seconds.
            limit = max(int(per_second), 1)
            self.windows.append(Window(limit, limit / per_second))
        if per_hour > 0:
            self.windows.append(Window(per_hour, 3600.0))
        self.lock = threading.Lock()

    def prime(self, sent_in_last_hour: int) -> None:
        """Count messages sent before this process started against the hourly window."""
        for window in self.windows:
            if window.seconds == 3600.0:
                now = self.clock()
                for _ in range(min(sent_in_last_hour, window.limit)):
                    window.times.append(now)

    def wait_time(self) -> float:
        """Seconds until a turn may be free (0.0: now), taking none."""
        with self.lock:
            return self._wait(self.clock())

    def _wait(self, now: float) -> float:
        return max((w.wait_time(now) for w in self.windows), default=0.0)

    def try_acquire(self) -> bool:
        """Take a turn if one is free now, without waiting."""
        return self._take_turn() <= 0

    def _take_turn(self) -> float:
        """Take a turn if one is free now (0.0); else the seconds until one may be."""
        with self.lock:
            now = self.clock()
            wait = self._wait(now)
            if wait <= 0:
                for window in self.windows:
                    window.times.append(now)
                return 0.0
            return wait

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until one more message fits every window; False if `stop` was set meanwhile."""
        while True:
            wait = self._take_turn()
            if wait <= 0:
                return True
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                self.sleep(wait)
