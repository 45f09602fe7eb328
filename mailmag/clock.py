"""The one wall clock: every reading of "now" in mailmag goes through here, so tests can move it.

Durations and timeouts use `time.monotonic()` instead: they must not jump when the wall clock
does. Tests move this clock with time-machine (in-process) and tests/clocked.py (processes).
"""

from __future__ import annotations

import datetime as dt
import time

# The wall clock moving this far apart from elapsed time between two looks is a step (NTP, an
# operator), not the scheduling jitter of a busy machine.
STEP_SECONDS = 2.0
# How often `run`'s main loop looks for a step between its polls: after a step back it brings
# back what was stamped on the old clock within this, and an idle worker looks again after two.
LOOK_SECONDS = 1.0


def now() -> dt.datetime:
    """The current moment, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def local_now(zone: dt.tzinfo) -> dt.datetime:
    """The current moment as a wall-clock time in `zone`."""
    return now().astimezone(zone)


def today(zone: dt.tzinfo) -> dt.date:
    """Today's date in `zone` (Japan's date, not the server's, with zone = Asia/Tokyo)."""
    return local_now(zone).date()


def timestamp() -> int:
    """Whole seconds since the Unix epoch (DKIM's t=)."""
    return int(now().timestamp())


def elapsed() -> float:
    """Seconds of real time, counting a suspend, to measure the wall clock against: monotonic()
    stops while the machine sleeps (a laptop's lid, a paused VM) and the wall clock does not, so a
    suspend would look like a jump forward. CLOCK_BOOTTIME is Linux's; elsewhere, monotonic."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


def duration(seconds: float) -> str:
    """9 h, 31 min 5 s, 4 s: whole seconds, none where hours are named (how a clock step is told)."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "",
             f"{seconds} s" if seconds and not hours else ""]
    return " ".join(part for part in parts if part) or "0 s"
