"""`mailmag run` logs one line per event, APScheduler's records included (journald reads each
line as an event; helper-61 saw multi-line warnings and a traceback on SIGTERM)."""

from __future__ import annotations

import io
import logging

from mailmag.cli.schedule import OneLineAPScheduler


def logged(name: str, log) -> str:  # type: ignore[no-untyped-def]
    """What `log(logger)` writes through a handler with run's filter and format."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(OneLineAPScheduler())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        log(logger)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue()


def _raise(error: BaseException) -> None:
    raise error


def test_a_job_due_as_run_stops_is_one_info_line_not_a_traceback():
    def submit(logger: logging.Logger) -> None:  # as APScheduler's _process_jobs reports it
        try:
            _raise(RuntimeError("cannot schedule new futures after shutdown"))
        except RuntimeError:
            logger.exception('Error submitting job "%s" to executor "%s"', "auto-1 (trigger: cron)",
                             "default")

    assert logged("apscheduler.scheduler", submit) == (
        "INFO apscheduler.scheduler: auto-1 (trigger: cron) came due as mailmag run stopped: "
        "caught up at the next start\n")


def test_an_apscheduler_error_is_one_line_with_its_exception():
    def fail(logger: logging.Logger) -> None:
        try:
            _raise(ValueError("bad\nthing"))
        except ValueError:
            logger.exception("Job %s raised\nan exception", "poll")

    assert logged("apscheduler.executors.default", fail) == (
        "ERROR apscheduler.executors.default: Job poll raised | an exception: ValueError: bad | thing\n")


def test_mailmags_own_crash_keeps_its_traceback():
    def crash(logger: logging.Logger) -> None:
        try:
            _raise(KeyError("x"))
        except KeyError:
            logger.exception("worker thread crashed")

    text = logged("mailmag.delivery.dispatch", crash)
    assert text.startswith("ERROR mailmag.delivery.dispatch: worker thread crashed\nTraceback")
