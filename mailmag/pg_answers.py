"""A PostgreSQL server that stops answering: every wait for its answer has a deadline.

A frozen virtual machine, a stuck disk or a stopped postmaster keeps its connections open:
its kernel still acknowledges what is sent, so libpq's own limits never fire
(`connect_timeout` covers a new connection only, `tcp_user_timeout` and keepalives a peer that
stops acknowledging). A worker then sat silent and a page held its thread for as long as the
server slept. Here each wait on a connection registers with one watchdog thread, which shuts the
socket down at the deadline: libpq sees the connection end, psycopg raises OperationalError,
SQLAlchemy invalidates the connection, and the caller meets a database that went away (the
worker logs it and waits, a page answers 503).

The deadline is the connection's `answer_timeout` (`[database] answer_timeout_seconds`) for
each wait, or the moment `answer_within` sets for all of the calling thread's waits (a health
check: a few seconds from now; a migration, which may rewrite a large table: never).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import psycopg

_BY: ContextVar[float | None] = ContextVar("mailmag_answer_by", default=None)  # time.monotonic()


@contextlib.contextmanager
def answer_within(seconds: float) -> Iterator[None]:
    """In this block, this thread's database waits (and new connections) give up `seconds` from
    now, all of them together: a health check's ping and the new connection the pool makes after
    a failed one share its few seconds (each had its own: 5 s became 8, helper-65). math.inf:
    never."""
    token = _BY.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _BY.reset(token)


def limit_for(default: float) -> float:
    """Seconds the next wait of this thread may last: what answer_within leaves, else `default`."""
    by = _BY.get()
    return default if by is None else max(by - time.monotonic(), 0.0)


def overdue(seconds: float) -> bool:
    """Whether a wait of this process has gone unanswered for longer than `seconds` (the server
    may be hung, or a statement is merely long)."""
    return _WATCHDOG.overdue(seconds)


def no_answer(seconds: float) -> psycopg.OperationalError:
    """The error of a server that gave no answer in time (its connection is closed by then)."""
    return psycopg.OperationalError(f"the database server gave no answer in {seconds:g} s; "
                                    "its connection was closed")


def connect(cargs: Any, cparams: dict[str, Any], answer_timeout: float) -> AnsweringConnection:
    """A new connection whose waits give up after `answer_timeout` seconds. A caller in a hurry
    (answer_within: a health check) waits no longer for the connection than for an answer;
    libpq counts whole seconds, 2 at least."""
    limit = limit_for(answer_timeout)
    if limit <= 0:  # answer_within's time is spent (the ping before this waited for it all)
        raise psycopg.OperationalError("the database server gave no answer in time; no new connection tried")
    given = float(cparams.get("connect_timeout", 0)) or math.inf  # 0: libpq's "no limit"
    if limit < given:
        cparams["connect_timeout"] = max(2, math.ceil(limit))
    try:
        connection = AnsweringConnection.connect(*cargs, **cparams)
    except psycopg.errors.ConnectionTimeout as exc:  # libpq says only "connection timeout expired"
        seconds = cparams.get("connect_timeout")
        message = f"the database server gave no answer to a new connection in {seconds} s"
        raise psycopg.OperationalError(message) from exc
    connection.answer_timeout = answer_timeout
    return connection


class AnsweringConnection(psycopg.Connection[Any]):
    """psycopg's connection whose every wait (a statement, a commit, a ping) has a deadline."""

    answer_timeout: float = math.inf  # set by connect() above

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        limit = limit_for(self.answer_timeout)
        if math.isinf(limit):
            return super().wait(gen, *args, **kwargs)
        with _WATCHDOG.watching(self.pgconn.socket, limit) as watch:
            try:
                return super().wait(gen, *args, **kwargs)
            except psycopg.Error as exc:
                if watch.expired:
                    raise no_answer(limit) from exc
                raise


class _Watch:
    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.started = time.monotonic()
        self.deadline = deadline
        self.expired = False


class _Watchdog:
    """One thread for the process, asleep until the earliest deadline of the waits under way."""

    def __init__(self) -> None:
        self._reset()
        # A forked sending process starts afresh: the parent's thread is not there, and its lock
        # may have been held at the moment of the fork.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._changed = threading.Condition()
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None
        self._wakes_at = math.inf  # when the thread next looks

    @contextlib.contextmanager
    def watching(self, fd: int, seconds: float) -> Iterator[_Watch]:
        watch = _Watch(fd, time.monotonic() + seconds)
        with self._changed:
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():  # none yet, or a fork's child
                self._thread = threading.Thread(target=self._run, name="mailmag-db-watchdog", daemon=True)
                self._thread.start()
            elif watch.deadline < self._wakes_at:
                self._changed.notify()
        try:
            yield watch
        finally:
            with self._changed:
                self._watches.discard(watch)

    def overdue(self, seconds: float) -> bool:
        with self._changed:
            oldest = min((w.started for w in self._watches), default=math.inf)
        return time.monotonic() - oldest > seconds

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for watch in [w for w in self._watches if w.deadline <= now]:
                    self._watches.discard(watch)
                    watch.expired = True
                    _shut(watch.fd)
                self._wakes_at = min((w.deadline for w in self._watches), default=math.inf)
                self._changed.wait(None if math.isinf(self._wakes_at) else self._wakes_at - now)


def _shut(fd: int) -> None:
    """End the connection under libpq's feet: its wait wakes and reads the end. Done under the
    watchdog's lock, so the wait cannot have ended and its socket been closed meanwhile."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()  # the descriptor stays libpq's


# The process's one watchdog (like its signal handlers, a thing of the process, not of an engine);
# its thread starts with the first wait that has a deadline.
_WATCHDOG = _Watchdog()
