"""The `sent` result, written as cheaply as the database allows: one prepared UPDATE, its own transaction.

Every accepted message costs one result write before its connection's next message, so
this is the worker's hottest database path. `outbox.mark_sent` through SQLAlchemy Core
costs more in Python (execution context, a BEGIN and a COMMIT) than the database spends on
the row. Here the same statement, outbox.MARK_SENT compiled once for the driver (so the rule
is written in one place), goes straight to the driver on the sending thread's own
connection: in autocommit, one statement is one transaction, durable when it returns
(SQLite: WAL, PostgreSQL: `synchronous_commit` as configured). The guarantee is
mark_sent's: the row changes only while `owner` holds its lease.

A write is two steps, `start` and `finish`, so the dispatcher can let the database work
while it goes on with the next message (dispatch.Unrecorded): on PostgreSQL `start` sends
the prepared statement through libpq without waiting and `finish` waits for its commit
(psycopg's cursor spent ~30 µs of Python a statement converting what libpq takes as
text); SQLite has no such protocol, so there `finish` does the whole write.
"""

from __future__ import annotations

import hashlib
import math
import select
import sqlite3
import typing
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from mailmag import pg_answers
from mailmag.delivery import outbox
from mailmag.models import Delivery


def _sql(dialect: Dialect) -> str:
    """outbox.MARK_SENT, the rule's one statement, in `dialect`'s SQL with positional parameters."""
    compiled = outbox.MARK_SENT.compile(dialect=dialect)
    assert tuple(compiled.positiontup or ()) == outbox.MARK_SENT_PARAMS, compiled.positiontup
    return str(compiled)


def sent_writer(connection: Connection) -> SentWriter:
    """The writer for `connection`'s database."""
    if connection.dialect.name == "postgresql":
        return PostgresWriter(connection)
    return SqliteWriter(connection)


class SentWriter:
    """mark_sent on `connection`'s driver connection, each write committed when `finish` returns.

    `connection` must not be in a transaction and must stay checked out while this is used
    (the dispatcher holds one per sending thread). Driver errors are raised wrapped as
    SQLAlchemy's (OperationalError for a database that is away or locked), as Core would.
    """

    def __init__(self, connection: Connection) -> None:
        dialect = connection.dialect
        # The dialect's own processor, as Core's: on SQLite it writes the text Core writes
        # ('… 21:00:00.000000'); the type's generic one left a datetime to sqlite3's deprecated
        # adapter, which drops a whole second's '.000000' and so sorts apart from Core's text.
        sent_at = Delivery.__table__.c.sent_at.type
        process = sent_at.dialect_impl(dialect).bind_processor(dialect)
        self._time: Callable[[Any], Any] = process or (lambda value: value)
        driver = connection.connection.dbapi_connection
        assert driver is not None
        self._driver: Any = driver
        self._error: type[Exception] = dialect.loaded_dbapi.Error
        self.started: int | None = None  # the delivery whose write is under way
        self._sql = ""
        self._params: tuple[Any, ...] = ()

    def __call__(self, delivery_id: int, owner: str, reply: str, now: Any) -> bool:
        """Sent, if `owner` still holds the lease (False: the row went to another worker, or was gone)."""
        self.start(delivery_id, owner, reply, now)
        return self.finish()

    def start(self, delivery_id: int, owner: str, reply: str, now: Any) -> None:
        """Begin the write; `finish` commits it. A write already started is abandoned."""
        self.started = delivery_id
        # in outbox.MARK_SENT_PARAMS's order
        self._params = (reply[:outbox.REPLY_KEPT], self._time(now), delivery_id, owner)

    def finish(self) -> bool:
        """Wait for the started write; True if the row was written (the lease was held)."""
        raise NotImplementedError

    def _raise(self, exc: Exception) -> typing.NoReturn:
        self.started = None
        raise DBAPIError.instance(self._sql, self._params, exc, self._error) from exc


