"""The one wall clock: every reading of "now" in mailmag goes through here, so tests can move it.

Durations and timeouts use `time.monotonic()` instead: they must not jump when the wall clock
does. Tests move this clock with time-machine (in-process) and tests/clocked.py (processes).
"""

from __future__ import annotations

import datetime as dt


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
