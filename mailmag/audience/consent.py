"""Opt-in on the public form (double opt-in with limits), confirmation, preferences, purge.

The web app calls these, and so can the CLI and the scheduler. What happens to a request
never shows in the answer (no enumeration): the caller gets back the mail to send, if any,
and says the same thing to the person in every case.

    request ──▶ new, pending or opted-out address ─▶ "confirm" mail (a signed link, 72 h)
            ──▶ active address ─▶ "known" mail (preferences link)
            ──▶ a bot (honeypot) ─▶ no mail;  over a limit ─▶ no mail, nothing stored
    confirm ──▶ active; the consent log says when, from where, which wording

Opting back in after an unsubscribe or a bounce is a new opt-in (特定電子メール法): it
always goes through this confirmation mail, whoever asks (a preferences link may sit in a
forwarded mail). The one shortcut is `undo_unsubscribe`, which the web app allows only
in the browser session that unsubscribed, within minutes.

The limits key on what a person cannot vary for free: the address without case, full-width
forms or a +tag (`limit_key`), and for IPv6 the /64 a host is given (`limit_ip`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailmag import addresses, db, topics
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
    link_key: str = ""  # the subscriber row's key: the mail's link is made for that row only
    opt_outs: int = 0  # the row's opt-outs when asked: a later one voids the confirmation link


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
    """Handle one subscribe form submission; returns the mail to send, or None. A name or an
    organization that cannot be stored is refused (InvalidInput) whatever the address.

    Every request within the limits is recorded (SubscribeAttempt) so the limits hold across
    processes; one over a limit stores nothing. A new address becomes pending; an address
    already on the list is not changed (the form proves nothing): an active one's owner gets
    their preferences link, an opted-out one a confirmation link (the request an `ask` line in
    the consent log).
    """
    # Checked before anything is looked up: refused for a known address and a new one alike, or
    # the answer would tell a stranger which addresses are on the list (helper-94).
    name = subscribers.check_text("name", name)
    organization = subscribers.check_text("organization", organization)
    now = now or utcnow()
    ip = limit_ip(consent.ip or "")
    key_hash = addresses.email_hash(limit_key(address))
    # One request for an address at a time: side by side on PostgreSQL, two for one new address
    # both found none and both inserted (the second a 500, which told a stranger the address was
    # new), and a burst counted the daily limit before any of its attempts was written
    # (helper-97). Per address, so one slow request holds up no other address (helper-99); and
    # per client before that, or a burst from one client for many addresses counted the hour's
    # attempts before any was written (15 mails against a limit of 3). Always in this order.
    db.one_at_a_time(session, f"subscribe-ip:{ip}")
    db.one_at_a_time(session, f"subscribe:{key_hash}")
    if _over_limits(session, key_hash, ip, limits, now):
        return None
    attempt = SubscribeAttempt(email_hash=key_hash, ip=ip, mailed=False, at=now)
    session.add(attempt)
    if bot:
        session.flush()
        return None
    existing = _stored(session, address)
    subscriber = None
    if existing is None:
        try:
            with session.begin_nested():
                subscriber = _pending(session, address, consent, None, name, organization, lang, topics)
        except IntegrityError:  # added meanwhile: a PostgreSQL import of a file holding it was a 500
            existing = _stored(session, address)  # (helper-102); the answer is the form's usual one
    kind: Literal["confirm", "known"] = "confirm"
    if existing is not None and existing.status == "pending":
        subscriber = _pending(session, address, consent, existing, name, organization, lang, topics)
    elif existing is not None:
        subscriber = existing
        kind = "known" if existing.status == "active" else "confirm"
        if kind == "confirm":  # asking is no opt-in, but the log keeps it and its wording (helper-94)
            subscribers.record(session, existing, ASK, consent)
    assert subscriber is not None
    attempt.mailed = True
    session.flush()
    return Mail(kind, attempt.id, subscriber.id, subscriber.email, subscriber.lang, subscriber.link_key,
                subscribers.opt_out_count(session, subscriber))


def _stored(session: Session, address: Address) -> Subscriber | None:
    return session.scalar(select(Subscriber).where(Subscriber.email_key == address.key))


def request_resubscription(session: Session, subscriber: Subscriber, consent: Consent, *, limits: Limits,
                           now: dt.datetime | None = None) -> Mail | None:
    """Someone on the preferences page asks to receive again: the same path and limits as the
    form, so only a click in the confirmation mail sent to the address makes it happen."""
    address = Address(subscriber.email, subscriber.email_key)
    return request_subscription(session, address, consent, limits=limits, name=subscriber.name,
                                organization=subscriber.organization, lang=subscriber.lang,
                                topics=subscriber.topics, now=now)


def limit_key(address: Address) -> str:
    """The address as the limits see it: NFKC and lower case (parse_address did both) and
    no +tag, which most providers deliver to the same mailbox; for Gmail no dots either."""
    local, _, domain = address.key.rpartition("@")
    local = local.split("+", 1)[0] or local
    if domain in ("gmail.com", "googlemail.com"):
        local = local.replace(".", "")
    return f"{local}@{domain}"


def limit_ip(ip: str) -> str:
    """The client as the per-IP limit sees it: an IPv4 address, or the /64 of an IPv6 one
    (a host is handed a whole /64 and can pick a new address in it for each request)."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


