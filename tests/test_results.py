"""The worker's `sent` write (mailmag.delivery.results): mark_sent's rule, one statement, at once."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from test_outbox import add_subscribers, make_issue

from mailmag.content import transitions
from mailmag.delivery import outbox
from mailmag.delivery.results import sent_writer
from mailmag.models import Delivery, Issue, utcnow


def _claimed(services, owner: str, n: int = 2, lease: int = 300):  # type: ignore[no-untyped-def]
    with services.session() as session:
        add_subscribers(session, n)
        transitions.start_sending(session, make_issue(session), "example.jp", "ja")
    now = utcnow()
    with services.session() as session:
        return outbox.claim(session, owner, n, now, lease), now


def test_sent_is_written_and_committed_only_while_the_lease_is_held(services):  # type: ignore[no-untyped-def]
    (mine, other), now = _claimed(services, "a")
    sent_at = now + dt.timedelta(seconds=1, microseconds=250)
    with services.engine.connect() as connection:
        write = sent_writer(connection)
        assert write(other.id, "b", "250 ok", sent_at) is False  # not the lease holder
        assert write(mine.id, "a", "250 2.0.0 queued " + "x" * 600, sent_at) is True
        assert write(mine.id, "a", "250 again", sent_at) is False  # already final
        with services.session() as session:  # another connection sees it before this one is closed
            row = session.get(Delivery, mine.id)
            untouched = session.get(Delivery, other.id)
            assert (row.status, row.lease_owner, row.lease_expires_at) == ("sent", None, None)
            assert row.sent_at == sent_at and row.last_reply.startswith("250 2.0.0 queued")
            assert len(row.last_reply) == 500
            assert (untouched.status, untouched.lease_owner) == ("sending", "a")


def test_a_row_taken_over_by_another_worker_is_not_written(services):  # type: ignore[no-untyped-def]
    ((mine,), now) = _claimed(services, "a", n=1, lease=1)
    later = now + dt.timedelta(seconds=5)
    with services.session() as session:
        outbox.expire_leases(session, later, max_expiries=3, max_copies=3)
        outbox.claim(session, "b", 1, later, 300)
    with services.engine.connect() as connection:
        write = sent_writer(connection)
        assert write(mine.id, "a", "250 ok", later) is False
        assert write(mine.id, "b", "250 ok", later) is True
    with services.session() as session:
        assert session.scalar(select(Delivery.status)) == "sent"


def _database_away(services, connection):  # type: ignore[no-untyped-def]
    """The writer's database gone: its PostgreSQL backend ended, or another writer holding SQLite's lock."""
    if connection.dialect.name == "postgresql":
        pid = connection.connection.dbapi_connection.info.backend_pid
        with services.engine.connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        return contextlib.nullcontext()
    connection.connection.dbapi_connection.execute("PRAGMA busy_timeout = 0")
    other = sqlite3.connect(services.engine.url.database, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return contextlib.closing(other)


def test_a_database_away_during_the_write_raises_sqlalchemys_error_and_writes_nothing(services):  # type: ignore[no-untyped-def]
    """What the dispatcher waits out (workstate.DATABASE_AWAY); a fresh writer then writes the row."""
    (mine, _), now = _claimed(services, "a")
    with services.engine.connect() as connection:
        write = sent_writer(connection)
        with _database_away(services, connection), pytest.raises(OperationalError):
            write(mine.id, "a", "250 ok", now)
        connection.invalidate()
    with services.session() as session:
        assert session.get(Delivery, mine.id).status == "sending"
    with services.engine.connect() as connection:
        assert sent_writer(connection)(mine.id, "a", "250 ok", now) is True
    with services.session() as session:
        assert session.get(Delivery, mine.id).status == "sent"


def test_a_write_started_is_committed_only_when_finished(services):  # type: ignore[no-untyped-def]
    """start() lets PostgreSQL work while the worker goes on; the result is known at finish()."""
    (mine, other), now = _claimed(services, "a")
    with services.engine.connect() as connection:
        write = sent_writer(connection)
        write.start(mine.id, "a", "250 ok", now)
        assert write.started == mine.id
        assert write.finish() is True
        write.start(other.id, "b", "250 ok", now)  # not the lease holder
        assert write.finish() is False
        assert write.started is None
    with services.session() as session:
        assert [session.get(Delivery, d.id).status for d in (mine, other)] == ["sent", "sending"]


def test_a_message_on_the_wire_when_its_issue_was_cancelled_is_recorded_as_sent(services):  # type: ignore[no-untyped-def]
    (mine, _), now = _claimed(services, "a")
    with services.session() as session:
        transitions.cancel_issue(session, session.get(Issue, mine.issue_id))
    with services.engine.connect() as connection:
        assert sent_writer(connection)(mine.id, "a", "250 ok", now) is True
    with services.session() as session:
        assert session.get(Delivery, mine.id).status == "sent"


def test_a_result_written_on_a_whole_second_counts_toward_the_hourly_limit(services):  # type: ignore[no-untyped-def]
    """A restarted worker primes its hourly limit with what was sent since an hour ago; a
    result written at 21:00:00.000000 must compare as that moment, as Core's rows do (on
    SQLite the text once lacked '.000000' and sorted before it: the message went uncounted)."""
    (mine, _), _now = _claimed(services, "a")
    whole_second = dt.datetime(2027, 4, 1, 21, 0, 0, tzinfo=dt.UTC)
    with services.engine.connect() as connection:
        assert sent_writer(connection)(mine.id, "a", "250 ok", whole_second) is True
    with services.session() as session:
        assert outbox.sent_since(session, whole_second, 10) == [whole_second]
        assert session.get(Delivery, mine.id).sent_at == whole_second
