"""The outbox: one delivery row per recipient, the source of truth for what was sent.

    queued ──claim──▶ sending (leased: owner + expiry) ──▶ sent | failed
       ▲                  │ 4xx / drop: back to queued with next_attempt_at later
       └── lease expired ─┘ (the row in flight: after max_lease_expiries, dead)
    queued ──opt-out / issues cancel──▶ cancelled
    dead ──issues retry N --dead──▶ queued

Progress is always counted from row states, never from a cursor. A claim is committed
before any SMTP I/O; a result is written only while its writer still holds the lease.
Every claim has an owner of its own, and its rows are sent in id order, each result
committed before the next message: so of a dead claim's rows still `sending`, only the
lowest id can have been in flight. Only that row counts toward giving up; the others go
back to the queue untouched. A live worker renews the leases of the claims it still holds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import typing

from sqlalchemy import (
    ColumnElement,
    Connection,
    SQLColumnExpression,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from mailmag import text_ja
from mailmag.addresses import delivery_message_id
from mailmag.db import rowcount
from mailmag.errors import DatabaseError, Fix, InvalidInput, StateError
from mailmag.models import (
    Delivery,
    Issue,
    Rendering,
    Subscriber,
    utcnow,
)

PENDING = ("queued", "sending")
# How last_reply starts once a delivery may have reached the relay twice (a drop after the final
# dot, a worker dying while sending it): those rows stay countable as LIKE 'ambiguous%'.
AMBIGUOUS = "ambiguous"
MAYBE_BEFORE_CANCEL = f"{AMBIGUOUS}: it may have reached the relay before the issue was cancelled"
# Ends the reply of a held address refusal asked again after the relay accepted another message
# (dispatch._hold): the next answer about it is believed.
REASKED = "asked again: the relay accepts other mail"
# In the reply of an address refusal held, queued, until the relay accepts a message after it
# (dispatch._hold): nobody is marked bounced on a relay that may be refusing everyone.
NOT_BELIEVED = "not believed yet: no message accepted since"
# In the reply of such a refusal given up on past [retry] lifetime_seconds: failed, not bounced.
NEVER_BELIEVED = "not believed: no message the relay accepted vouched for it; the reader stays on the list"


# last_reply keeps this much of a result's reply.
REPLY_KEPT = 500
# ...and this much of a held refusal's words, so that the marks after them (NOT_BELIEVED, then
# REASKED) survive that cut: a row that lost them would no longer be seen as held.
REFUSAL_KEPT = 300


def held_reply(refusal: str) -> str:
    """The last_reply of an address refusal held, not believed yet (held_refusals reads it back)."""
    return f"{refusal[:REFUSAL_KEPT]} ({NOT_BELIEVED})"


def given_up_reply(refusal: str) -> str:
    """The last_reply of such a refusal given up on past the lifetime, with nobody bounced."""
    return f"gave up: {refusal[:REFUSAL_KEPT]} ({NEVER_BELIEVED})"


_EDITIONS_JA = {"ja": "日本語版", "en": "英語版"}


def edition_ja(lang: str) -> str:
    """An issue's rendering in `lang` as a Japanese sentence names it ('ja' → 日本語版)."""
    return _EDITIONS_JA.get(lang, f"「{lang}」の版")


@dataclasses.dataclass(frozen=True)
class Claimed:
    """What a worker needs to send one delivery, read in the claim itself."""

    id: int
    issue_id: int
    subscriber_id: int
    email: str
    name: str
    lang: str
    message_id: str
    attempts: int
    retrying_since: dt.datetime | None  # None: not retried yet
    last_reply: str
    link_key: str = ""  # the subscriber row's key, which every link in the mail carries
    maybe_copies: int = 0  # attempts that may have delivered it ([retry] ambiguous_max_attempts)


@dataclasses.dataclass(frozen=True)
class Counts:
    total: int = 0
    queued: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    dead: int = 0
    cancelled: int = 0

    @property
    def pending(self) -> int:
        return self.queued + self.sending


def enqueue(session: Session, issue: Issue, domain: str, default_lang: str) -> int:
    """Freeze the audience into delivery rows in one statement; returns rows added.

    Active subscribers matching the issue's topic; each gets the rendering in their language
    if there is one, else the default. The unique (issue, subscriber) pair makes a second
    call add nothing. Message-IDs are fixed here and reused on every retry.
    """
    added = _add_audience(session, issue, domain, default_lang)
    if added and session.get_bind().dialect.name == "postgresql":
        # Statistics taken before this bulk insert say the queue is empty; planning with them,
        # each claim sorts the whole list instead of reading one batch off the due index (0.5 s
        # a claim at 1M rows). ANALYZE samples ~30 000 rows once per send (a tenth of a second).
        session.execute(text("ANALYZE deliveries"))
    return added