class SqliteWriter(SentWriter):
    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        # db.make_engine's connections run with the driver's autocommit (isolation_level None).
        self._sql = _sql(connection.dialect)  # pysqlite's own paramstyle: ?
        self._cursor: sqlite3.Cursor = self._driver.cursor()

    def finish(self) -> bool:
        assert self.started is not None, "no write was started"
        try:
            self._cursor.execute(self._sql, self._params)
        except self._error as exc:
            self._raise(exc)
        self.started = None
        return self._cursor.rowcount == 1


class PostgresWriter(SentWriter):
    """The statement is prepared once per connection and run through libpq (psycopg.pq), its
    parameters as text; psycopg's own connection stays idle in autocommit around it."""

    def __init__(self, connection: Connection) -> None:
        # The result is one UPDATE: in autocommit it is its own transaction, durable when it is
        # finished, in one round trip instead of three (BEGIN, UPDATE, COMMIT).
        connection.execution_options(isolation_level="AUTOCOMMIT")
        super().__init__(connection)
        from psycopg import pq

        self._pq = pq
        self._pgconn = self._driver.pgconn
        self._readable = select.poll()  # not select.select: a busy process has sockets past 1023
        self._readable.register(self._pgconn.socket, select.POLLIN)
        # A server that stops answering is given up on, as in every other wait (pg_answers).
        self._answer_timeout: float = getattr(self._driver, "answer_timeout", math.inf)
        numbered: Any = type(connection.dialect)  # the same dialect with libpq's $1 … $4
        self._sql = _sql(numbered(paramstyle="numeric_dollar"))
        # named after its text: a connection that meets a changed statement prepares it anew
        self._name = b"mailmag_sent_" + hashlib.sha1(self._sql.encode()).hexdigest()[:12].encode()
        try:
            self._pgconn.send_prepare(self._name, self._sql.encode())
            self._result(duplicate_ok=True)
        except self._error as exc:
            self._raise(exc)

    def start(self, delivery_id: int, owner: str, reply: str, now: Any) -> None:
        super().start(delivery_id, owner, reply, now)
        text = [str(value).encode() for value in self._params]  # libpq's text format, as PostgreSQL reads it
        try:
            self._pgconn.send_query_prepared(self._name, text)
            while self._pgconn.flush():  # the connection is non-blocking (psycopg's own setting)
                writable = select.poll()
                writable.register(self._pgconn.socket, select.POLLOUT)
                self._await(writable)
        except self._error as exc:
            self._raise(exc)

    def finish(self) -> bool:
        assert self.started is not None, "no write was started"
        try:
            rows = self._result()
        except self._error as exc:
            self._raise(exc)
        self.started = None
        return rows == 1

    def _result(self, duplicate_ok: bool = False) -> int:
        """Wait for the statement's result (poll releases the GIL); its row count."""
        pgconn, pq = self._pgconn, self._pq
        pgconn.consume_input()
        while pgconn.is_busy():
            self._await(self._readable)
            pgconn.consume_input()
        rows, error = 0, None
        result = pgconn.get_result()
        while result is not None:  # read to the end, so the connection is ready for the next
            if result.status == pq.ExecStatus.COMMAND_OK:
                rows = int(result.command_tuples or 0)
            else:
                state = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
                if not (duplicate_ok and state == "42P05"):  # duplicate_prepared_statement: ours
                    error = error or _error(state, result.error_message or pgconn.error_message)
            result = pgconn.get_result()
        if error is not None:
            raise error
        return rows

    def _await(self, ready: select.poll) -> None:
        """Wait until the socket is ready; a server silent past its answer timeout loses the connection."""
        limit = self._answer_timeout
        if not ready.poll(None if math.isinf(limit) else limit * 1000):
            self._pgconn.finish()  # its state is unknown: it cannot be used again
            raise pg_answers.no_answer(limit)


def _error(state: str, message: bytes) -> Exception:
    """psycopg's exception for a failed statement's SQLSTATE, as its cursor raises it."""
    import psycopg

    text = message.decode("utf-8", "replace").strip()
    try:
        return psycopg.errors.lookup(state)(text)
    except KeyError:  # no SQLSTATE: libpq lost the connection
        return psycopg.OperationalError(text)
