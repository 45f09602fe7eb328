"""The outbox on SQLite and PostgreSQL: frozen audience, claims, leases, results, counts."""

from __future__ import annotations

import datetime as dt
import json
import threading
import typing

import pytest
from sqlalchemy import func, select

from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.content import transitions
from mailmag.delivery import outbox
from mailmag.errors import StateError
from mailmag.models import Delivery, Issue, Rendering, Subscriber, utcnow
from mailmag.scheduling import sending

CLI = Consent("cli", "test")


def make_issue(session, number: int = 1, langs=("ja",), topic=None) -> Issue:  # type: ignore[no-untyped-def]
    issue = Issue(number=number, title=f"第{number}号", topic=topic)
    session.add(issue)
    session.flush()
    for lang in langs:
        session.add(Rendering(issue_id=issue.id, lang=lang, subject=f"第{number}号", html="<p>x</p>",
                              text="x"))
    session.flush()
    session.refresh(issue)
    return issue


def add_subscribers(session, n: int, **fields) -> list[Subscriber]:  # type: ignore[no-untyped-def]
    added = []
    start = session.scalar(select(func.count()).select_from(Subscriber))
    for i in range(start, start + n):
        address = subscribers.parse_address(f"user{i}@example.jp")
        _, subscriber = subscribers.add(session, address, CLI, **fields)
        added.append(subscriber)
    session.flush()
    return added


def test_send_freezes_the_audience_once(session):
    add_subscribers(session, 5)
    issue = make_issue(session)
    assert transitions.start_sending(session, issue, "example.jp", "ja") == 5
    # A second enqueue adds nothing: the (issue, subscriber) pair is unique.
    assert outbox.enqueue(session, issue, "example.jp", "ja") == 0
    ids = session.scalars(select(Delivery.message_id)).all()
    assert len(ids) == len(set(ids)) == 5
    assert all(mid.startswith("<mm.1.") and mid.endswith("@example.jp>") for mid in ids)
    with pytest.raises(StateError, match="issue 1 is sending; only a draft or scheduled issue can be sent"):
        transitions.start_sending(session, issue, "example.jp", "ja")


def test_audience_is_active_subscribers_matching_topic_and_language(session):
    everyone, events_only, news_only = add_subscribers(session, 3)
    events_only.topics, news_only.topics = ["events"], ["news"]
    english = add_subscribers(session, 1, lang="en")[0]
    gone = add_subscribers(session, 1)[0]
    subscribers.unsubscribe(session, gone, CLI)
    session.flush()
    issue = make_issue(session, topic="events", langs=("ja", "en"))
    transitions.start_sending(session, issue, "example.jp", "ja")
    rows = {d.subscriber_id: d.lang for d in session.scalars(select(Delivery))}
    assert rows == {everyone.id: "ja", events_only.id: "ja", english.id: "en"}


def test_language_without_rendering_falls_back_to_default(session):
    english = add_subscribers(session, 1, lang="en")[0]
    issue = make_issue(session, langs=("ja",))
    transitions.start_sending(session, issue, "example.jp", "ja")
    assert session.scalar(select(Delivery.lang).where(Delivery.subscriber_id == english.id)) == "ja"


def test_claim_leases_each_row_to_one_owner(session):
    add_subscribers(session, 5)
    transitions.start_sending(session, make_issue(session), "example.jp", "ja")
    now = utcnow()
    first = outbox.claim(session, "a", 3, now, 300)
    second = outbox.claim(session, "b", 3, now, 300)
    assert len(first) == 3 and len(second) == 2
    assert not {c.id for c in first} & {c.id for c in second}
    assert outbox.claim(session, "c", 3, now, 300) == []
    assert outbox.counts(session, first[0].issue_id).sending == 5


def test_claim_cancels_rows_of_subscribers_no_longer_active(session):
    subs = add_subscribers(session, 2)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    subs[0].status = "bounced"  # e.g. a bounce processed while the send runs
    session.flush()
    claimed = outbox.claim(session, "a", 10, utcnow(), 300)
    assert [c.subscriber_id for c in claimed] == [subs[1].id]
    assert outbox.counts(session, issue.id).cancelled == 1


