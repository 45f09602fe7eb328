"""The outbox: one delivery row per recipient, the source of truth for what was sent.

    queued ──claim──▶ sending (leased: owner + expiry) ──▶ sent | failed
       ▲                  │ 4xx / drop: back to queued with next_attempt_at later
       └── lease expired ─┘ (after max_lease_expiries: dead, for an operator to look at)
    queued ──opt-out / issues cancel──▶ cancelled

Progress is always counted from row states, never from a cursor. A claim is committed
before any SMTP I/O; a result is written only while its writer still holds the lease.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets

from sqlalchemy import (
    Connection,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from mailmag.delivery import messages
from mailmag.errors import DatabaseError, InvalidInput, StateError
from mailmag.models import (
    Delivery,
    Issue,
    IssueItem,
    Item,
    Rendering,
    Subscriber,
    utcnow,
)

PENDING = ("queued", "sending")


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
    created_at: dt.datetime
    last_reply: str
    link_key: str = ""  # the subscriber row's key, which every link in the mail carries


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
    langs = set(session.scalars(select(Rendering.lang).where(Rendering.issue_id == issue.id)))
    if default_lang not in langs:
        raise StateError(
            f"issue {issue.number} has no '{default_lang}' rendering: run `mailmag issues render`"
        )
    nonce = secrets.token_hex(4)
    message_id = (
        literal(f"<mm.{issue.number}.")
        .concat(cast(Subscriber.id, String))
        .concat(literal(f".{nonce}@{domain}>"))
    )
    lang = case((Subscriber.lang.in_(sorted(langs)), Subscriber.lang), else_=literal(default_lang))
    now = utcnow()
    audience = select(
        literal(issue.id), Subscriber.id, Subscriber.email, lang, message_id,
        literal("queued"), literal(now), literal(now),
    ).where(Subscriber.status == "active", *_topic_filter(issue.topic))
    columns = ["issue_id", "subscriber_id", "email", "lang", "message_id", "status",
               "next_attempt_at", "created_at"]
    statement = _insert_ignoring_duplicates(session).from_select(columns, audience)
    added = session.execute(statement, execution_options={"preserve_rowcount": True}).rowcount
    if added and session.get_bind().dialect.name == "postgresql":
        # Statistics taken before this bulk insert say the queue is empty; planning with them,
        # each claim sorts the whole list instead of reading one batch off the due index (0.5 s
        # a claim at 1M rows). ANALYZE samples ~30 000 rows once per send (a tenth of a second).
        session.execute(text("ANALYZE deliveries"))
    return added


def _topic_filter(topic: str | None) -> list:
    """Subscribers with no topics receive everything; others only issues of their topics."""
    if topic is None:
        return []
    if not topic.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(f"invalid topic {topic!r}: use letters, digits, - and _")
    topics_text = cast(Subscriber.topics, Text)
    return [or_(topics_text == "[]", topics_text.like(f'%"{topic}"%'))]


def _insert_ignoring_duplicates(session: Session):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(Delivery).on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(Delivery).on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])
    raise DatabaseError(f"mailmag runs on SQLite or PostgreSQL, not {dialect}")


def expire_leases(session: Session, now: dt.datetime, max_expiries: int) -> int:
    """Leases of dead workers expire: the row is queued again, or dead after too many."""
    expired = and_(Delivery.status == "sending", Delivery.lease_expires_at < now)
    dead = session.execute(
        update(Delivery)
        .where(expired, Delivery.lease_expiries + 1 >= max_expiries)
        .values(status="dead", lease_owner=None, lease_expires_at=None,
                lease_expiries=Delivery.lease_expiries + 1,
                last_reply="lease expired too often: a worker died while sending it")
    ).rowcount
    requeued = session.execute(
        update(Delivery)
        .where(expired)
        .values(status="queued", lease_owner=None, lease_expires_at=None,
                lease_expiries=Delivery.lease_expiries + 1, next_attempt_at=now)
    ).rowcount
    return dead + requeued


def claim(
    session: Session, owner: str, limit: int, now: dt.datetime, lease_seconds: int
) -> list[Claimed]:
    """Lease up to `limit` due deliveries to `owner`. The caller commits before any SMTP I/O.

    Rows whose subscriber is no longer active are cancelled in the same statement, so an
    opt-out during a send is honoured at once. PostgreSQL skips rows another worker holds.
    """
    # Oldest due first, in the order of the (status, next_attempt_at) index, so a claim reads
    # one batch of index entries wherever it is in the list. ORDER BY id would sort (SQLite)
    # or walk past every row already sent (PostgreSQL) on each claim: O(list) per batch.
    # Rows due at the same moment come in index order: rowid on SQLite, heap order on PostgreSQL.
    due = (
        select(Delivery.id)
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Delivery.status == "queued", Delivery.next_attempt_at <= now, Issue.status == "sending")
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True, of=Delivery)
    active = (
        select(Subscriber.status).where(Subscriber.id == Delivery.subscriber_id).scalar_subquery()
        == "active"
    )
    rows = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(due.scalar_subquery()))
        .values(
            status=case((active, "sending"), else_="cancelled"),
            lease_owner=case((active, owner), else_=None),
            lease_expires_at=case((active, now + dt.timedelta(seconds=lease_seconds)), else_=None),
            attempts=case((active, Delivery.attempts + 1), else_=Delivery.attempts),
        )
        .returning(Delivery.id, Delivery.status)
    ).all()
    ids = [row.id for row in rows if row.status == "sending"]
    return _load_claimed(session, ids)


def _load_claimed(session: Session, ids: list[int]) -> list[Claimed]:
    if not ids:
        return []
    query = (
        select(Delivery.id, Delivery.issue_id, Delivery.subscriber_id, Delivery.email,
               Subscriber.name, Delivery.lang, Delivery.message_id, Delivery.attempts,
               Delivery.created_at, Delivery.last_reply, Subscriber.link_key)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.id.in_(ids))
        .order_by(Delivery.id)
    )
    return [Claimed(*row) for row in session.execute(query)]


def _held(delivery_id: int, owner: str):  # type: ignore[no-untyped-def]
    return and_(Delivery.id == delivery_id, Delivery.status == "sending", Delivery.lease_owner == owner)


def _finish(session: Session, delivery_id: int, owner: str, **values: object) -> bool:
    """Write a result only while `owner` still holds the lease; False if it lost it."""
    values = {"lease_owner": None, "lease_expires_at": None, **values}
    return session.execute(update(Delivery).where(_held(delivery_id, owner)).values(**values)).rowcount == 1


# The hot path, once per message: one statement built at import, on the table rather than the
# ORM entity, so executing it is a compiled-cache hit with no ORM bulk-update machinery.
_DELIVERIES = Delivery.__table__
_MARK_SENT = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("delivery_id"), _DELIVERIES.c.status == "sending",
           _DELIVERIES.c.lease_owner == bindparam("owner"))
    .values(status="sent", last_reply=bindparam("reply"), sent_at=bindparam("now"),
            lease_owner=None, lease_expires_at=None)
)


def mark_sent(
    db: Session | Connection, delivery_id: int, owner: str, reply: str, now: dt.datetime
) -> bool:
    """Sent, if `owner` still holds the lease; works on a Session or a plain Connection."""
    params = {"delivery_id": delivery_id, "owner": owner, "reply": reply[:500], "now": now}
    return db.execute(_MARK_SENT, params).rowcount == 1


def mark_failed(session: Session, delivery_id: int, owner: str, reply: str) -> bool:
    return _finish(session, delivery_id, owner, status="failed", last_reply=reply[:500])


def mark_retry(session: Session, delivery_id: int, owner: str, reply: str, at: dt.datetime) -> bool:
    return _finish(session, delivery_id, owner, status="queued", last_reply=reply[:500], next_attempt_at=at)


def release(session: Session, delivery_id: int, owner: str, at: dt.datetime | None = None) -> bool:
    """Hand an unsent claim back (clean stop, 421): not counted as an attempt."""
    values: dict[str, object] = {"status": "queued", "attempts": Delivery.attempts - 1}
    if at is not None:
        values["next_attempt_at"] = at
    return _finish(session, delivery_id, owner, **values)


def retry_delay(config_retry, age_seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Postfix-like: the delay grows with the message's age, between the two bounds."""
    return min(max(config_retry.backoff_seconds, age_seconds), config_retry.max_backoff_seconds)