def catch_up(session: Session, subscriber_id: int, since: dt.datetime, domain: str,
             default_lang: str) -> set[int]:
    """An opt-out taken back (scheduling.sending.take_back_unsubscribe): the issues whose audience
    was frozen after the opt-out (at `since`), and that are being sent or were sent meanwhile, go
    to the reader too, as if they had not left: a row each, due now, if the issue's topic is
    theirs (as at enqueue). Returns those issues' ids (a sent one must open again,
    transitions.reopen). A cancelled issue stays stopped."""
    session.flush()  # the reader's return counts: Core does not autoflush
    # A send starting now froze its audience in a snapshot taken before this reader came back
    # (PostgreSQL, helper-60): wait for it to commit, then see it (transitions.start_sending
    # marks its issue first). Locked in one order, as two undos at once may both reopen an issue.
    session.execute(select(Issue.id).order_by(Issue.id).with_for_update())
    going = session.scalars(
        select(Issue).where(Issue.status.in_(("sending", "sent")), Issue.sent_at >= since))
    return {issue.id for issue in going
            if _add_audience(session, issue, domain, default_lang, Subscriber.id == subscriber_id)}


def _add_audience(session: Session, issue: Issue, domain: str, default_lang: str,
                  *only: ColumnElement[bool]) -> int:
    """enqueue's one statement: a row for each active subscriber the issue goes to (and `only`
    allows) who has none yet. Returns rows added."""
    langs = set(session.scalars(select(Rendering.lang).where(Rendering.issue_id == issue.id)))
    if default_lang not in langs:
        raise StateError(f"issue {issue.id} has no '{default_lang}' rendering",
                         fixes=[Fix("render_issue", issue.id)],
                         ja=f"号（ID {issue.id}）には{edition_ja(default_lang)}がありません")
    if issue.number is None:
        raise StateError(f"issue {issue.id} has no number yet", fixes=[Fix("send_issue", issue.id)],
                         ja=f"号（ID {issue.id}）にはまだ号数がありません")
    nonce = secrets.token_hex(4)
    before, between, after = delivery_message_id(issue.number, nonce, domain)
    message_id = (literal(before).concat(cast(Subscriber.id, String)).concat(literal(between))
                  .concat(func.substr(Subscriber.link_key, 1, 8)).concat(literal(after)))
    lang = case((Subscriber.lang.in_(sorted(langs)), Subscriber.lang), else_=literal(default_lang))
    now = utcnow()
    audience = select(
        literal(issue.id), Subscriber.id, Subscriber.email, lang, message_id,
        literal("queued"), literal(now), literal(now),
    ).where(Subscriber.status == "active", *_topic_filter(issue.topic), *only)
    columns = ["issue_id", "subscriber_id", "email", "lang", "message_id", "status",
               "next_attempt_at", "created_at"]
    statement = _insert_ignoring_duplicates(session).from_select(columns, audience)
    return rowcount(session.execute(statement, execution_options={"preserve_rowcount": True}))


def _topic_filter(topic: str | None) -> list:
    """Subscribers with no topics receive everything; others only issues of their topics."""
    if topic is None:
        return []
    if not topic.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(f"invalid topic {topic!r}: use letters, digits, - and _",
                           ja=f"テーマ「{topic}」は使えません（英数字と「-」「_」だけです）")
    topics_text = cast(Subscriber.topics, Text)
    return [or_(topics_text == "[]", topics_text.like(f'%"{topic}"%'))]


def _insert_ignoring_duplicates(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(Delivery).on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(Delivery).on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])
    raise DatabaseError(f"mailmag runs on SQLite or PostgreSQL, not {dialect}")


def _maybe_in_flight(claimed: ColumnElement[bool]) -> Select[int]:
    """The row of each claim among `claimed` rows that may be on the wire: its lowest id still
    `sending` (a claim is sent in id order, one message at a time)."""
    return select(func.min(Delivery.id)).where(claimed).group_by(Delivery.lease_owner)


# The system clock was set back by `step`: what was stamped on the old clock lies that much
# further ahead than meant, and is brought back by the step (scheduling.node, on each step).


def queue_set_back(session: Session, step: dt.timedelta, now: dt.datetime) -> int:
    """Queued rows' next tries (a 9 h step back held the rest of an issue for 9 h). One node
    moves them: they are the whole queue's. Rows moved."""
    ahead = session.execute(select(Delivery.id, Delivery.next_attempt_at)
                            .where(Delivery.status == "queued", Delivery.next_attempt_at > now)).all()
    if ahead:
        session.execute(update(Delivery), [{"id": id_, "next_attempt_at": at - step} for id_, at in ahead])
    return len(ahead)


def leases_set_back(session: Session, step: dt.timedelta, now: dt.datetime, host: str,
                    lease_seconds: int) -> int:
    """The leases of this machine's workers (`host`, as dispatch.worker_id begins) that lie more
    than a lease ahead: only the old clock stamped those. A dead worker's rows stayed held for
    the length of the step (helper-67). A live keeper may have renewed on the new clock before
    `run` looked (helper-69): moved back too, its lease fell into the past and the message on the
    wire went again. Other machines' leases are on their own clocks. Rows moved."""
    ours = and_(Delivery.status == "sending",
                Delivery.lease_expires_at > now + dt.timedelta(seconds=lease_seconds),
                Delivery.lease_owner.startswith(f"{host}:", autoescape=True))
    leased = session.execute(select(Delivery.id, Delivery.lease_expires_at).where(ours)).all()
    if leased:
        session.execute(update(Delivery), [{"id": id_, "lease_expires_at": at - step}
                                           for id_, at in leased if at is not None])
    return len(leased)