def test_unsubscribe_cancels_queued_deliveries_at_once(session):
    subs = add_subscribers(session, 2)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    subscribers.unsubscribe(session, subs[0], Consent("one-click"))
    counts = outbox.counts(session, issue.id)
    assert (counts.queued, counts.cancelled) == (1, 1)


def test_result_written_only_while_holding_the_lease(session):
    add_subscribers(session, 1)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    now = utcnow()
    (mine,) = outbox.claim(session, "a", 1, now, 1)
    # The lease expires; another worker takes the row over.
    later = now + dt.timedelta(seconds=5)
    outbox.expire_leases(session, later, max_expiries=3, max_copies=3)
    (theirs,) = outbox.claim(session, "b", 1, later, 300)
    assert theirs.id == mine.id
    assert outbox.mark_sent(session, mine.id, "a", "250 ok", later) is False
    assert outbox.mark_sent(session, mine.id, "b", "250 ok", later) is True
    row = session.get(Delivery, mine.id)
    assert (row.status, row.attempts, row.lease_expiries) == ("sent", 2, 1)


def test_an_expired_claim_charges_and_marks_only_the_row_that_may_have_gone(session):
    """A worker died holding three rows: the first may have been on the wire (an attempt, an
    expiry, marked ambiguous); the other two never went: queued as they were before the claim,
    so `attempts` counts sends (ambiguous_max_attempts reads it), not claims."""
    add_subscribers(session, 3)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    now = utcnow()
    claimed = outbox.claim(session, "a", 3, now, 1)
    assert outbox.expire_leases(session, now + dt.timedelta(seconds=5), max_expiries=3, max_copies=3) == 3
    rows = [session.get(Delivery, d.id) for d in claimed]
    assert [(r.status, r.attempts, r.lease_expiries) for r in rows] == [("queued", 1, 1), ("queued", 0, 0),
                                                                       ("queued", 0, 0)]
    # helper-97: the possible copy counts toward [retry] ambiguous_max_attempts too
    assert [r.maybe_copies for r in rows] == [1, 0, 0]
    assert rows[0].last_reply.startswith("ambiguous: ") and rows[1].last_reply == rows[2].last_reply == ""


def test_a_row_whose_worker_died_as_often_as_the_copies_cap_allows_is_given_up(session):
    """helper-99: with ambiguous_max_attempts 2, a row whose workers were killed sending it went a
    third time: only max_lease_expiries stopped it."""
    add_subscribers(session, 1)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    now = utcnow()
    for n in range(2):
        at = now + dt.timedelta(minutes=n)
        [claimed] = outbox.claim(session, "a", 1, at, 1)
        outbox.expire_leases(session, at + dt.timedelta(seconds=5), max_expiries=5, max_copies=2)
    row = session.get(Delivery, claimed.id)
    assert (row.status, row.maybe_copies, row.lease_expiries) == ("dead", 2, 2)
    assert "ambiguous_max_attempts" in row.last_reply
    assert outbox.claim(session, "a", 1, now + dt.timedelta(minutes=5), 1) == []


def test_a_late_result_is_recorded_only_while_no_worker_holds_the_row(session):
    """A message accepted after its lease passed: sent if the row went back to the queue
    unclaimed; not if another worker claimed it meanwhile (that one may send it)."""
    add_subscribers(session, 2)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    now = utcnow()
    claimed = outbox.claim(session, "a", 2, now, 1)
    later = now + dt.timedelta(seconds=5)
    outbox.expire_leases(session, later, max_expiries=3, max_copies=3)
    (theirs,) = outbox.claim(session, "b", 1, later, 300)  # takes one of the rows over
    first, second = sorted(claimed, key=lambda d: d.id != theirs.id)
    assert outbox.mark_sent_unclaimed(session, first.id, "250 ok", later) is False
    assert outbox.mark_sent_unclaimed(session, second.id, "250 ok", later) is True
    rows = [session.get(Delivery, d.id) for d in (first, second)]
    assert [(r.status, r.lease_owner) for r in rows] == [("sending", "b"), ("sent", None)]
    assert rows[1].sent_at == later


