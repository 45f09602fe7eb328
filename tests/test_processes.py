"""How `worker --processes N` waits for its sending processes and adds up what they report."""

from __future__ import annotations

import multiprocessing
import threading
import time

from mailmag.scheduling import processes

FORK = multiprocessing.get_context("fork")


def _reporting(report, sent: int, after: float) -> None:
    """A sending process's end, as processes._child's: its counts down the pipe, then exit 0."""
    time.sleep(after)
    report.send(({"sent": sent, "failed": 0, "deferred": 0}, None))


def _sender(sent: int, after: float) -> processes.Sender:
    reports, report = FORK.Pipe(duplex=False)
    process = FORK.Process(target=_reporting, args=(report, sent, after))
    process.start()
    report.close()
    return processes.Sender(process, reports, None)


def test_a_process_that_reported_and_ended_first_does_not_stop_the_others():
    """With --once a process ends when nothing is left for it. One that ended between two looks
    of the worker was taken for dead, its report still unread: the worker stopped every other
    process, and `worker --once --processes 6` said "sent 59" of 60 with one handed back (CI)."""
    done, busy = _sender(3, after=0.0), _sender(2, after=1.0)
    done.process.join()  # ended, its report unread
    total = processes.wait([done, busy], once=True, stop=threading.Event())
    assert (total.sent, busy.process.exitcode) == (5, 0)  # the busy one finished, not terminated


def test_a_process_that_ended_unasked_is_still_wrong_for_a_worker_that_sends_until_stopped():
    done = _sender(3, after=0.0)
    done.process.join()
    assert done.wrong(once=False) and not done.wrong(once=True)