def any_lease_expired(session: Session, now: dt.datetime) -> bool:
    """Whether expire_leases would find a lease to expire."""
    return session.scalar(select(Delivery.id).where(_lease_expired(now)).limit(1)) is not None


def _lease_expired(now: dt.datetime) -> typing.Any:
    return and_(Delivery.status == "sending", Delivery.lease_expires_at < now)


def expire_leases(session: Session, now: dt.datetime, max_expiries: int, *, max_copies: int) -> int:
    """Leases of dead workers expire and their rows are queued again; returns rows requeued.

    Only the row that may have been in flight (the lowest id still `sending` of each expired
    claim) counts toward `max_expiries`, and is marked AMBIGUOUS; after that many it is dead,
    for an operator to look at; so it is once it may have reached the relay `max_copies` times.
    """
    expired = _lease_expired(now)
    # Marked with sent_at (when it may have gone) for the hourly limit after a restart: unrecorded_since.
    in_flight = list(session.scalars(_maybe_in_flight(expired)))
    if not in_flight:
        return 0
    counted = and_(expired, Delivery.id.in_(in_flight))
    # a possible copy: toward [retry] ambiguous_max_attempts too (helper-97), which stops it as
    # `max_expiries` does (helper-99: killed again and again, a row went a third time past 2)
    expiry = {"lease_expiries": Delivery.lease_expiries + 1, "sent_at": now,
              "maybe_copies": Delivery.maybe_copies + 1}
    expired_too_often = Delivery.lease_expiries + 1 >= max_expiries
    too_many_copies = Delivery.maybe_copies + 1 >= max_copies
    session.execute(
        update(Delivery)
        .where(counted, or_(expired_too_often, too_many_copies))
        .values(status="dead", lease_owner=None, lease_expires_at=None, **expiry,
                last_reply=case((expired_too_often,
                                 f"{AMBIGUOUS}: lease expired too often: a worker died while sending it"),
                                else_=f"{AMBIGUOUS}: a worker died while sending it, and it may have reached "
                                      "the relay as often as [retry] ambiguous_max_attempts allows"))
    )
    # Marked even when it goes on: if it was on the wire, its next send may be its second copy,
    # and the result written then keeps the mark (dispatch._marked: "ambiguous before; 250 …").
    session.execute(
        update(Delivery).where(counted).values(
            **expiry, last_reply=f"{AMBIGUOUS}: a worker died while it may have been sending it")
    )
    # The rest of each claim never went: its claim's attempt is taken back, as a release does.
    return rowcount(session.execute(
        update(Delivery)
        .where(expired)
        .values(status="queued", lease_owner=None, lease_expires_at=None, next_attempt_at=now,
                attempts=case((Delivery.id.in_(in_flight), Delivery.attempts), else_=Delivery.attempts - 1))
    ))


def renew_leases(db: Session | Connection, owners: list[str], now: dt.datetime, lease_seconds: int) -> int:
    """A live worker keeps the claims it still holds: one statement for all of them."""
    if not owners:
        return 0
    return rowcount(db.execute(
        update(_DELIVERIES)
        .where(_DELIVERIES.c.status == "sending", _DELIVERIES.c.lease_owner.in_(owners))
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
    ))


def requeue_dead(session: Session, issue_id: int, now: dt.datetime) -> int:
    """`issues retry N --dead`: the issue's dead deliveries go back to the queue, counted afresh."""
    return rowcount(session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue_id, Delivery.status == "dead")
        .values(status="queued", lease_expiries=0, next_attempt_at=now, retrying_since=None,
                last_reply=case((Delivery.last_reply.startswith(AMBIGUOUS), f"{AMBIGUOUS} before; "),
                                else_="") + "requeued by an operator after: " + Delivery.last_reply)
    ))


def hand_back_failed(session: Session, ids: list[int], now: dt.datetime) -> list[int]:
    """Rows failed by a refusal that turned out to be the relay's or the content's: queued again.
    Returns the issue of each row queued again."""
    if not ids:
        return []
    return list(session.scalars(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.status == "failed")
        .values(status="queued", next_attempt_at=now, attempts=Delivery.attempts - 1)
        .returning(Delivery.issue_id)
    ))


def due_again(session: Session, ids: list[int], now: dt.datetime) -> int:
    """Rows whose address the relay refused, held until it accepted another message: due now,
    marked REASKED, so that the relay's next answer about them is believed."""
    if not ids:
        return 0
    return rowcount(session.execute(
        update(Delivery).where(Delivery.id.in_(ids), Delivery.status == "queued")
        .values(next_attempt_at=now, last_reply=Delivery.last_reply + literal(f" ({REASKED})"))
    ))