def test_too_many_expired_leases_make_a_row_dead(session):
    add_subscribers(session, 1)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    now = utcnow()
    for i in range(3):
        assert len(outbox.claim(session, f"w{i}", 1, now, 1)) == 1
        now += dt.timedelta(seconds=2)
        outbox.expire_leases(session, now, max_expiries=3, max_copies=3)
    counts = outbox.counts(session, issue.id)
    assert (counts.dead, counts.queued, counts.sending) == (1, 0, 0)
    assert "worker died" in session.scalar(select(Delivery.last_reply))


def test_issue_completes_when_every_row_is_final(session):
    add_subscribers(session, 2)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    now = utcnow()
    a, b = outbox.claim(session, "w", 2, now, 300)
    outbox.mark_sent(session, a.id, "w", "250 ok", now)
    assert transitions.complete_issues(session) == []
    outbox.mark_failed(session, b.id, "w", "550 no such user")
    assert transitions.complete_issues(session) == [1]
    assert issue.status == "sent"
    counts = outbox.counts(session, issue.id)
    assert (counts.total, counts.sent, counts.failed, counts.pending) == (2, 1, 1, 0)


def test_retry_waits_and_release_does_not_count_an_attempt(session):
    add_subscribers(session, 2)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    now = utcnow()
    a, b = outbox.claim(session, "w", 2, now, 300)
    outbox.mark_retry(session, a.id, "w", "451 try later", now + dt.timedelta(minutes=5), now)
    outbox.release(session, b.id, "w")
    [again] = outbox.claim(session, "w", 5, now, 300)
    assert (again.id, again.retrying_since) == (b.id, None)  # released: not being retried
    assert session.get(Delivery, b.id).attempts == 1
    [retried] = outbox.claim(session, "w", 5, now + dt.timedelta(minutes=6), 300)
    assert (retried.id, retried.retrying_since) == (a.id, now)  # the lifetime counts from here


def test_an_opt_out_taken_back_gives_each_row_back_to_whoever_had_it(session):
    """restore_for_subscriber: a row a worker still holds goes back to that worker (it may be on
    the wire: its result is recorded as any; if not, the worker sends it); one the worker let go
    of, or never claimed, is queued again; a stopped issue stays stopped."""
    [reader] = add_subscribers(session, 1)
    held, dropped, queued, stopped = (make_issue(session, number) for number in (1, 2, 3, 4))
    for issue in (held, dropped, queued, stopped):
        transitions.start_sending(session, issue, "example.jp", "ja")
    claimed = outbox.claim(session, "w", 2, utcnow(), 300)
    assert [c.issue_id for c in claimed] == [held.id, dropped.id]
    assert outbox.cancel_for_subscriber(session, reader.id) == 4
    assert outbox.let_go(session, claimed[1].id, "w")  # the worker saw it cancelled, and moved on
    assert not outbox.let_go(session, claimed[1].id, "w")
    transitions.cancel_issue(session, stopped)
    assert outbox.restore_for_subscriber(session, reader.id, utcnow()) == {held.id, dropped.id, queued.id}
    rows = session.execute(select(Delivery.issue_id, Delivery.status, Delivery.lease_owner)
                           .order_by(Delivery.issue_id)).all()
    assert [tuple(r) for r in rows] == [(held.id, "sending", "w"), (dropped.id, "queued", None),
                                        (queued.id, "queued", None), (stopped.id, "cancelled", None)]
    assert outbox.held(session, [claimed[0].id], "w") == {claimed[0].id}