def cancel_for_subscriber(session: Session, subscriber_id: int) -> int:
    """An opt-out takes effect at once: queued and claimed deliveries to them are cancelled.

    A worker re-checks what it holds at least every HELD_CHECK_SECONDS before sending, so a
    claimed row is dropped too; only a message already being transmitted still goes.
    """
    result = session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status.in_(PENDING))
        .values(status="cancelled", last_reply="subscriber opted out", lease_owner=None,
                lease_expires_at=None)
    )
    return result.rowcount


def start_sending(session: Session, issue: Issue, domain: str, default_lang: str) -> int:
    """Freeze the audience and open the issue for workers; its items become published."""
    if issue.status not in ("draft", "scheduled"):
        raise StateError(
            f"issue {issue.number} is {issue.status}; only a draft or scheduled issue can be sent"
        )
    if not issue.renderings:
        raise StateError(f"issue {issue.number} is not rendered: run `mailmag issues render {issue.number}`")
    added = enqueue(session, issue, domain, default_lang)
    issue.status, issue.sent_at, issue.scheduled_at = "sending", utcnow(), None
    item_ids = select(IssueItem.item_id).where(IssueItem.issue_id == issue.id)
    session.execute(update(Item).where(Item.id.in_(item_ids)).values(status="published"))
    return added