def _due_batch(postgresql: bool, limit: int, now: dt.datetime) -> ColumnElement[bool]:
    """Which rows a claim takes: up to `limit` due deliveries of issues being sent.

    Oldest due first, in the order of the (status, next_attempt_at) index, so a claim reads
    one batch of index entries wherever it is in the list. ORDER BY id would sort (SQLite)
    or walk past every row already sent (PostgreSQL) on each claim: O(list) per batch.
    Rows due at the same moment come in index order: rowid on SQLite, heap order on PostgreSQL.
    """
    queued = (Delivery.status == "queued", Delivery.next_attempt_at <= now)
    if not postgresql:
        due = (
            select(Delivery.id).join(Issue, Issue.id == Delivery.issue_id)
            .where(*queued, Issue.status == "sending")
            .order_by(Delivery.next_attempt_at).limit(limit)
        )
        return Delivery.id.in_(due.scalar_subquery())
    # PostgreSQL estimated a join with `issues` (rarely analysed, and an issue turns `sending` as
    # its rows are queued) at a few hundred rows, so up to lists of tens of thousands it scanned and
    # sorted the whole list for each batch, and planned `id IN (…)` as a hash join over the whole
    # table (20 000 rows: 23 ms a 200-row claim, now 11). An ARRAY(…) is computed before the plan
    # runs, so neither size is guessed: the due index gives the batch in order, the primary key its rows.
    sending = func.array(select(Issue.id).where(Issue.status == "sending").scalar_subquery())
    due = (
        select(Delivery.id).where(*queued, Delivery.issue_id == any_(sending))
        .order_by(Delivery.next_attempt_at).limit(limit)
        .with_for_update(skip_locked=True, of=Delivery)  # rows another worker holds are skipped
    )
    return Delivery.id == any_(func.array(due.scalar_subquery()))


def _of_subscriber(column: typing.Any) -> typing.Any:
    """`column` of the delivery's subscriber, as a scalar subquery."""
    return select(column).where(Subscriber.id == Delivery.subscriber_id).scalar_subquery()


def _claimed_columns() -> tuple[typing.Any, ...]:
    """A claimed row as Claimed takes it, field by field."""
    return (Delivery.id, Delivery.issue_id, Delivery.subscriber_id, Delivery.email,
            _of_subscriber(Subscriber.name), Delivery.lang, Delivery.message_id, Delivery.attempts,
            Delivery.retrying_since, Delivery.last_reply, _of_subscriber(Subscriber.link_key),
            Delivery.maybe_copies)


def claim(
    session: Session, owner: str, limit: int, now: dt.datetime, lease_seconds: int
) -> list[Claimed]:
    """Lease up to `limit` due deliveries to `owner`. The caller commits before any SMTP I/O.

    Rows whose subscriber is no longer active are cancelled in the same statement, so an
    opt-out during a send is honoured at once. PostgreSQL skips rows another worker holds.
    """
    chosen = _due_batch(session.get_bind().dialect.name == "postgresql", limit, now)
    status = _of_subscriber(Subscriber.status)
    active = status == "active"
    # Core on the session's connection (the ORM's bulk-update machinery costs more than the
    # claim), and the claimed rows come back from the UPDATE itself, in Claimed's field order.
    session.flush()  # what the session holds counts (an issue just set sending): Core does not autoflush
    rows = session.connection().execute(
        update(Delivery)
        .where(chosen)
        .values(
            status=case((active, "sending"), else_="cancelled"),
            lease_owner=case((active, owner), else_=None),
            lease_expires_at=case((active, now + dt.timedelta(seconds=lease_seconds)), else_=None),
            attempts=case((active, Delivery.attempts + 1), else_=Delivery.attempts),
            # as cancel_for_subscriber's: an opt-out whose own cancel ran before this row was
            # committed (PostgreSQL, during an enqueue) is taken back with the row (helper-60)
            last_reply=case((active, Delivery.last_reply), (status == "unsubscribed", OPTED_OUT),
                            else_=Delivery.last_reply),
        )
        .returning(Delivery.status, *_claimed_columns())
    ).all()
    # Sent in id order (outbox's rule above: of a dead claim, only the lowest id may have been in flight).
    claimed = [Claimed(*typing.cast(tuple[typing.Any, ...], row)[1:]) for row in rows if row[0] == "sending"]
    return sorted(claimed, key=lambda delivery: delivery.id)


def claimed_by(session: Session, owner: str) -> list[Claimed]:
    """The rows a claim under `owner` holds: after a claim whose answer was lost (a database that
    hung, then went on), its commit may have landed; claiming anew under the same owner would
    leave those rows held by nobody until the lease ran out, then mark them as maybe sent twice."""
    rows = session.execute(
        select(*_claimed_columns())
        .where(Delivery.status == "sending", Delivery.lease_owner == owner).order_by(Delivery.id)
    ).all()
    return [Claimed(*typing.cast(tuple[typing.Any, ...], row)) for row in rows]


