"""A delivery that may have reached the relay twice keeps its mark whatever happens next.

Operators count possible duplicates as last_reply LIKE 'ambiguous%': giving up at the end of
the lifetime, a later permanent refusal, a dead worker and `issues retry --dead` must not hide it.
"""

from __future__ import annotations

import datetime as dt
import json

import time_machine
from sqlalchemy import select

from mailmag.delivery import outbox
from mailmag.models import Delivery


def _env(server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"MAILMAG_SMTP_TRANSPORT": "smtp", "MAILMAG_SMTP_HOST": server.host,
            "MAILMAG_SMTP_PORT": str(server.port), "MAILMAG_SMTP_SECURITY": "none",
            "MAILMAG_SMTP_RATE_PER_SECOND": "0", "MAILMAG_SMTP_MAX_CONNECTIONS": "1",
            "MAILMAG_RETRY_BACKOFF_SECONDS": "60", "MAILMAG_RETRY_LIFETIME_SECONDS": "3600"}


def _queued_issue(mailmag, others: int = 0) -> int:  # type: ignore[no-untyped-def]
    mailmag.ok("subscribers", "add", "only@example.jp")
    for n in range(others):
        mailmag.ok("subscribers", "add", f"other{n}@example.jp")
    mailmag.ok("orgs", "add", "cef", "中経連")
    item = json.loads(mailmag.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "お知らせ",
                                 "--body", "本文", "--json").stdout)["id"]
    mailmag.ok("items", "approve", str(item))
    issue = json.loads(mailmag.ok("issues", "new", "--json").stdout)["id"]
    mailmag.ok("issues", "send", str(issue), "--yes")
    return int(issue)


def _last_reply(services) -> str:  # type: ignore[no-untyped-def]
    with services.session() as session:
        return session.scalars(select(Delivery.last_reply)).one()


def _ambiguous_then(mailmag, smtp_server, later) -> None:  # type: ignore[no-untyped-def]
    _queued_issue(mailmag)
    smtp_server.drop("after_data")
    mailmag.ok("worker", "--once", env=_env(smtp_server))
    later(smtp_server)
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2), tick=True):
        mailmag.ok("worker", "--once", env=_env(smtp_server))


def test_giving_up_after_an_ambiguous_drop_keeps_the_mark(mailmag, smtp_server, services) -> None:  # type: ignore[no-untyped-def]
    _ambiguous_then(mailmag, smtp_server, lambda server: server.drop("after_data"))
    reply = _last_reply(services)
    assert reply.startswith(outbox.AMBIGUOUS) and "gave up" in reply


def test_a_refusal_after_an_ambiguous_drop_keeps_the_mark(mailmag, smtp_server, services) -> None:  # type: ignore[no-untyped-def]
    _ambiguous_then(mailmag, smtp_server,
                    lambda server: server.fail_rcpt("only@example.jp", 550, "5.1.1 no such user"))
    reply = _last_reply(services)
    assert reply.startswith(outbox.AMBIGUOUS) and "5.1.1" in reply


def test_a_dead_delivery_requeued_by_an_operator_stays_marked(mailmag, services) -> None:  # type: ignore[no-untyped-def]
    issue = _queued_issue(mailmag)
    now = dt.datetime.now(dt.UTC)
    with services.session() as session:
        session.execute(Delivery.__table__.update().values(  # a worker died while sending it, again
            status="sending", lease_owner="gone", lease_expires_at=now - dt.timedelta(seconds=1),
            lease_expiries=2))
        outbox.expire_leases(session, now, max_expiries=3, max_copies=3)
        session.commit()
    assert _last_reply(services).startswith(outbox.AMBIGUOUS)
    mailmag.ok("issues", "retry", str(issue), "--dead")
    assert _last_reply(services).startswith(outbox.AMBIGUOUS)


def test_issues_status_counts_the_deliveries_that_may_have_arrived_twice(mailmag, smtp_server) -> None:  # type: ignore[no-untyped-def]
    issue = _queued_issue(mailmag)
    smtp_server.drop("after_data")
    mailmag.ok("worker", "--once", env=_env(smtp_server))
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5), tick=True):
        mailmag.ok("worker", "--once", env=_env(smtp_server))  # the second copy is accepted
        document = json.loads(mailmag.ok("issues", "status", str(issue), "--json").stdout)
        assert (document["sent"], document["ambiguous"]) == (1, 1)
        assert "may have arrived more than once: 1" in mailmag.ok("issues", "status", str(issue)).stdout


def test_a_run_stopped_by_content_refusals_says_why_in_issues_status(mailmag, smtp_server) -> None:  # type: ignore[no-untyped-def]
    # `mailmag run` keeps retrying such a run; before, only its log told why nothing went out
    issue = _queued_issue(mailmag, others=4)  # [dispatch] refusals_to_stop = 5
    smtp_server.fail_next("data_end", 554, "5.6.0 content rejected", times=None)
    assert mailmag("worker", "--once", env=_env(smtp_server)).exit_code != 0
    document = json.loads(mailmag.ok("issues", "status", str(issue), "--json").stdout)
    assert (document["failed"], "5.6.0" in (document["relay_error"] or "")) == (0, True)
    smtp_server.clear_faults()
    mailmag.ok("worker", "--once", env=_env(smtp_server))
    document = json.loads(mailmag.ok("issues", "status", str(issue), "--json").stdout)
    assert (document["relay_error"], document["pending"]) == (None, 0)


def test_a_relay_that_drops_every_message_after_the_dot_stops_the_run(mailmag, smtp_server) -> None:  # type: ignore[no-untyped-def]
    # it may keep each one: going on would send the whole list, and again at every retry
    issue = _queued_issue(mailmag, others=5)  # 6 messages; [dispatch] refusals_to_stop = 5
    smtp_server.drop("after_data", times=None)
    result = mailmag("worker", "--once", env=_env(smtp_server))
    assert result.exit_code != 0 and "final dot 5 times in a row" in result.output + result.stderr
    assert len(smtp_server.messages) == 5
    document = json.loads(mailmag.ok("issues", "status", str(issue), "--json").stdout)
    assert (document["pending"], document["ambiguous"], document["failed"]) == (6, 5, 0)
    assert "final dot" in (document["relay_error"] or "")


def test_a_message_the_relay_keeps_dropping_after_the_dot_stops_at_the_attempts_cap(
        mailmag, smtp_server, services) -> None:  # type: ignore[no-untyped-def]
    """The relay keeps each message it drops after the final dot: every retry is a copy in the
    subscriber's mailbox. [retry] ambiguous_max_attempts bounds the copies; the row fails, marked."""
    _queued_issue(mailmag)
    smtp_server.drop("after_data", times=None)
    env = {**_env(smtp_server), "MAILMAG_RETRY_LIFETIME_SECONDS": "864000",
           "MAILMAG_RETRY_AMBIGUOUS_MAX_ATTEMPTS": "3"}
    start = dt.datetime.now(dt.UTC)
    for hours in range(0, 12, 2):  # six runs, each past the previous retry's backoff
        with time_machine.travel(start + dt.timedelta(hours=hours), tick=True):
            mailmag.ok("worker", "--once", env=env)
    assert smtp_server.recipients() == ["only@example.jp"] * 3
    with services.session() as session:
        row = session.scalars(select(Delivery)).one()
        assert (row.status, row.attempts) == ("failed", 3)
        assert row.last_reply.startswith(outbox.AMBIGUOUS) and "gave up" in row.last_reply