def cancel_issue(session: Session, issue: Issue) -> int:
    """Stop what is still queued; what is being sent right now finishes. Returns rows cancelled."""
    if issue.status in ("sent", "cancelled"):
        raise StateError(f"issue {issue.number} is already {issue.status}")
    issue.status = "cancelled"
    return session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue.id, Delivery.status == "queued")
        .values(status="cancelled", last_reply="issue cancelled")
    ).rowcount


def complete_issues(session: Session) -> list[int]:
    """Issues whose every delivery reached a final state become 'sent'; returns their numbers.

    One conditional UPDATE, so an `issues cancel` committed meanwhile is never overwritten.
    """
    unfinished = (
        select(Delivery.id)
        .where(Delivery.issue_id == Issue.id, Delivery.status.in_(PENDING))
        .exists()
    )
    done = session.execute(
        update(Issue).where(Issue.status == "sending", ~unfinished).values(status="sent")
        .returning(Issue.number)
    ).scalars().all()
    return sorted(done)


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


def due_count(session: Session, now: dt.datetime) -> int:
    """Deliveries a worker could claim now (what `worker --once` waits for)."""
    return session.scalar(
        select(func.count())
        .select_from(Delivery)
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Issue.status == "sending", Delivery.status == "queued", Delivery.next_attempt_at <= now)
    ) or 0


def sent_since(session: Session, since: dt.datetime) -> int:
    """Messages sent after `since`, by any worker (the hourly rate limit survives restarts)."""
    return session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.status == "sent", Delivery.sent_at >= since)
    ) or 0


def send_issue(session: Session, issue: Issue, config) -> int:  # type: ignore[no-untyped-def]
    """`issues send`: freeze the audience now with the configured sender domain and language."""
    return start_sending(session, issue, messages.sender_domain(config), config.mailmag.language)


def audience_count(session: Session, issue: Issue) -> int:
    """How many subscribers `send_issue` would queue now (for the confirmation question)."""
    return session.scalar(
        select(func.count()).select_from(Subscriber)
        .where(Subscriber.status == "active", *_topic_filter(issue.topic))
    ) or 0