def _held(delivery_id: int, owner: str):
    return and_(Delivery.id == delivery_id, Delivery.status == "sending", Delivery.lease_owner == owner)


def _finish(session: Session, delivery_id: int, owner: str, **values: object) -> bool:
    """Write a result only while `owner` still holds the lease; False if it lost it."""
    values = {"lease_owner": None, "lease_expires_at": None, **values}
    return rowcount(session.execute(update(Delivery).where(_held(delivery_id, owner)).values(**values))) == 1


# The hot path, once per message: one statement built at import, on the table rather than the
# ORM entity, so executing it is a compiled-cache hit with no ORM bulk-update machinery. It is
# the one statement of the rule: the worker's writer (delivery.results) compiles this same
# statement for its driver, so its four parameters are the only binds (constants are literal).
_DELIVERIES = typing.cast(Table, Delivery.__table__)  # an ORM class's table is a Table
# A result `sent` is written over these statuses (and only by the lease owner): `cancelled`
# too, since a message on the wire when its issue was cancelled did go (outbox.cancel_rows).
SENT_FROM = ("sending", "cancelled")
MARK_SENT_PARAMS = ("reply", "now", "delivery_id", "owner")  # in the order the statement binds them
MARK_SENT = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("delivery_id"),
           _DELIVERIES.c.status.in_([literal_column(f"'{status}'") for status in SENT_FROM]),
           _DELIVERIES.c.lease_owner == bindparam("owner"))
    .values(status=literal_column("'sent'"), last_reply=bindparam("reply"), sent_at=bindparam("now"),
            lease_owner=null(), lease_expires_at=null())
)


def mark_sent(
    db: Session | Connection, delivery_id: int, owner: str, reply: str, now: dt.datetime
) -> bool:
    """Sent, if `owner` still holds the lease; works on a Session or a plain Connection."""
    params = {"delivery_id": delivery_id, "owner": owner, "reply": reply[:REPLY_KEPT], "now": now}
    return rowcount(db.execute(MARK_SENT, params)) == 1


def mark_sent_unclaimed(session: Session, delivery_id: int, reply: str, now: dt.datetime) -> bool:
    """A message the relay accepted after its worker's lease had passed: sent, if no worker has
    claimed the row since (it went back to the queue, or was cancelled or given up meanwhile);
    False if one has, which may send it again.

    Also True for a row already sent with this very reply: the worker's own write, whose answer
    was lost (a server that hung, then went on), had landed after all."""
    unclaimed = and_(Delivery.id == delivery_id, Delivery.status.in_(("queued", "cancelled", "dead")),
                     Delivery.lease_owner.is_(None))
    if rowcount(session.execute(
        update(Delivery).where(unclaimed).values(status="sent", last_reply=reply[:REPLY_KEPT], sent_at=now)
    )) == 1:
        return True
    return result_landed(session, delivery_id, reply, "sent")


def result_landed(session: Session, delivery_id: int, reply: str, status: str | None = None) -> bool:
    """Whether the row holds this very result, under no lease (in `status`, if given): a write
    whose answer was lost (a server that hung, then went on) had landed, and its retry finds the
    row no longer its own."""
    landed = and_(Delivery.id == delivery_id, Delivery.lease_owner.is_(None),
                  Delivery.status != "sending", Delivery.last_reply == reply[:REPLY_KEPT])
    if status is not None:
        landed = and_(landed, Delivery.status == status)
    return session.scalar(select(Delivery.id).where(landed)) is not None


def mark_failed(session: Session, delivery_id: int, owner: str, reply: str,
                ambiguous_at: dt.datetime | None = None) -> bool:
    """`ambiguous_at`: when the relay may have accepted it all the same (a drop after the final dot)."""
    return _finish(session, delivery_id, owner, status="failed", last_reply=reply[:REPLY_KEPT],
                   **_maybe_sent(ambiguous_at))


def mark_retry(session: Session, delivery_id: int, owner: str, reply: str, at: dt.datetime,
               since: dt.datetime, ambiguous_at: dt.datetime | None = None) -> bool:
    """Queued again for `at`; `since`: when its retries began (the row's retrying_since, or now)."""
    return _finish(session, delivery_id, owner, status="queued", last_reply=reply[:REPLY_KEPT],
                   next_attempt_at=at, retrying_since=since, **_maybe_sent(ambiguous_at))


def _maybe_sent(at: dt.datetime | None) -> dict[str, object]:
    """A row marked ambiguous keeps in sent_at when it may have reached the relay: a restarted
    worker counts it against the hourly limit (unrecorded_since); and it counts one possible
    copy more ([retry] ambiguous_max_attempts)."""
    return {} if at is None else {"sent_at": at, "maybe_copies": Delivery.maybe_copies + 1}


def release(session: Session, delivery_id: int, owner: str, at: dt.datetime | None = None) -> bool:
    """Hand an unsent claim back (clean stop, 421): not counted as an attempt. One cancelled under
    the worker is let go (helper-60: after a clean stop, an opt-out taken back left it to the
    stopped worker, and it went only when the lease passed, counted as maybe sent twice)."""
    values: dict[str, object] = {"status": "queued", "attempts": Delivery.attempts - 1}
    if at is not None:
        values["next_attempt_at"] = at
    return _finish(session, delivery_id, owner, **values) or let_go(session, delivery_id, owner)


