"""mailmag's CLI on a moved wall clock: how the tests hand their clock to the processes they start.

Test-only. `mailmag_command(*args)` is the argv to start `mailmag ARGS`: plain `python -m
mailmag` on the real clock, or this file when the test runs on a moved clock (time-machine, see
conftest.py). Run as a script, it moves this process's clock by the offset it is given (ticking,
so the process sees time pass) and runs the real CLI. Production code never reads a fake clock.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import time_machine


def offset_seconds() -> float:
    """How far the clock of this test process is from the real one (0.0 when not moved)."""
    if not time_machine.escape_hatch.is_travelling():
        return 0.0
    return time.time() - time_machine.escape_hatch.time.time()


def mailmag_command(*args: str, python: str = sys.executable) -> list[str]:
    """argv that runs `mailmag ARGS` in a new process on the same clock as this test."""
    offset = offset_seconds()
    if offset == 0.0:
        return [python, "-m", "mailmag", *args]
    return [python, str(Path(__file__).resolve()), f"{offset:.6f}", *args]


def _main() -> None:
    offset, args = float(sys.argv[1]), sys.argv[2:]
    moved = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    with time_machine.travel(moved, tick=True):
        from mailmag.cli import main

        sys.argv = ["mailmag", *args]
        main()


if __name__ == "__main__":
    _main()