def test_an_opt_out_taken_back_catches_up_with_issues_started_while_the_reader_was_out(session):
    """catch_up: an issue whose audience was frozen after the opt-out goes to the reader who came
    back, being sent or sent meanwhile, if its topic is theirs; not one started before they left
    (its row, if any, is restore_for_subscriber's), nor a cancelled one; never twice."""
    [reader] = add_subscribers(session, 1, topics=["news"])
    add_subscribers(session, 1)
    left = utcnow()
    reader.status = "unsubscribed"
    issues = {name: make_issue(session, number, topic=topic) for number, (name, topic) in enumerate(
        [("before", None), ("news", "news"), ("events", "events"), ("stopped", None), ("sent", None)], 1)}
    for issue in issues.values():
        transitions.start_sending(session, issue, "example.jp", "ja")
    issues["before"].sent_at = left - dt.timedelta(minutes=1)
    transitions.cancel_issue(session, issues["stopped"])
    issues["sent"].status = "sent"
    reader.status = "active"
    caught_up = outbox.catch_up(session, reader.id, left, "example.jp", "ja")
    assert caught_up == {issues["news"].id, issues["sent"].id}
    assert outbox.catch_up(session, reader.id, left, "example.jp", "ja") == set()
    rows = session.execute(select(Delivery.issue_id, Delivery.status, Delivery.message_id)
                           .where(Delivery.subscriber_id == reader.id).order_by(Delivery.issue_id)).all()
    assert [(issue_id, status) for issue_id, status, _ in rows] == [
        (issues["news"].id, "queued"), (issues["sent"].id, "queued")]
    assert all(message_id.endswith("@example.jp>") for _, _, message_id in rows)
    assert outbox.caught_up_count(session, issues["news"].id) == 1  # `issues status` says so
    assert outbox.caught_up_count(session, issues["before"].id) == 0


def _out(session, reader: Subscriber) -> None:  # type: ignore[no-untyped-def]
    assert subscribers.unsubscribe(session, reader, Consent("web"))


def _replies(session, reader: Subscriber) -> list[tuple[str, str, str | None]]:  # type: ignore[no-untyped-def]
    return [tuple(r) for r in session.execute(  # type: ignore[misc]
        select(Delivery.status, Delivery.last_reply, Delivery.lease_owner)
        .where(Delivery.subscriber_id == reader.id).order_by(Delivery.issue_id))]


def test_an_undo_brings_back_only_what_the_latest_opt_out_stopped(session):
    """helper-60: an issue an earlier opt-out stopped (the reader came back by a new opt-in since)
    was sent to them when they took back a later opt-out, months after."""
    [reader] = add_subscribers(session, 1)
    old = make_issue(session, 1)
    transitions.start_sending(session, old, "example.jp", "ja")
    _out(session, reader)
    old.status = "sent"
    subscribers.add(session, subscribers.parse_address(reader.email), Consent("cli"), resubscribe=True)
    _out(session, reader)
    assert outbox.restore_for_subscriber(session, reader.id, utcnow()) == set()
    assert _replies(session, reader) == [("cancelled", outbox.OPTED_OUT_BEFORE, None)]


def test_rows_an_opt_out_stopped_under_a_worker_are_let_go_so_an_undo_queues_them(session):
    """helper-60: a worker that stopped cleanly (or hit a refusal) kept the lease of rows cancelled
    under it, so an undo gave them back to a worker that was gone: they went only when the lease
    passed, counted as maybe sent twice. A row that may have reached the relay (a drop after the
    final dot) goes again marked so."""
    [reader] = add_subscribers(session, 1)
    for number in (1, 2):
        transitions.start_sending(session, make_issue(session, number), "example.jp", "ja")
    stopped, dropped = outbox.claim(session, "w", 2, utcnow(), 300)
    _out(session, reader)
    assert outbox.release(session, stopped.id, "w")  # the clean stop's hand-back
    assert outbox.let_go(session, dropped.id, "w", maybe_sent=utcnow())
    assert len(outbox.restore_for_subscriber(session, reader.id, utcnow())) == 2
    [(first, reply1, owner1), (second, reply2, owner2)] = _replies(session, reader)
    assert (first, reply1, owner1) == ("queued", "", None)
    assert (second, owner2) == ("queued", None) and reply2.startswith(outbox.AMBIGUOUS)


