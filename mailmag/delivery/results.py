"""The `sent` result, written as cheaply as the database allows: one prepared UPDATE, its own transaction.

Every accepted message costs one result write before its connection's next message, so
this is the worker's hottest database path. `outbox.mark_sent` through SQLAlchemy Core
costs more in Python (execution context, the expanding IN, a BEGIN and a COMMIT) than the
database spends on the row. Here the same statement goes straight to the driver on the
sending thread's own connection: in autocommit, one statement is one transaction, durable
when it returns (SQLite: WAL, PostgreSQL: `synchronous_commit` as configured); psycopg
prepares it on the server after a few executions. The guarantee is mark_sent's: the row
changes only while `owner` holds its lease.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.exc import DBAPIError

from mailmag.delivery import outbox
from mailmag.models import Delivery

_DELIVERIES = typing.cast(Table, Delivery.__table__)


def _sql(paramstyle: str) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    c = _DELIVERIES.c
    statuses = ", ".join(f"'{status}'" for status in outbox.SENT_FROM)  # the rule of outbox.mark_sent
    return (f"UPDATE {_DELIVERIES.name} SET {c.status.name} = 'sent', {c.last_reply.name} = {mark}, "
            f"{c.sent_at.name} = {mark}, {c.lease_owner.name} = NULL, {c.lease_expires_at.name} = NULL "
            f"WHERE {c.id.name} = {mark} AND {c.status.name} IN ({statuses}) "
            f"AND {c.lease_owner.name} = {mark}")


class SentWriter:
    """mark_sent on `connection`'s driver connection, each call committed when it returns.

    `connection` must not be in a transaction and must stay checked out while this is used
    (the dispatcher holds one per sending thread). Driver errors are raised wrapped as
    SQLAlchemy's (OperationalError for a database that is away or locked), as Core would.
    """

    def __init__(self, connection: Connection) -> None:
        dialect = connection.dialect
        if dialect.name == "postgresql":
            connection.execution_options(isolation_level="AUTOCOMMIT")
        # SQLite: db.make_engine's connections run with the driver's autocommit (isolation_level None).
        self._sql = _sql(dialect.paramstyle)
        # The dialect's own processor, as Core's: on SQLite it writes the text Core writes
        # ('… 21:00:00.000000'); the type's generic one left a datetime to sqlite3's deprecated
        # adapter, which drops a whole second's '.000000' and so sorts apart from Core's text.
        sent_at = _DELIVERIES.c.sent_at.type
        process = sent_at.dialect_impl(dialect).bind_processor(dialect)
        self._time: Callable[[Any], Any] = process or (lambda value: value)
        driver = connection.connection.dbapi_connection
        assert driver is not None
        self._cursor = driver.cursor()
        self._error: type[Exception] = dialect.loaded_dbapi.Error

    def __call__(self, delivery_id: int, owner: str, reply: str, now: Any) -> bool:
        """Sent, if `owner` still holds the lease (False: the row went to another worker, or was gone)."""
        params = (reply[:500], self._time(now), delivery_id, owner)
        try:
            self._cursor.execute(self._sql, params)
        except self._error as exc:
            raise DBAPIError.instance(self._sql, params, exc, self._error) from exc
        return self._cursor.rowcount == 1