def retrying_for(delivery: Claimed, now: dt.datetime) -> float:
    """Seconds since the delivery's retries began (0 at its first failure): what [retry]
    lifetime_seconds and the backoff count, not its time in the queue."""
    return 0.0 if delivery.retrying_since is None else (now - delivery.retrying_since).total_seconds()


def retry_delay(config_retry, age_seconds: float) -> float:
    """Postfix-like: the delay grows with the time the message has been retried, between the two bounds."""
    return min(max(config_retry.backoff_seconds, age_seconds), config_retry.max_backoff_seconds)


# The last_reply of a delivery an opt-out cancelled (restore_for_subscriber looks for it): only
# ever on the rows of the reader's latest opt-out (settle_opt_out).
OPTED_OUT = "subscriber opted out"
OPTED_OUT_BEFORE = "subscriber opted out (and came back later by a new opt-in)"


def cancel_for_subscriber(session: Session, subscriber_id: int, why: str = OPTED_OUT) -> int:
    """An opt-out takes effect at once: queued and claimed deliveries to them are cancelled.

    A worker re-checks what it holds at least every HELD_CHECK_SECONDS before sending (and
    after waiting for the rate limiter), so a claimed row is dropped too; only a message
    already being transmitted still goes. Its lease owner stays on the row, as in cancel_rows,
    so that message records that it went (mark_sent) instead of counting as cancelled.
    """
    result = session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status.in_(PENDING))
        .values(status="cancelled", last_reply=why)
    )
    return rowcount(result)


def settle_opt_out(session: Session, subscriber_id: int) -> int:
    """The reader is back by a new opt-in (a confirmation, the office's re-add): what their
    opt-out stopped stays stopped, so that taking back a later opt-out brings only what that one
    stopped (helper-60: it brought an issue months old). Returns the rows settled."""
    return rowcount(session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status == "cancelled",
               Delivery.last_reply == OPTED_OUT)
        .values(last_reply=OPTED_OUT_BEFORE)
    ))


def restore_for_subscriber(session: Session, subscriber_id: int, now: dt.datetime) -> set[int]:
    """An opt-out taken back (scheduling.sending.take_back_unsubscribe): the messages it cancelled
    in issues being sent, or sent meanwhile, go after all; returns those issues' ids (a sent one
    must open again, transitions.reopen). One that a worker still holds goes back to that worker
    (it may be on the wire: its result is then recorded as any other; if not, the worker sends
    it); the rest, let go (let_go) or never claimed, are queued again, due now. A cancelled issue
    stays stopped. One that may have reached the relay before (sent_at kept: a drop after the
    final dot, a worker that died) goes marked as one that may arrive twice."""
    going = select(Issue.id).where(Issue.status.in_(("sending", "sent")))
    stopped = (Delivery.subscriber_id == subscriber_id, Delivery.status == "cancelled",
               Delivery.last_reply == OPTED_OUT, Delivery.issue_id.in_(going))
    reply = case((Delivery.sent_at.is_not(None), f"{AMBIGUOUS}: it may have reached the relay before the "
                                                  "reader unsubscribed"), else_="")
    held = session.scalars(
        update(Delivery).where(*stopped, Delivery.lease_owner.is_not(None))
        .values(status="sending", last_reply=reply).returning(Delivery.issue_id)
    ).all()
    queued = session.scalars(
        update(Delivery).where(*stopped, Delivery.lease_owner.is_(None))
        .values(status="queued", next_attempt_at=now, last_reply=reply).returning(Delivery.issue_id)
    ).all()
    return {*held, *queued}


def let_go(session: Session, delivery_id: int, owner: str, maybe_sent: dt.datetime | None = None) -> bool:
    """A worker is done with a row of its claim that was cancelled under it (it asks held()
    before each message, and a refusal's result finds it so): its lease leaves the row, so that
    an opt-out taken back queues it again (restore_for_subscriber). `maybe_sent`: when it may
    have reached the relay all the same (a drop after the final dot). False if the row is not
    such a row any more: it may be the worker's again, an opt-out taken back meanwhile."""
    return rowcount(session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status == "cancelled", Delivery.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None, **_maybe_sent(maybe_sent))
    )) == 1


def cancel_rows(session: Session, issue_id: int) -> int:
    """An issue's send stops: its queued and claimed rows are cancelled. Returns rows cancelled.

    A worker re-checks what it holds at least every HELD_CHECK_SECONDS before sending, so a
    claimed row is dropped too; only a message already being transmitted still goes. Its
    lease owner stays on the row, so that message can still record that it went (mark_sent).
    """
    # A row marked ambiguous (a drop after the final dot, a worker that died sending it) may have
    # reached its reader: it keeps the mark, so that it is counted as such (helper-95).
    reply = case((Delivery.last_reply.startswith(AMBIGUOUS), MAYBE_BEFORE_CANCEL), else_="issue cancelled")
    return rowcount(session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue_id, Delivery.status.in_(PENDING))
        .values(status="cancelled", last_reply=reply)
    ))


