"""Opt-in on the public form (double opt-in with limits), confirmation, preferences, purge.

The web app calls these, and so can the CLI and the scheduler. What happens to a request
never shows in the answer (no enumeration): the caller gets back the mail to send, if any,
and says the same thing to the person in every case.

    request ──▶ new or pending address ─▶ "confirm" mail (a signed link, 72 h)
            ──▶ known address (active, unsubscribed, bounced) ─▶ "known" mail (preferences link)
            ──▶ over a limit, or a bot (honeypot) ─▶ no mail
    confirm ──▶ pending becomes active, the consent log says when, from where, which wording
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from mailmag import topics
from mailmag.audience import subscribers
from mailmag.audience.subscribers import Address, Consent
from mailmag.errors import InvalidInput
from mailmag.models import ConsentEvent, SubscribeAttempt, Subscriber, Suppression, utcnow

# The topic rule lives in mailmag.topics; these names stay for the web views.
Topic = topics.Topic
parse_topics_setting = topics.parse_setting


def choose_topics(raw: Sequence[str], offered: Sequence[Topic]) -> list[str]:
    """The topic codes a form sent, checked against those offered; sorted, no duplicates."""
    return topics.check_codes(raw, offered)


@dataclasses.dataclass(frozen=True)
class Limits:
    """The public form's limits ([web] confirm_per_address_per_day, subscribe_per_ip_per_hour)."""

    per_address_per_day: int = 1
    per_ip_per_hour: int = 10


@dataclasses.dataclass(frozen=True)
class Mail:
    """A mail the request calls for: 'confirm' (pending address) or 'known' (already on the list)."""

    kind: Literal["confirm", "known"]
    attempt_id: int
    subscriber_id: int
    email: str
    lang: str


def request_subscription(
    session: Session,
    address: Address,
    consent: Consent,
    *,
    limits: Limits,
    name: str = "",
    organization: str = "",
    lang: str = "ja",
    topics: Sequence[str] = (),
    bot: bool = False,
    now: dt.datetime | None = None,
) -> Mail | None:
    """Handle one subscribe form submission; returns the mail to send, or None.

    Every request is recorded (SubscribeAttempt) so the limits hold across processes. A new
    address becomes pending; an address already on the list is not changed (the form proves
    nothing), its owner gets a mail with their preferences link instead.
    """
    now = now or utcnow()
    ip = consent.ip or ""
    attempt = SubscribeAttempt(email_hash=address.hash, ip=ip, mailed=False, at=now)
    if bot or _over_limits(session, address, ip, limits, now):
        session.add(attempt)
        session.flush()
        return None
    existing = session.scalar(select(Subscriber).where(Subscriber.email_key == address.key))
    if existing is None or existing.status == "pending":
        subscriber = _pending(session, address, consent, existing, name, organization, lang, topics)
        kind: Literal["confirm", "known"] = "confirm"
    else:
        subscriber, kind = existing, "known"
    attempt.mailed = True
    session.add(attempt)
    session.flush()
    return Mail(kind, attempt.id, subscriber.id, subscriber.email, subscriber.lang)


def _over_limits(session: Session, address: Address, ip: str, limits: Limits, now: dt.datetime) -> bool:
    mailed_today = session.scalar(
        select(func.count()).select_from(SubscribeAttempt).where(
            SubscribeAttempt.email_hash == address.hash, SubscribeAttempt.mailed.is_(True),
            SubscribeAttempt.at > now - dt.timedelta(days=1),
        )
    ) or 0
    from_ip = session.scalar(
        select(func.count()).select_from(SubscribeAttempt).where(
            SubscribeAttempt.ip == ip, SubscribeAttempt.at > now - dt.timedelta(hours=1),
        )
    ) or 0
    return bool(mailed_today >= limits.per_address_per_day or from_ip >= limits.per_ip_per_hour)


def _pending(
    session: Session, address: Address, consent: Consent, existing: Subscriber | None,
    name: str, organization: str, lang: str, topics: Sequence[str],
) -> Subscriber:
    """A new pending subscriber, or the pending one updated; each request is an opt_in record."""
    if existing is not None:
        existing.name, existing.organization = name, organization
        existing.lang, existing.topics = lang, list(topics)
        subscribers.record(session, existing, "opt_in", consent)
        return existing
    # A forgotten address stays suppressed until its owner confirms: a form is no consent.
    kept = session.scalar(select(Suppression).where(Suppression.email_hash == address.hash))
    reason = kept.reason if kept is not None else None
    _, subscriber = subscribers.add(
        session, address, consent, name=name, organization=organization, lang=lang,
        topics=topics, pending=True, resubscribe=True,
    )
    if reason is not None:
        session.add(Suppression(email_hash=address.hash, reason=reason))
    assert subscriber is not None  # add() with resubscribe always returns one
    return subscriber


def mail_failed(session: Session, attempt_id: int) -> None:
    """The mail an attempt asked for could not be sent: it does not count against the address."""
    attempt = session.get(SubscribeAttempt, attempt_id)
    if attempt is not None:
        attempt.mailed = False


def confirm(session: Session, subscriber: Subscriber, consent: Consent) -> bool:
    """Double opt-in completed: pending → active, and any old suppression lifted. False if not pending."""
    if not subscribers.confirm(session, subscriber, consent):
        return False
    digest = subscribers.email_hash(subscriber.email_key)
    session.execute(delete(Suppression).where(Suppression.email_hash == digest))
    return True


def update_preferences(session: Session, subscriber: Subscriber, lang: str, topics: Sequence[str]) -> bool:
    """Language and topics from the preferences page (no topics: every issue); True if changed."""
    lang = subscribers.parse_lang(lang)
    topics = sorted(set(topics))
    if (subscriber.lang, list(subscriber.topics)) == (lang, topics):
        return False
    subscriber.lang, subscriber.topics = lang, topics
    return True


def resubscribe(session: Session, subscriber: Subscriber, consent: Consent) -> bool:
    """An unsubscribed, bounced or pending subscriber asks (from a link mailed to them) to receive again."""
    if subscriber.status == "active":
        return False
    if subscriber.status == "pending":
        return confirm(session, subscriber, consent)
    address = Address(subscriber.email, subscriber.email_key)
    subscribers.add(session, address, consent, resubscribe=True)
    return True


def purge_pending(session: Session, older_than_hours: int, now: dt.datetime | None = None) -> int:
    """Delete subscribers who never confirmed, and subscribe attempts (IP addresses), older than
    `older_than_hours`; the consent log keeps its records. Returns the subscribers deleted."""
    if older_than_hours < 1:
        raise InvalidInput("purge_pending_after_hours must be at least 1")
    cutoff = (now or utcnow()) - dt.timedelta(hours=older_than_hours)
    # Attempts are needed for a day at most (the per-address limit); never purge them sooner.
    attempts_cutoff = min(cutoff, (now or utcnow()) - dt.timedelta(days=1))
    session.execute(delete(SubscribeAttempt).where(SubscribeAttempt.at < attempts_cutoff))
    # Each request is an opt_in record: someone who asked again recently is kept.
    recent = select(ConsentEvent.id).where(
        ConsentEvent.subscriber_id == Subscriber.id, ConsentEvent.at >= cutoff
    ).exists()
    stale = select(Subscriber.id).where(
        Subscriber.status == "pending", Subscriber.created_at < cutoff, ~recent
    )
    ids = list(session.scalars(stale))
    if ids:
        session.execute(
            delete(Subscriber).where(Subscriber.id.in_(ids)), execution_options={"synchronize_session": False}
        )
    return len(ids)
