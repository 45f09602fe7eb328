"""The subscriber store: addresses, status, and the consent log that is kept forever."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from mailmag import text_ja
from mailmag.addresses import CONTROL, Address, email_hash, parse_address
from mailmag.delivery.outbox import cancel_for_subscriber, settle_opt_out
from mailmag.errors import InvalidInput, NotFound
from mailmag.models import (
    SUBSCRIBER_STATUSES,
    BounceEvent,
    ConsentEvent,
    Delivery,
    Subscriber,
    Suppression,
    utcnow,
)
from mailmag.tokens import PersonLink

LANGS = ("ja", "en")
# Statuses an import or `add` leaves alone unless the person asked again (--resubscribe).
OPTED_OUT = ("unsubscribed", "bounced")
MAX_TEXT = 200  # the name and organization columns' length
Outcome = Literal["added", "updated", "unchanged", "suppressed"]


@dataclasses.dataclass(frozen=True)
class Consent:
    """Where an opt-in or opt-out came from, as the consent log records it."""

    channel: str
    source: str = ""
    ip: str | None = None
    user_agent: str | None = None
    wording_version: str | None = None


def parse_lang(raw: str | None) -> str:
    value = unicodedata.normalize("NFKC", raw or "").strip().lower()
    aliases = {"": "ja", "日本語": "ja", "japanese": "ja", "英語": "en", "english": "en"}
    value = aliases.get(value, value)
    if value not in LANGS:
        raise InvalidInput(f"unknown language {raw!r} (use ja or en)",
                           ja=f"言語「{raw}」には対応していません（ja か en です）")
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


# What a subscriber's fields are called in Japanese sentences (imports name them by COLUMN_NAMES).
_FIELDS_JA = {"name": "氏名", "organization": "所属", "e-mail address": "メールアドレス", "language": "言語",
              "topics": "テーマ"}


def check_text(field: str, value: str) -> str:
    """A name or organization as stored: one line (it goes into mail headers), at most MAX_TEXT."""
    refuse_controls(field, value)
    value = " ".join(text_ja.strip_bidi(value).split())  # an Excel cell with Alt+Enter holds a line break
    if len(value) > MAX_TEXT:
        raise InvalidInput(f"the {field} is {len(value)} characters long (at most {MAX_TEXT})",
                           ja=f"{_FIELDS_JA.get(field, field)}が{len(value)}文字あります"
                              f"（{MAX_TEXT}文字まで）")
    return value


def refuse_controls(field: str, value: str) -> None:
    """NUL and other control characters: PostgreSQL refuses NUL, and none belongs in mail."""
    found = CONTROL.search(value)
    if found:
        raise InvalidInput(f"the {field} holds a control character (U+{ord(found[0]):04X}); remove it",
                           ja=f"{_FIELDS_JA.get(field, field)}に制御文字（U+{ord(found[0]):04X}）"
                              "が含まれています。取り除いてください")


def get(session: Session, raw_email: str) -> Subscriber:
    """The subscriber with this address (case-insensitive), or NotFound."""
    address = parse_address(raw_email)
    subscriber = session.scalar(select(Subscriber).where(Subscriber.email_key == address.key))
    if subscriber is None:
        forgotten = " (it was erased and stays suppressed)" if is_suppressed(
            session, address) else ""
        raise NotFound(f"no subscriber with the address {address.email}{forgotten}",
                       ja=f"メールアドレス「{address.email}」の読者はいません"
                          + ("（消去済みで、送信しないアドレスに入っています）" if forgotten else ""))
    return subscriber


def by_link(session: Session, link: PersonLink) -> Subscriber | None:
    """The subscriber a signed link was made for, or None if that row is gone (purged,
    forgotten) or its id now belongs to someone else: a link never acts on another person."""
    subscriber = session.get(Subscriber, link.subscriber_id)
    if subscriber is None or not link.fits(subscriber.link_key, subscriber.created_at):
        return None
    return subscriber


def opt_out_count(session: Session, subscriber: Subscriber) -> int:
    """How often this subscriber opted out: a confirmation link made before the last one is void."""
    return session.scalar(select(func.count()).select_from(ConsentEvent).where(
        ConsentEvent.subscriber_id == subscriber.id, ConsentEvent.action == "opt_out")) or 0


def is_suppressed(session: Session, address: Address) -> bool:
    return session.scalar(select(Suppression.id).where(Suppression.email_hash == address.hash)) is not None


def add(
    session: Session,
    address: Address,
    consent: Consent,
    *,
    name: str = "",
    organization: str = "",
    lang: str = "",
    topics: Sequence[str] = (),
    pending: bool = False,
    resubscribe: bool = False,
) -> tuple[Outcome, Subscriber | None]:
    """Add or update one subscriber; empty values keep what is stored (a new one gets 'ja').

    Unsubscribed, bounced and forgotten addresses stay suppressed ('suppressed') unless
    `resubscribe` says the person asked again; then an opt-in is logged.
    """
    name, organization = check_text("name", name), check_text("organization", organization)
    existing = session.scalar(select(Subscriber).where(Subscriber.email_key == address.key))
    out = existing.status in OPTED_OUT if existing is not None else is_suppressed(session, address)
    if out and answer_for_out(known=existing is not None, resubscribe=resubscribe) == "suppressed":
        return "suppressed", existing
    if existing is None:
        if out:
            session.execute(delete(Suppression).where(Suppression.email_hash == address.hash))
        subscriber = Subscriber(
            email=address.email, email_key=address.key, name=name, organization=organization,
            lang=lang or "ja", topics=list(topics), status="pending" if pending else "active",
            status_reason="", confirmed_at=None if pending else utcnow(),
        )
        session.add(subscriber)
        session.flush()
        record(session, subscriber, "opt_in", consent)
        return "added", subscriber
    if out:
        come_back(session, existing, "pending" if pending else "active")
        session.execute(delete(Suppression).where(Suppression.email_hash == address.hash))
        record(session, existing, "opt_in", consent)
        _update_fields(existing, name=name, organization=organization, lang=lang, topics=topics)
        return "updated", existing
    changed = _update_fields(existing, name=name, organization=organization, lang=lang, topics=topics)
    return ("updated" if changed else "unchanged"), existing


def answer_for_out(*, known: bool, resubscribe: bool) -> Outcome:
    """What `add` answers for an address that is out (a subscriber who opted out, or an unknown
    address kept suppressed): left out unless `resubscribe`, then back as 'updated' (a known row)
    or 'added'. The import's dry run reports it from here, without add's writes."""
    if not resubscribe:
        return "suppressed"
    return "updated" if known else "added"


def come_back(session: Session, subscriber: Subscriber, status: str) -> None:
    """A reader who had left (unsubscribed, bounced) is back by a new opt-in, as `status` (active,
    or pending until they confirm). What their earlier opt-out stopped stays stopped: an undo of
    that opt-out must not send months-old issues (outbox.settle_opt_out)."""
    subscriber.status, subscriber.status_reason = status, ""
    settle_opt_out(session, subscriber.id)


def field_changes(
    stored: Mapping[str, object], *, name: str, organization: str, lang: str, topics: Sequence[str]
) -> dict[str, object]:
    """What a new name, organization, language or topic list would change; empty keeps stored."""
    wanted = {"name": name, "organization": organization, "lang": lang, "topics": list(topics)}
    return {field: value for field, value in wanted.items() if value and stored[field] != value}


def _update_fields(
    subscriber: Subscriber, *, name: str, organization: str, lang: str, topics: Sequence[str]
) -> bool:
    stored = {field: getattr(subscriber, field) for field in ("name", "organization", "lang", "topics")}
    changes = field_changes(stored, name=name, organization=organization, lang=lang, topics=topics)
    for field, value in changes.items():
        setattr(subscriber, field, value)
    return bool(changes)


CHOSE = "choose"  # the consent log's action for a subscriber's own choice of language and topics


def record(session: Session, subscriber: Subscriber, action: str, consent: Consent) -> None:
    """Append one line to the consent log."""
    session.add(
        ConsentEvent(
            subscriber_id=subscriber.id, email_hash=email_hash(subscriber.email_key),
            action=action, channel=consent.channel, source=consent.source, ip=consent.ip,
            user_agent=consent.user_agent, wording_version=consent.wording_version,
        )
    )


# In the status_reason of a bounced address that then opted out: the bounce's reason follows.
BOUNCED_BEFORE = "; bounced before: "


def unsubscribe(session: Session, subscriber: Subscriber, consent: Consent, reason: str = "") -> bool:
    """Opt out at once, also for deliveries still queued; False if already out (repeatable).
    An opt-out overrides a bounce (nothing may go to them if the bounce is cleared), and keeps
    its reason: the address was found dead, which the list of subscribers still shows.
    Said again while out, it is logged all the same: it is the reader's latest word, which an
    undo in the browser that unsubscribed first must not overturn (helper-60)."""
    if subscriber.status == "unsubscribed":
        record(session, subscriber, "opt_out", consent)
        return False
    bounced = BOUNCED_BEFORE + subscriber.status_reason if subscriber.status == "bounced" else ""
    subscriber.status = "unsubscribed"
    subscriber.status_reason = (reason or f"opted out ({consent.channel})") + bounced
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
    address = Address(subscriber.email, subscriber.email_key)
    if subscriber.status != "unsubscribed":
        record(session, subscriber, "opt_out", consent)
    record(session, subscriber, "forget", consent)
    if not is_suppressed(session, address):
        session.add(Suppression(email_hash=address.hash, reason="forgotten"))
    cancel_for_subscriber(session, subscriber.id)
    _scrub_history(session, subscriber.id, address)
    session.flush()
    # The foreign keys set subscriber_id to NULL in consent_events, deliveries, bounce_events.
    session.delete(subscriber)


def _scrub_history(session: Session, subscriber_id: int, address: Address) -> None:
    """Remove the address from deliveries and bounce reports (relay replies quote it)."""
    pattern = re.compile(re.escape(address.key), re.IGNORECASE)
    for delivery in session.scalars(select(Delivery).where(Delivery.subscriber_id == subscriber_id)):
        delivery.email = ""
        delivery.last_reply = pattern.sub("[forgotten]", delivery.last_reply)
    for bounce in session.scalars(select(BounceEvent).where(BounceEvent.subscriber_id == subscriber_id)):
        bounce.diagnostic = pattern.sub("[forgotten]", bounce.diagnostic)


def listing(session: Session, status: str | None = None) -> list[Subscriber]:
    if status is not None and status not in SUBSCRIBER_STATUSES:
        raise InvalidInput(f"unknown status {status!r} (use {', '.join(SUBSCRIBER_STATUSES)})",
                           ja=f"状態「{status}」はありません"
                              f"（{'、'.join(SUBSCRIBER_STATUSES)} のいずれかです）")
    query = select(Subscriber).order_by(Subscriber.id)
    if status:
        query = query.where(Subscriber.status == status)
    return list(session.scalars(query))