def has_pending(issue_id: SQLColumnExpression[int]) -> ColumnElement[bool]:
    """SQL: the issue still has rows queued or being sent.

    Asked after every claim, late in a send too, when nearly every row is `sent` and sits at the
    front of the table. As EXISTS, PostgreSQL planned an anti-join reading every row its index still
    listed as pending (the sent rows' old entries too, until a vacuum: a bitmap scan never marks
    them dead) or a scan of the table: O(list) per claim, 6-17 ms at 100 000. The first pending row
    in status order can only come from an index ('sent' sorts after 'queued' and 'sending'), a
    scalar subquery stays a per-issue lookup instead of a join, and an index scan marks the dead
    entries it passes, so the next one skips them: 0.04 ms at 100 000.
    """
    first = (select(Delivery.id).where(Delivery.issue_id == issue_id, Delivery.status.in_(PENDING))
             .order_by(Delivery.status).limit(literal_column("1")))  # not a parameter: the plan may be reused
    return first.scalar_subquery().is_not(None)


def drained_issues(session: Session) -> list[int]:
    """Issues being sent with no pending row left: what the dispatcher reports after a claim
    (the issue's transition to 'sent' is content.transitions.complete)."""
    return list(session.scalars(select(Issue.id).where(Issue.status == "sending", ~has_pending(Issue.id))))


def held(session: Session, ids: list[int], owner: str) -> set[int]:
    """Which of `ids` `owner` still holds: an opt-out or an expired lease takes a row away."""
    return set(session.scalars(
        select(Delivery.id).where(Delivery.id.in_(ids), Delivery.status == "sending",
                                  Delivery.lease_owner == owner)
    ))


def counts(session: Session, issue_id: int) -> Counts:
    rows = session.execute(
        select(Delivery.status, func.count()).where(Delivery.issue_id == issue_id).group_by(Delivery.status)
    ).all()
    by_status = {status: n for status, n in rows}
    return Counts(total=sum(by_status.values()), **by_status)


def ambiguous_count(session: Session, issue_id: int) -> int:
    """Deliveries of the issue that may have reached the relay twice (marked AMBIGUOUS, and not
    stopped by a cancel since: those went once at most, cancelled_maybe_sent)."""
    return session.scalar(
        select(func.count()).select_from(Delivery)
        .where(Delivery.issue_id == issue_id, Delivery.last_reply.startswith(AMBIGUOUS),
               Delivery.status != "cancelled")
    ) or 0


def cancelled_maybe_sent(session: Session, issue_id: int) -> int:
    """Deliveries cancelled that may have reached the relay before (a drop after the final dot,
    a worker that died sending it, also one on the wire as the cancel came: helper-97): their
    readers may have the issue."""
    return maybe_reached(session, issue_id).get("cancelled", 0)


def maybe_reached(session: Session, issue_id: int) -> dict[str, int]:
    """Deliveries of the issue that reached the relay or may have (sent_at says when), by what
    became of them: sent; dead, failed, cancelled or queued again after a drop after the final
    dot or a worker's death."""
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.issue_id == issue_id, Delivery.sent_at.is_not(None)).group_by(Delivery.status))
    return {status: n for status, n in rows}


def pending_by_issue(session: Session) -> dict[int, int]:
    """Messages not yet handed to the relay (queued or being sent), per issue id; `issues list`."""
    return _by_issue(session, ("queued", "sending"))


def dead_by_issue(session: Session) -> dict[int, int]:
    """Dead messages per issue id: a `sent` issue may hold some, which wait for `issues retry --dead`."""
    return _by_issue(session, ("dead",))


def _by_issue(session: Session, statuses: tuple[str, ...]) -> dict[int, int]:
    rows = session.execute(select(Delivery.issue_id, func.count())
                           .where(Delivery.status.in_(statuses)).group_by(Delivery.issue_id))
    return {issue_id: n for issue_id, n in rows}


def due_up_to(session: Session, now: dt.datetime, most: int) -> int:
    """Due deliveries, counted up to `most`: a bounded read of the due index, whatever the
    list's size (a worker sizes its claims by it)."""
    due = select(Delivery.id).where(Delivery.status == "queued", Delivery.next_attempt_at <= now,
                                    Delivery.issue_id.in_(select(Issue.id).where(Issue.status == "sending")))
    return session.scalar(select(func.count()).select_from(due.limit(most).subquery())) or 0


def due_count(session: Session, now: dt.datetime) -> int:
    """Deliveries a worker could claim now (what `worker --once` waits for)."""
    return session.scalar(
        select(func.count())
        .select_from(Delivery)
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Issue.status == "sending", Delivery.status == "queued", Delivery.next_attempt_at <= now)
    ) or 0


