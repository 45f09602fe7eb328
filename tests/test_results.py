"""The worker's `sent` write (mailmag.delivery.results): mark_sent's rule, one statement, at once."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from test_outbox import add_subscribers, make_issue

from mailmag.content import transitions
from mailmag.delivery import outbox
from mailmag.delivery.results import SentWriter
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
        write = SentWriter(connection)
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
        outbox.expire_leases(session, later, max_expiries=3)
        outbox.claim(session, "b", 1, later, 300)
    with services.engine.connect() as connection:
        write = SentWriter(connection)
        assert write(mine.id, "a", "250 ok", later) is False
        assert write(mine.id, "b", "250 ok", later) is True
    with services.session() as session:
        assert session.scalar(select(Delivery.status)) == "sent"


def test_a_database_error_is_raised_as_sqlalchemys(services):  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import DBAPIError

    with services.engine.connect() as connection:
        write = SentWriter(connection)
        write._sql = write._sql.replace("deliveries", "no_such_table")  # the driver's own error
        with pytest.raises(DBAPIError):
            write(1, "a", "250 ok", utcnow())


def test_a_message_on_the_wire_when_its_issue_was_cancelled_is_recorded_as_sent(services):  # type: ignore[no-untyped-def]
    (mine, _), now = _claimed(services, "a")
    with services.session() as session:
        transitions.cancel_issue(session, session.get(Issue, mine.issue_id))
    with services.engine.connect() as connection:
        assert SentWriter(connection)(mine.id, "a", "250 ok", now) is True
    with services.session() as session:
        assert session.get(Delivery, mine.id).status == "sent"


def test_a_result_written_on_a_whole_second_counts_toward_the_hourly_limit(services):  # type: ignore[no-untyped-def]
    """A restarted worker primes its hourly limit with what was sent since an hour ago; a
    result written at 21:00:00.000000 must compare as that moment, as Core's rows do (on
    SQLite the text once lacked '.000000' and sorted before it: the message went uncounted)."""
    (mine, _), _now = _claimed(services, "a")
    whole_second = dt.datetime(2027, 4, 1, 21, 0, 0, tzinfo=dt.UTC)
    with services.engine.connect() as connection:
        assert SentWriter(connection)(mine.id, "a", "250 ok", whole_second) is True
    with services.session() as session:
        assert outbox.sent_since(session, whole_second) == 1
        assert session.get(Delivery, mine.id).sent_at == whole_second