def test_a_row_the_claim_finds_opted_out_is_brought_back_by_the_undo(session):
    """helper-60 (PostgreSQL): an opt-out while `issues send` was freezing the audience cancelled
    nothing (the rows were not committed yet); the claim then cancelled the reader's row, but
    not as an opt-out's, so taking the opt-out back never brought the issue."""
    [reader] = add_subscribers(session, 1)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    reader.status = "unsubscribed"  # as unsubscribe leaves it, its cancel having found no row
    assert outbox.claim(session, "w", 5, utcnow(), 300) == []
    assert _replies(session, reader) == [("cancelled", outbox.OPTED_OUT, None)]
    reader.status = "active"
    assert outbox.restore_for_subscriber(session, reader.id, utcnow()) == {issue.id}


def test_an_undo_while_a_send_freezes_its_audience_catches_up_with_it(services):
    """helper-60 (PostgreSQL): the reader took back their opt-out while `issues send` was freezing
    the audience: the send's snapshot saw them out, and the undo's catch-up did not see the send
    yet, so the issue never went to them. The undo now waits for the send to commit."""
    with services.session() as session:
        [reader] = add_subscribers(session, 2)[:1]
        issue_id = make_issue(session).id
        reader_id = reader.id
        _out(session, reader)
    undone = threading.Event()

    def undo() -> None:
        with services.session() as session:
            back = session.get(Subscriber, reader_id)
            assert sending.take_back_unsubscribe(session, services.config, back, Consent("web"))
        undone.set()

    with services.session() as session:
        transitions.start_sending(session, session.get(Issue, issue_id), "example.jp", "ja")
        taking_back = threading.Thread(target=undo)
        taking_back.start()
        assert not undone.wait(1.0)  # it waits for the send
    taking_back.join(30)
    assert undone.is_set()
    with services.session() as session:
        rows = session.scalars(select(Delivery.status).where(Delivery.issue_id == issue_id,
                                                             Delivery.subscriber_id == reader_id)).all()
        assert rows == ["queued"]


def test_cancel_stops_what_is_queued_and_what_a_worker_claimed(session):
    add_subscribers(session, 3)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    [claimed] = outbox.claim(session, "w", 1, utcnow(), 300)
    assert transitions.cancel_issue(session, issue) == 3
    assert outbox.held(session, [claimed.id], "w") == set()  # the worker's next check drops it
    assert outbox.claim(session, "w", 5, utcnow(), 300) == []
    with pytest.raises(StateError, match="already cancelled"):
        transitions.cancel_issue(session, issue)


@pytest.mark.slow  # 100 000 rows
def test_enqueue_100k_rows_in_one_statement(session):
    """Not a timing test: proves the audience is frozen with set-based SQL at scale."""
    from sqlalchemy import insert

    session.execute(insert(Subscriber), [
        dict(email=f"u{i}@example.jp", email_key=f"u{i}@example.jp", name="", organization="",
             lang="ja", topics=[], status="active", status_reason="") for i in range(20_000)
    ])
    issue = make_issue(session)
    assert transitions.start_sending(session, issue, "example.jp", "ja") == 20_000
    assert session.scalar(select(func.count(func.distinct(Delivery.message_id)))) == 20_000


def test_opt_out_takes_back_a_claimed_delivery(session):
    subs = add_subscribers(session, 2)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    claimed = outbox.claim(session, "w", 2, utcnow(), 300)
    subscribers.unsubscribe(session, subs[0], Consent("one-click"))
    # The worker's periodic check no longer finds the row among what it holds.
    assert outbox.held(session, [c.id for c in claimed], "w") == {
        c.id for c in claimed if c.subscriber_id == subs[1].id}
    assert outbox.counts(session, issue.id).cancelled == 1


def test_completion_never_overwrites_a_cancellation(session):
    add_subscribers(session, 1)
    issue = make_issue(session)
    transitions.start_sending(session, issue, "example.jp", "ja")
    transitions.cancel_issue(session, issue)
    assert transitions.complete_issues(session) == []
    session.refresh(issue)
    assert issue.status == "cancelled"