def waiting(session: Session, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """Deliveries queued for later (a retry's backoff), and when the first of them comes due."""
    count, first = session.execute(
        select(func.count(), func.min(Delivery.next_attempt_at))
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Issue.status == "sending", Delivery.status == "queued", Delivery.next_attempt_at > now)).one()
    return count or 0, first


def leased(session: Session, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """Deliveries under a worker's lease at `now` (another's, alive or dead: no one can tell), and
    when the last of those leases ends."""
    count, until = session.execute(
        select(func.count(), func.max(Delivery.lease_expires_at))
        .where(Delivery.status == "sending", Delivery.lease_expires_at > now)).one()
    return count or 0, until


def next_due(session: Session) -> dt.datetime | None:
    """When the earliest queued delivery comes due (a deferred one may be due before a worker's
    next poll); None when nothing is queued."""
    return session.scalar(
        select(func.min(Delivery.next_attempt_at))
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Issue.status == "sending", Delivery.status == "queued")
    )


def sent_since(session: Session, since: dt.datetime, limit: int) -> list[dt.datetime]:
    """When the last `limit` messages sent after `since` were sent, by any worker (the hourly rate
    limit survives restarts, and frees its turns when they are an hour old)."""
    return list(session.scalars(
        select(Delivery.sent_at).where(Delivery.status == "sent", Delivery.sent_at >= since)
        .order_by(Delivery.sent_at.desc()).limit(limit)))


def unrecorded_since(session: Session, since: dt.datetime, now: dt.datetime) -> list[dt.datetime]:
    """When messages that have no `sent` result may have reached the relay, for the hourly limit:
    the row each claim may be sending (its lowest id still `sending`: its worker may have been
    killed between the relay's reply and the result's commit), as of `now`; and the rows marked
    ambiguous since `since` (a drop after the final dot, a worker that died sending them), as of
    when they were marked (sent_at, after they may have gone)."""
    in_flight = _maybe_in_flight(Delivery.status == "sending")
    sending = session.scalar(select(func.count()).where(Delivery.id.in_(in_flight)))
    marked = session.scalars(select(Delivery.sent_at).where(
        Delivery.status != "sent", Delivery.last_reply.startswith(AMBIGUOUS), Delivery.sent_at >= since))
    return [now] * (sending or 0) + [min(at, now) for at in marked if at is not None]


def caught_up_count(session: Session, issue_id: int) -> int:
    """Rows added to an issue's frozen audience after its send started (catch_up: readers who
    took back an unsubscribe). enqueue's rows share one created_at, the earliest."""
    first = select(func.min(Delivery.created_at)).where(Delivery.issue_id == issue_id).scalar_subquery()
    return session.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.issue_id == issue_id, Delivery.created_at > first)) or 0


def audience_count(session: Session, issue: Issue) -> int:
    """How many subscribers a send would queue now (the confirmation question, `issues status`)."""
    return session.scalar(
        select(func.count()).select_from(Subscriber)
        .where(Subscriber.status == "active", *_topic_filter(issue.topic))
    ) or 0


def _held_refusal(issue_id: int) -> list[ColumnElement[bool]]:
    return [Delivery.issue_id == issue_id, Delivery.status.in_(PENDING),
            Delivery.last_reply.contains(NOT_BELIEVED, autoescape=True)]


def held_refusals(session: Session, issue_id: int, limit: int = 200) -> list[tuple[str, str, dt.datetime]]:
    """(address, the relay's refusal, next try) of an issue's address refusals held, not believed yet:
    `issues status` and the console list them apart from the failures, which they are not yet."""
    rows = session.execute(
        select(Delivery.email, Delivery.last_reply, Delivery.next_attempt_at)
        .where(*_held_refusal(issue_id)).order_by(Delivery.id).limit(limit)
    )
    return [(email, text_ja.foreign_line(reply.split(held_reply(""), 1)[0]), at) for email, reply, at in rows]


def held_refusal_count(session: Session, issue_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Delivery).where(*_held_refusal(issue_id))) or 0


def failed_readers_kept(session: Session, issue_id: int) -> int:
    """Failed deliveries of the issue whose reader is still subscribed: not a bad address, but a
    reader who missed the issue (4xx past the lifetime, a refusal never believed, the content
    refused). `failed` alone reads as bounces."""
    return session.scalar(
        select(func.count()).select_from(Delivery).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.issue_id == issue_id, Delivery.status == "failed", Subscriber.status == "active")
    ) or 0


def failures(session: Session, issue_id: int, limit: int = 200) -> list[tuple[str, str, str]]:
    """(address, status, last reply) of an issue's failed and dead deliveries, for the console."""
    rows = session.execute(
        select(Delivery.email, Delivery.status, Delivery.last_reply)
        .where(Delivery.issue_id == issue_id, Delivery.status.in_(("failed", "dead")))
        .order_by(Delivery.id).limit(limit)
    )
    # foreign_line again: a row written before smtp._text made replies one line keeps its own
    return [(email, status, text_ja.foreign_line(reply) or "(no reply recorded)")
            for email, status, reply in rows]