# The consent log's line for a confirmation mail asked for by an opted-out address (on the form,
# or on the preferences page): a request, no opt-in, until its link is pressed.
ASK = "ask"
# A confirmation mail not sent this long after it was asked for is taken as lost (it waited in
# a web process that stopped: kill -TERM or -9 while the relay was slow, helper-94): it stops
# counting against its address until it is sent after all. A queue longer than this behind a
# relay that answers nothing ([smtp] timeout_seconds a mail: 30 mails at 30 s) may send one more
# mail to an address asked for again meanwhile (helper-99); a lost one is worse.
MAIL_LOST_AFTER = dt.timedelta(minutes=15)


def _over_limits(session: Session, key_hash: str, ip: str, limits: Limits, now: dt.datetime) -> bool:
    mailed_today = session.scalar(
        select(func.count()).select_from(SubscribeAttempt).where(
            SubscribeAttempt.email_hash == key_hash, SubscribeAttempt.mailed.is_(True),
            SubscribeAttempt.at > now - dt.timedelta(days=1),
            SubscribeAttempt.sent.is_(True) | (SubscribeAttempt.at > now - MAIL_LOST_AFTER),
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


def mail_sent(session: Session, attempt_id: int) -> None:
    """The mail an attempt asked for left: it counts against the address however late it went."""
    session.execute(update(SubscribeAttempt).where(SubscribeAttempt.id == attempt_id).values(sent=True))


def confirm(session: Session, subscriber: Subscriber, consent: Consent, *,
            without_details: bool = False) -> bool:
    """Double opt-in completed: pending, unsubscribed or bounced → active, any suppression
    lifted, a `confirm` line in the consent log. False if it was active already.
    `without_details`: the person did not give the name and organization the form was sent
    with (anyone can type an address into it), so they are not kept."""
    if subscriber.status == "active":
        return False
    if without_details:
        subscriber.name = subscriber.organization = ""
    if subscriber.status != "pending":  # opting back in: the confirmation mail was the consent
        subscribers.come_back(session, subscriber, "pending")
    subscribers.confirm(session, subscriber, consent)
    digest = addresses.email_hash(subscriber.email_key)
    session.execute(delete(Suppression).where(Suppression.email_hash == digest))
    return True


def wording_agreed(session: Session, subscriber: Subscriber) -> str | None:
    """The consent wording the person was shown when they asked for the mail they now confirm:
    that of their last request (the form's; none on the preferences page: helper-94)."""
    last = session.execute(
        select(ConsentEvent.action, ConsentEvent.wording_version)
        .where(ConsentEvent.subscriber_id == subscriber.id,
               ConsentEvent.action.in_(("opt_in", ASK, "opt_out")))
        .order_by(ConsentEvent.at.desc(), ConsentEvent.id.desc()).limit(1)
    ).first()
    return last.wording_version if last is not None and last.action != "opt_out" else None


def confirmation_current(session: Session, subscriber: Subscriber, opt_outs: object) -> bool:
    """Whether a confirmation link made when the subscriber had `opt_outs` opt-outs may still
    confirm: not if they opted out since (a link mailed before an unsubscribe must not undo it)."""
    return opt_outs == subscribers.opt_out_count(session, subscriber)


def last_recorded(session: Session, subscriber: Subscriber, action: str | None = None) -> dt.datetime | None:
    """When the consent log last recorded anything for the subscriber (with `action`: that only,
    e.g. "opt_out"); None if never."""
    recorded = select(func.max(ConsentEvent.at)).where(ConsentEvent.subscriber_id == subscriber.id)
    if action is not None:
        recorded = recorded.where(ConsentEvent.action == action)
    return session.scalar(recorded)


def undo_unsubscribe(session: Session, subscriber: Subscriber, consent: Consent) -> bool:
    """Take back an unsubscribe just made (the caller checks who and how recently); the
    consent log gets an opt_in saying so. A reader whose address had bounced is bounced again.
    False unless the subscriber is unsubscribed. (scheduling.sending.take_back_unsubscribe also
    sends them the issue the unsubscribe stopped.)"""
    if subscriber.status != "unsubscribed":
        return False
    _, bounced, reason = subscriber.status_reason.partition(subscribers.BOUNCED_BEFORE)
    subscriber.status, subscriber.status_reason = ("bounced", reason) if bounced else ("active", "")
    subscribers.record(session, subscriber, "opt_in", consent)
    return True


def update_preferences(session: Session, subscriber: Subscriber, lang: str, topics: Sequence[str],
                       consent: Consent | None = None) -> bool:
    """Language and topics from the preferences page (no topics: every issue); True if changed.
    `consent` (the page's request) records the change as the subscriber's own choice ("choose"):
    an office list imported later keeps it (imports)."""
    lang = subscribers.parse_lang(lang)
    topics = sorted(set(topics))
    if (subscriber.lang, list(subscriber.topics)) == (lang, topics):
        return False
    subscriber.lang, subscriber.topics = lang, topics
    if consent is not None:
        subscribers.record(session, subscriber, subscribers.CHOSE, consent)
    return True


def purge_pending(session: Session, older_than_hours: int, now: dt.datetime | None = None) -> int:
    """Delete subscribers who never confirmed, and subscribe attempts (IP addresses), older than
    `older_than_hours`; the consent log keeps its records. Returns the subscribers deleted."""
    if older_than_hours < 1:
        raise InvalidInput("purge_pending_after_hours must be at least 1",
                           ja="purge_pending_after_hours は1以上にしてください")
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