def _queued_list(session, n: int) -> Issue:  # type: ignore[no-untyped-def]
    """An issue being sent to `n` active subscribers, inserted in one statement, committed."""
    from sqlalchemy import insert

    session.execute(insert(Subscriber), [
        dict(email=f"u{i}@example.jp", email_key=f"u{i}@example.jp", name="", organization="",
             lang="ja", topics=[], status="active", status_reason="") for i in range(n)
    ])
    issue = make_issue(session)
    assert transitions.start_sending(session, issue, "example.jp", "ja") == n
    session.commit()
    return issue


def test_a_claim_reads_its_batch_not_the_whole_list(session):
    """PostgreSQL planned the claim as a scan and sort of every delivery of the list, for each
    batch (the `issues` join guessed at a few hundred rows), on lists up to tens of thousands:
    23 ms a claim at 20 000 subscribers. A claim now reads its batch through the due index."""
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner and its per-transaction table statistics")
    from sqlalchemy import text

    issue = _queued_list(session, 3_000)
    session.execute(text("ANALYZE deliveries"))  # as autovacuum does once the rows are queued

    def rows_read() -> int:  # this transaction's rows of `deliveries` read by sequential scans
        return session.scalar(text("SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_xact_user_tables"
                                   " WHERE relname = 'deliveries'"))

    before = rows_read()
    claimed = outbox.claim(session, "w", 50, utcnow(), 300)
    assert len(claimed) == 50
    assert [c.id for c in claimed] == sorted(c.id for c in claimed)
    assert rows_read() - before == 0
    claimed = outbox.claim(session, "w", 50, utcnow(), 300)  # the next batch, not the same one
    assert len(claimed) == 50 and rows_read() - before == 0
    assert outbox.counts(session, issue.id).sending == 100


def _scans(node: dict, table: str, limited: bool = False) -> typing.Iterator[tuple[str, bool]]:
    """(node type, under a Limit) of each node of an EXPLAIN (FORMAT JSON) plan that reads `table`."""
    if node.get("Relation Name") == table:
        yield node["Node Type"], limited
    for child in node.get("Plans", []):
        yield from _scans(child, table, limited or node["Node Type"] == "Limit")


def test_whether_an_issue_is_drained_is_asked_of_its_pending_rows_only(session):
    """After each claim the worker asks which issues have nothing pending. PostgreSQL answered by
    reading every row the index still listed as pending, the ones already sent included until a
    vacuum (a bitmap scan never marks them dead), or by scanning the list: O(list) per claim,
    6-17 ms at 100 000 subscribers. The answer now takes the issue's first pending row from an index."""
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner and its per-transaction table statistics")
    from sqlalchemy import event, text, update

    issue = _queued_list(session, 3_000)
    first_pending = session.scalar(select(func.min(Delivery.id))) + 2_900
    # as a send leaves it: the rows sent first at the front of the table, their old versions not vacuumed
    session.execute(update(Delivery).where(Delivery.id < first_pending).values(status="sent"))
    session.commit()
    session.execute(text("ANALYZE deliveries"))

    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append((statement, parameters))

    connection = session.connection()
    event.listen(connection, "before_cursor_execute", record)
    try:
        assert outbox.drained_issues(session) == []  # 100 still queued
    finally:
        event.remove(connection, "before_cursor_execute", record)
    [(statement, parameters)] = statements
    explained = connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
    plan = explained.scalar_one()[0]["Plan"]
    # How `deliveries` is read, and whether a Limit above it stops at the first pending row. The old
    # plan: a bitmap scan of every entry listed as pending, under an anti-join (here: all 59 pages
    # of the table). Pages read are not asserted: dead entries are skipped only once no other
    # transaction (another test's, here) can still see them.
    reads = list(_scans(plan, "deliveries"))
    assert reads == [("Index Scan", True)], json.dumps(plan, indent=1)
    session.execute(update(Delivery).where(Delivery.id >= first_pending).values(status="sent"))
    assert outbox.drained_issues(session) == [issue.id]
