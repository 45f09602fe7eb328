"""The subscriber store: addresses, status, and the consent log that is kept forever."""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Literal

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from mailmag.delivery.outbox import cancel_for_subscriber
from mailmag.errors import InvalidEmail, InvalidInput, NotFound, StateError
from mailmag.models import (
    SUBSCRIBER_STATUSES,
    BounceEvent,
    ConsentEvent,
    Delivery,
    Subscriber,
    Suppression,
    utcnow,
)

LANGS = ("ja", "en")
Outcome = Literal["added", "updated", "unchanged", "suppressed"]


@dataclasses.dataclass(frozen=True)
class Address:
    """A validated address: `email` as stored (domain lower-cased), `key` for uniqueness."""

    email: str
    key: str

    @property
    def hash(self) -> str:
        return email_hash(self.key)


@dataclasses.dataclass(frozen=True)
class Consent:
    """Where an opt-in or opt-out came from, as the consent log records it."""

    channel: str
    source: str = ""
    ip: str | None = None
    user_agent: str | None = None
    wording_version: str | None = None


def parse_address(raw: str) -> Address:
    """Validate an address; repair full-width ＠, letters and surrounding spaces first."""
    # NFKC turns ＠ and full-width ASCII into their plain forms; 全角 spaces become spaces.
    cleaned = unicodedata.normalize("NFKC", raw or "").strip().strip("<>").strip()
    if not cleaned:
        raise InvalidEmail("the e-mail address is empty")
    try:
        result = validate_email(cleaned, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(f"invalid e-mail address {cleaned!r}: {exc}") from exc
    email = f"{result.local_part}@{result.domain.lower()}"
    return Address(email=email, key=email.lower())


def email_hash(key: str) -> str:
    """The hash that stands for an address in suppressions and forgotten consent records."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_lang(raw: str | None) -> str:
    value = (raw or "").strip().lower()
    aliases = {"": "ja", "日本語": "ja", "japanese": "ja", "英語": "en", "english": "en"}
    value = aliases.get(value, value)
    if value not in LANGS:
        raise InvalidInput(f"unknown language {raw!r} (use ja or en)")
    return value


def parse_topics(raw: str | Iterable[str] | None) -> list[str]:
    """Topics from a cell ('news;events', 'news、events') or a list; sorted, no duplicates."""
    if raw is None:
        return []
    parts = [raw] if isinstance(raw, str) else list(raw)
    topics: set[str] = set()
    for part in parts:
        for sep in "、,;，；　":
            part = part.replace(sep, " ")
        topics.update(p for p in part.split() if p)
    return sorted(topics)


def get(session: Session, raw_email: str) -> Subscriber:
    """The subscriber with this address (case-insensitive), or NotFound."""
    address = parse_address(raw_email)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email_key == address.key))
    if subscriber is None:
        raise NotFound(f"no subscriber with the address {address.email}")
    return subscriber


def is_suppressed(session: Session, address: Address) -> bool:
    return session.scalar(select(Suppression.id).where(Suppression.email_hash == address.hash)) is not None


def add(
    session: Session,
    address: Address,
    consent: Consent,
    *,
    name: str = "",
    organization: str = "",
    lang: str = "ja",
    topics: Sequence[str] = (),
    pending: bool = False,
    resubscribe: bool = False,
) -> tuple[Outcome, Subscriber | None]:
    """Add or update one subscriber. Unsubscribed, bounced and forgotten addresses stay
    suppressed ('suppressed') unless `resubscribe` says the person asked again."""
    existing = session.scalar(select(Subscriber).where(Subscriber.email_key == address.key))
    if existing is None:
        if is_suppressed(session, address):
            if not resubscribe:
                return "suppressed", None
            session.execute(delete(Suppression).where(Suppression.email_hash == address.hash))
        status = "pending" if pending else "active"
        subscriber = Subscriber(
            email=address.email, email_key=address.key, name=name, organization=organization,
            lang=lang, topics=list(topics), status=status,
            confirmed_at=None if pending else utcnow(),
        )
        session.add(subscriber)
        session.flush()
        record(session, subscriber, "opt_in", consent)
        return "added", subscriber
    if existing.status in ("unsubscribed", "bounced"):
        if not resubscribe:
            return "suppressed", existing
        existing.status, existing.status_reason = "active", ""
        session.execute(delete(Suppression).where(Suppression.email_hash == address.hash))
        record(session, existing, "opt_in", consent)
        _update_fields(existing, name, organization, lang, topics)
        return "updated", existing
    changed = _update_fields(existing, name, organization, lang, topics)
    return ("updated" if changed else "unchanged"), existing


def _update_fields(
    subscriber: Subscriber, name: str, organization: str, lang: str, topics: Sequence[str]
) -> bool:
    """Overwrite what the caller gave (empty values keep what is stored); True if changed."""
    wanted = {"name": name, "organization": organization, "lang": lang, "topics": list(topics)}
    changed = False
    for attr, value in wanted.items():
        if value and getattr(subscriber, attr) != value:
            setattr(subscriber, attr, value)
            changed = True
    return changed


def record(session: Session, subscriber: Subscriber, action: str, consent: Consent) -> None:
    """Append one line to the consent log."""
    session.add(
        ConsentEvent(
            subscriber_id=subscriber.id, email_hash=email_hash(subscriber.email_key),
            action=action, channel=consent.channel, source=consent.source, ip=consent.ip,
            user_agent=consent.user_agent, wording_version=consent.wording_version,
        )
    )


def unsubscribe(session: Session, subscriber: Subscriber, consent: Consent, reason: str = "") -> bool:
    """Opt out at once, also for deliveries still queued; False if already out (repeatable)."""
    if subscriber.status == "unsubscribed":
        return False
    subscriber.status = "unsubscribed"
    subscriber.status_reason = reason or f"opted out ({consent.channel})"
    record(session, subscriber, "opt_out", consent)
    cancel_for_subscriber(session, subscriber.id)
    return True


def confirm(session: Session, subscriber: Subscriber, consent: Consent) -> bool:
    """Double opt-in: a pending subscriber becomes active; False if it was not pending."""
    if subscriber.status != "pending":
        return False
    subscriber.status = "active"
    subscriber.confirmed_at = utcnow()
    record(session, subscriber, "confirm", consent)
    return True


def forget(session: Session, subscriber: Subscriber, consent: Consent) -> None:
    """Erase personal data; keep a hashed suppression and the consent log (without PII)."""
    digest = email_hash(subscriber.email_key)
    if subscriber.status != "unsubscribed":
        record(session, subscriber, "opt_out", consent)
    record(session, subscriber, "forget", consent)
    if not is_suppressed(session, Address(subscriber.email, subscriber.email_key)):
        session.add(Suppression(email_hash=digest, reason="forgotten"))
    cancel_for_subscriber(session, subscriber.id)
    session.execute(
        update(Delivery).where(Delivery.subscriber_id == subscriber.id).values(email="")
    )
    session.execute(
        update(BounceEvent).where(BounceEvent.subscriber_id == subscriber.id).values(diagnostic="")
    )
    session.delete(subscriber)


def listing(session: Session, status: str | None = None) -> list[Subscriber]:
    if status is not None and status not in SUBSCRIBER_STATUSES:
        raise InvalidInput(f"unknown status {status!r} (use {', '.join(SUBSCRIBER_STATUSES)})")
    query = select(Subscriber).order_by(Subscriber.id)
    if status:
        query = query.where(Subscriber.status == status)
    return list(session.scalars(query))


def require_status(subscriber: Subscriber, *allowed: str) -> None:
    if subscriber.status not in allowed:
        raise StateError(f"{subscriber.email} is {subscriber.status}")
