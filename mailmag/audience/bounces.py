"""Bounces, complaints and mailto unsubscribes: hard bounces suppress at once, soft ones count.

    mailbox message ──reports.read──▶ Reading ──match──▶ subscriber (+ delivery) ──record──▶
        hard        → suppress(): status bounced, consent opt-out (bounce), suppression, queued cancelled
        soft        → counted; soft_threshold deliveries within soft_window_days → suppress()
        complaint   → unsubscribed (reason complaint) + suppression, consent channel complaint
        unsubscribe → with its signed tag: unsubscribed, consent channel mailto
                      without (typed by hand): answered with the subscriber's own unsubscribe
                      link (send_unsubscribe_links); its From may be forged, so nothing changes

A report maps to its delivery by our VERP envelope address first (a forged tag is refused,
never trusted), then by the Message-ID of the returned original. A report that only names an
address is left for a person: anyone can write to the bare bounce address.
Mailboxes are only read: each report is recorded once under its source_key, so processing the
same mailbox again changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import mailbox
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from mailmag import addresses, db, links, tokens
from mailmag.addresses import parse_address
from mailmag.audience import notices, reports, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import Config
from mailmag.delivery.outbox import cancel_for_subscriber
from mailmag.delivery.transports import MAILBOX, PermanentFailure, TemporaryFailure
from mailmag.errors import InvalidEmail, InvalidInput, MailmagError, NotFound
from mailmag.models import BounceEvent, ConsentEvent, Delivery, Issue, Subscriber, Suppression, utcnow
from mailmag.services import Services

log = logging.getLogger(__name__)

COUNTERS = {"hard": "hard", "soft": "soft", "complaint": "complaints", "unsubscribe": "unsubscribes"}
OUT = ("bounced", "unsubscribed")
CLOCK_SKEW = dt.timedelta(minutes=10)


@dataclasses.dataclass(frozen=True)
class Event:
    """One report recorded: who, what, how it was matched and what it did."""

    key: str
    kind: str
    email: str
    code: str
    matched_by: str  # verp | message-id | address | tag | sender (a mailto request without a tag)
    action: str
    # the addresses a report matched by its tag or Message-ID names, when none is the reader's
    # (a forwarding mailbox, or a report about someone else: the match stands, helper-95)
    names_instead: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Ask:
    """A mailto request without a tag, from a subscriber's exact address: it is answered with
    that subscriber's unsubscribe link, which only the mailbox's owner can follow."""

    where: str  # the message in the mailbox
    event_id: int  # its claim: the BounceEvent written as it was read ("being sent")
    detail: str
    subscriber_id: int
    email: str
    link_key: str
    lang: str


@dataclasses.dataclass
class Report:
    """What one `process_mailbox` run did; unmatched and unreadable messages stay for a person."""

    hard: int = 0
    soft: int = 0
    complaints: int = 0
    unsubscribes: int = 0
    asked: int = 0  # requests without a tag answered with the subscriber's unsubscribe link
    duplicates: int = 0
    events: list[Event] = dataclasses.field(default_factory=list)
    asks: list[Ask] = dataclasses.field(default_factory=list)  # to answer (send_unsubscribe_links)
    unmatched: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    unreadable: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    unanswered: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # read again next run

    def summary(self) -> str:
        return (
            f"hard {self.hard}, soft {self.soft}, complaints {self.complaints}, "
            f"unsubscribes {self.unsubscribes}, asked to confirm {self.asked}, duplicates {self.duplicates}, "
            f"unmatched {len(self.unmatched)}, unreadable {len(self.unreadable)}"
            + (f", unanswered {len(self.unanswered)}" if self.unanswered else "")
        )

    def as_dict(self) -> dict[str, Any]:
        counts = {name: getattr(self, name) for name in (*COUNTERS.values(), "asked", "duplicates")}
        return {
            **counts,
            "events": [dataclasses.asdict(e) for e in self.events],
            "unmatched": [{"message": k, "reason": r} for k, r in self.unmatched],
            "unreadable": [{"message": k, "reason": r} for k, r in self.unreadable],
            "unanswered": [{"message": k, "reason": r} for k, r in self.unanswered],
        }


@dataclasses.dataclass(frozen=True)
class _Match:
    subscriber: Subscriber
    delivery_id: int | None
    by: str


# --- the rules ------------------------------------------------------------------------------


def suppress(session: Session, subscriber: Subscriber, reason: str) -> bool:
    """The hard-bounce rule, the one place an address is suppressed for bouncing: status
    bounced with the reason, an opt-out in the consent log, a hashed suppression, queued
    deliveries cancelled. False if the subscriber was already out."""
    if subscriber.status in OUT:
        return False
    subscriber.status, subscriber.status_reason = "bounced", reason[:500]
    subscribers.record(session, subscriber, "opt_out", Consent("bounce", reason[:200]))
    _add_suppression(session, subscriber, "bounced")
    cancel_for_subscriber(session, subscriber.id, "subscriber's address bounced")
    return True


def record_smtp_rejection(session: Session, delivery_id: int, subscriber_id: int | None,
                          failure: PermanentFailure, config: Config | None = None) -> None:
    """A refusal of the address during dispatch: a hard bounce suppresses it at once; a full
    mailbox (`failure.kind` "mailbox", with `config`) counts as a soft bounce."""
    key = f"smtp:{delivery_id}"
    if _seen(session, key):
        return
    reply = " ".join(str(failure.reply).split())
    soft = failure.kind == MAILBOX and config is not None
    event = BounceEvent(subscriber_id=subscriber_id, delivery_id=delivery_id, kind="soft" if soft else "hard",
                        code=str(failure.code), diagnostic=reply[:1000], source_key=key)
    session.add(event)
    subscriber = session.get(Subscriber, subscriber_id) if subscriber_id else None
    if subscriber is None:
        return
    if soft and config is not None:
        session.flush()
        _soft(session, subscriber, event, config)
    else:
        suppress(session, subscriber, f"rejected when sent: {failure.code} {reply}")


def _soft(session: Session, subscriber: Subscriber, event: BounceEvent, config: Config) -> str:
    """Count soft bounces, one per delivery, since the subscriber last opted in: `soft_threshold`
    of them within any `soft_window_days` suppresses the address, in whatever order they come."""
    if subscriber.status in OUT:
        return f"already {subscriber.status}"
    window = dt.timedelta(days=config.bounces.soft_window_days)
    threshold = config.bounces.soft_threshold
    opted_in = session.scalar(
        select(func.max(ConsentEvent.at)).where(
            ConsentEvent.subscriber_id == subscriber.id, ConsentEvent.action.in_(("opt_in", "confirm"))
        )
    )
    query = select(BounceEvent.id, BounceEvent.delivery_id, BounceEvent.at).where(
        BounceEvent.subscriber_id == subscriber.id, BounceEvent.kind == "soft",
        BounceEvent.at >= event.at - window, BounceEvent.at <= event.at + window,
    )
    if opted_in is not None:  # a report's Date has second precision and another server's clock
        query = query.where(BounceEvent.at >= opted_in - CLOCK_SKEW)
    first: dict[object, dt.datetime] = {}
    for row in session.execute(query):
        key = row.delivery_id or f"event {row.id}"
        first[key] = min(row.at, first.get(key, row.at))
    times = sorted(first.values())
    most = max((sum(1 for t in times[i:] if t - start <= window) for i, start in enumerate(times)), default=0)
    if most >= threshold:
        reason = f"{most} soft bounces within {config.bounces.soft_window_days} days (last {event.code})"
        suppress(session, subscriber, f"{reason}: {event.diagnostic}")
        return "suppressed"
    return f"counted ({most} of {threshold} within {config.bounces.soft_window_days} days)"


def _complaint(session: Session, subscriber: Subscriber, source: str) -> str:
    """A spam complaint: never mail again unless they subscribe anew (a suppression stays)."""
    changed = subscribers.unsubscribe(session, subscriber, Consent("complaint", source[:200]),
                                      reason=f"complaint: {source}"[:500])
    _add_suppression(session, subscriber, "complaint")
    return "unsubscribed" if changed else "already unsubscribed"


def _add_suppression(session: Session, subscriber: Subscriber, reason: str) -> None:
    digest = addresses.email_hash(subscriber.email_key)
    if session.scalar(select(Suppression.id).where(Suppression.email_hash == digest)) is None:
        session.add(Suppression(email_hash=digest, reason=reason))


def _seen(session: Session, key: str) -> bool:
    return session.scalar(select(BounceEvent.id).where(BounceEvent.source_key == key)) is not None


# --- processing a mailbox -------------------------------------------------------------------


def process_mailbox(
    session: Session, path: str | Path, config: Config, secret: tokens.Keys, now: dt.datetime | None = None
) -> Report:
    """Read every message of a Maildir or mbox, record what it reports; never change the mailbox."""
    box, name = open_mailbox(Path(path))
    report = Report()
    now = now or utcnow()
    try:
        for key in sorted(box.keys(), key=_arrival):
            reading = _read(box, key, name(key), addresses.unsubscribe_address(config).lower(), report)
            if reading is None:
                continue
            try:
                with session.begin_nested():  # one message's bad data must not undo the run's others
                    _process(session, name(key), reading, config, secret, now, report)
            except DataError as exc:
                report.unreadable.append((name(key), f"could not be recorded: {exc.orig}".strip()))
            except IntegrityError:  # another run, at the same time, recorded this very message
                report.duplicates += 1
            except OperationalError as exc:  # ... or is recording it: its insert waits for ours
                if not db.waited_on_another(exc):
                    raise
                report.unanswered.append((name(key), "another run was recording this message at the same "
                                                     "time; it is read again on the next run"))
    finally:
        box.close()
    return report


# A Maildir file is named for when it arrived: seconds, then (Python, Postfix, Dovecot) an
# "M" and the microseconds, written without leading zeros, so "M99999" sorts after "M100000"
# as text. Reports are read, and listed for the user, in the order they arrived.
_MAILDIR_NAME = re.compile(r"(\d+)\.(?:[^.]*?M(\d+))?")


def _arrival(key: Any) -> tuple[int, int, str]:
    """Where a mailbox key comes in arrival order: an mbox's number, or a Maildir name's time."""
    if isinstance(key, int):
        return key, 0, ""
    match = _MAILDIR_NAME.match(key)
    if match is None:
        return 0, 0, key
    return int(match[1]), int(match[2] or 0), key


def _read(
    box: mailbox.Mailbox, key: Any, where: str, unsubscribe: str, report: Report
) -> reports.Reading | None:
    try:
        return reports.read(box.get_bytes(key), unsubscribe)
    except (OSError, mailbox.Error, reports.Unreadable) as exc:
        report.unreadable.append((where, str(exc) or type(exc).__name__))
    except Exception as exc:  # one malformed message must not stop the others
        log.warning("bounce message %s could not be read", where, exc_info=True)
        report.unreadable.append((where, f"could not be read: {type(exc).__name__}: {exc}"))
    return None


def _process(session: Session, where: str, reading: reports.Reading, config: Config, secret: tokens.Keys,
             now: dt.datetime, report: Report) -> None:
    if reading.kind == "other":
        why = reading.detail or "not a bounce report, complaint or unsubscribe request"
        report.unmatched.append((where, f"{why} ({reading.label})"))
        return
    if _seen(session, reading.source_key) and not _dropped_stale_claim(session, reading.source_key, now):
        report.duplicates += 1
        return
    found = _match(session, reading, config, secret)
    if isinstance(found, str):
        report.unmatched.append((where, f"{reading.kind}: {found} ({reading.label})"))
        return
    if found.by == "sender":
        _ask(session, where, found.subscriber, reading, now, report)
        return
    at = min(reading.at or now, now)
    event = BounceEvent(
        subscriber_id=found.subscriber.id, delivery_id=found.delivery_id, kind=reading.kind,
        code=reading.failures[0].code if reading.failures else "", diagnostic=reading.detail[:1000],
        source_key=reading.source_key, at=at,
    )
    session.add(event)
    session.flush()
    action = _apply(session, found.subscriber, event, reading, config)
    setattr(report, COUNTERS[reading.kind], getattr(report, COUNTERS[reading.kind]) + 1)
    report.events.append(Event(where, reading.kind, found.subscriber.email, event.code, found.by, action,
                               _named_instead(found.subscriber, reading)))


def _named_instead(subscriber: Subscriber, reading: reports.Reading) -> tuple[str, ...]:
    """The addresses a bounce report names, if none is the subscriber's it was matched to. (A
    mailto request's address is its sender's: a reader's alias, and its tag is the proof.)"""
    if reading.kind == "unsubscribe":
        return ()
    keys = {_key(address) for address in reading.recipients}
    return () if not keys or subscriber.email_key in keys else tuple(reading.recipients)


# A reader is sent at most one unsubscribe link in answer to requests without a tag in this
# long: anyone can write such a request, once a minute if they like.
ASK_INTERVAL = dt.timedelta(hours=24)
ASKED = "asked"  # BounceEvent.kind of a request without a tag
# How such a request's record ends while it is answered (the diagnostic's last words):
_LINK_QUEUED = "their unsubscribe link is to be sent"  # read; the link goes after the commit
_LINK_SENDING = "their unsubscribe link is being sent"  # handed to the relay: counts as sent
_LINK_SENT = "their unsubscribe link was sent to the address (a From can be forged)"
_LINK_RECENT = "not answered: a link went, or is going, to the address within the last 24 hours"
# A request still "to be sent" this long after: its run died before its send step; it is read
# again. One "being sent" only after a day (its run died, or could not settle it: helper-79):
# the relay may have taken it, and a second link in a day is what the limit is for (helper-77).
STALE_QUEUED = dt.timedelta(hours=1)


def _ask(session: Session, where: str, subscriber: Subscriber, reading: reports.Reading,
         now: dt.datetime, report: Report) -> None:
    """A request without a tag: anyone can write a From, so nothing changes here. An active
    subscriber is to be sent their own unsubscribe link (as Mailman asks to confirm a `leave`
    by mail), once a day at most: the request is recorded "to be sent", and
    send_unsubscribe_links decides for good, with the reader's row locked for a moment only (a
    lock held to the end of a long run made another run wait or deadlock: helper-77)."""
    why = ""
    if subscriber.status != "active":  # out already, or pending: never confirmed, sent nothing
        why = f"not answered: the address is {subscriber.status}, nothing is sent to it"
    elif _answered_lately(session, subscriber.id, now, (_LINK_QUEUED, _LINK_SENDING, _LINK_SENT)):
        why = _LINK_RECENT
    claim = BounceEvent(subscriber_id=subscriber.id, kind=ASKED, source_key=reading.source_key, at=now,
                        diagnostic=f"{reading.detail}; {why or _LINK_QUEUED}")
    session.add(claim)
    session.flush()
    if why:
        report.events.append(Event(where, reading.kind, subscriber.email, "", "sender", why))
        return
    lang = subscriber.lang if subscriber.lang in ("ja", "en") else "ja"
    report.asks.append(Ask(where, claim.id, reading.detail, subscriber.id, subscriber.email,
                           subscriber.link_key, lang))


def _answered_lately(session: Session, subscriber_id: int, now: dt.datetime, states: tuple[str, ...],
                     besides: int | None = None) -> bool:
    """Whether a request of the reader's in the last ASK_INTERVAL ends in one of `states`. A
    record stamped later than now (by a clock that ran fast, since put right) does not count: it
    would have kept the reader from their link until the clock caught up, a year if need be."""
    return session.scalar(select(BounceEvent.id).where(
        BounceEvent.subscriber_id == subscriber_id, BounceEvent.kind == ASKED,
        BounceEvent.id != (besides or 0),
        or_(*(BounceEvent.diagnostic.endswith(state) for state in states)),
        BounceEvent.at > now - ASK_INTERVAL, BounceEvent.at <= now + CLOCK_SKEW).limit(1)) is not None


def _dropped_stale_claim(session: Session, key: str, now: dt.datetime) -> bool:
    """Whether the request's record was left "to be sent" by a run that died before its send
    step (STALE_QUEUED), or "being sent" a day ago: it is dropped, and the request read as new.
    So is one stamped later than now: the run that wrote it had a clock running fast."""
    gone = session.execute(delete(BounceEvent).where(  # one statement: a _take meanwhile wins
        BounceEvent.source_key == key, BounceEvent.kind == ASKED, or_(
            and_(BounceEvent.diagnostic.endswith(_LINK_QUEUED), _stale(now, STALE_QUEUED)),
            and_(BounceEvent.diagnostic.endswith(_LINK_SENDING), _stale(now, ASK_INTERVAL)))))
    return db.rowcount(gone) > 0


def _stale(now: dt.datetime, age: dt.timedelta) -> ColumnElement[bool]:
    """A record older than `age`, or stamped by a clock that ran fast (later than now allows)."""
    return or_(BounceEvent.at < now - age, BounceEvent.at > now + CLOCK_SKEW)



def _apply(session: Session, subscriber: Subscriber, event: BounceEvent, reading: reports.Reading,
           config: Config) -> str:
    if reading.kind == "hard":
        reason = f"hard bounce {event.code or '(no status code)'}: {event.diagnostic}"
        return "suppressed" if suppress(session, subscriber, reason) else f"already {subscriber.status}"
    if reading.kind == "soft":
        return _soft(session, subscriber, event, config)
    if reading.kind == "complaint":
        return _complaint(session, subscriber, reading.detail)
    consent = Consent("mailto", f"{reading.detail}, by its signed tag ({reading.source_key})"[:200])
    changed = subscribers.unsubscribe(session, subscriber, consent)
    return "unsubscribed" if changed else "already unsubscribed"


def send_unsubscribe_links(services: Services, report: Report, now: dt.datetime | None = None) -> None:
    """Answer the report's requests without a tag, each with its subscriber's unsubscribe link,
    after the mailbox's results are committed: no lock is held over SMTP. Each request is first
    taken for sending in a short transaction with the reader's row locked, so of two runs at once
    only one sends (helper-76); then settled: sent, refused for good (a 5xx is not asked again),
    or, if the relay could not take it now, dropped (`report.unanswered`) to be read again."""
    config = services.config
    env = notices.environment(config)
    for ask in report.asks:
        try:
            _answer(services, env, ask, now or utcnow(), report)
        except OperationalError as exc:  # another run's open transaction holds the row, or the
            # database is locked or away: this request waits ("to be sent" for STALE_QUEUED,
            # "being sent" for a day); the others, and the report, go on (helper-79)
            why = ("another run is answering this reader now" if db.waited_on_another(exc)
                   else f"the database did not answer: {exc.orig}")
            _unanswered(report, ask, why)
            with contextlib.suppress(OperationalError):  # not taken yet: read again on the next run
                _drop_if_queued(services, ask)


def _answer(services: Services, env: jinja2.Environment, ask: Ask, now: dt.datetime, report: Report) -> None:
    """Take the request, mail the link, settle the request by what the relay said."""
    if not _take(services, ask, now, report):
        return
    config = services.config
    link = links.unsubscribe_url(config.mailmag.base_url, services.secret_key, ask.subscriber_id,
                                 ask.link_key)
    outcome = ""
    try:
        notices.send(config, ask.email, *notices.render(env, config, "unsubscribe", ask.lang,
                                                         link=link, email=ask.email))
        outcome = _LINK_SENT
    except PermanentFailure as exc:
        outcome = f"not answered: the relay refused the mail with its link ({exc})"
    except TemporaryFailure as exc:
        # after the final dot the relay may have it: counted as sent (helper-77: a relay that
        # dropped the line there was sent a link on every run)
        outcome = f"the relay may have it ({exc}); {_LINK_SENT}" if exc.ambiguous else ""
        if not outcome:
            _unanswered(report, ask, exc)
    except MailmagError as exc:
        _unanswered(report, ask, exc)
    report.asked += outcome.endswith(_LINK_SENT)
    try:
        _settle(services, ask, outcome, now)
    except OperationalError as exc:  # the mail went, its record did not (helper-80); a request
        if not outcome:              # the relay could not take is listed unanswered already
            return
        outcome += f"; its record could not be written ({exc.orig}): it stays 'being sent' for a day"
    if outcome:
        report.events.append(Event(ask.where, "unsubscribe", ask.email, "", "sender", outcome))


def _take(services: Services, ask: Ask, now: dt.datetime, report: Report) -> bool:
    """Mark the request "being sent" unless another of the reader's was sent, or is being sent,
    within the day (another run's, at the same time), or another run took this one over."""
    with services.session() as session:
        # NOWAIT: a long run's uncommitted record of this reader holds the row (helper-78)
        status = session.scalar(select(Subscriber.status).where(Subscriber.id == ask.subscriber_id)
                                .with_for_update(nowait=True))
        claim = session.get(BounceEvent, ask.event_id)
        if claim is None or not claim.diagnostic.endswith(_LINK_QUEUED):
            return False
        why = ""
        if status != "active":  # out since it was read: by a tag later in the mailbox, say (helper-78)
            why = f"not answered: the address is {status or 'erased'} now, nothing is sent to it"
        elif _answered_lately(session, ask.subscriber_id, now, (_LINK_SENDING, _LINK_SENT), besides=claim.id):
            why = _LINK_RECENT
        if why:
            claim.diagnostic = f"{ask.detail}; {why}"
            report.events.append(Event(ask.where, "unsubscribe", ask.email, "", "sender", why))
            return False
        claim.diagnostic, claim.at = f"{ask.detail}; {_LINK_SENDING}", now
        return True


def _settle(services: Services, ask: Ask, outcome: str, now: dt.datetime) -> None:
    with services.session() as session:
        if not outcome:  # dropped: the next run reads the request again
            session.execute(delete(BounceEvent).where(BounceEvent.id == ask.event_id))
            return
        claim = session.get(BounceEvent, ask.event_id)
        if claim is not None:
            claim.diagnostic, claim.at = f"{ask.detail}; {outcome}", now


def _drop_if_queued(services: Services, ask: Ask) -> None:
    with services.session() as session:
        session.execute(delete(BounceEvent).where(BounceEvent.id == ask.event_id,
                                                  BounceEvent.diagnostic.endswith(_LINK_QUEUED)))


def _unanswered(report: Report, ask: Ask, exc: Exception | str) -> None:
    report.unanswered.append((ask.where, f"could not send the unsubscribe link to {ask.email} ({exc}); "
                                         "the request is read again on the next run"))


# --- matching a report to a delivery and subscriber -----------------------------------------


def _match(session: Session, reading: reports.Reading, config: Config, secret: tokens.Keys) -> _Match | str:
    """VERP, then the original Message-ID; a reason string if neither (a named address alone
    is said, not acted on)."""
    if reading.kind == "unsubscribe":
        return _unsubscriber(session, reading, secret)
    forged = None
    for address in reading.envelope:
        delivery_id = addresses.verp_delivery_id(config, secret, address)
        if delivery_id is False:
            forged = address
        elif delivery_id is not None and (delivery := session.get(Delivery, delivery_id)):
            return _from_delivery(session, delivery, "verp")
    if forged:
        return f"the VERP tag of {forged} is not signed with this secret key (forged or made with an old key)"
    for message_id in reading.original_ids:
        if delivery := _by_message_id(session, message_id):
            return _from_delivery(session, delivery, "message-id")
    # The address alone proves nothing: the bare bounce address is in every mail's Return-Path,
    # and anyone who knows a subscriber's address could write a "report" that bounces them.
    for address in reading.recipients:
        if _by_address(session, address):
            return (f"it names {address}, a subscriber, but carries neither our signed VERP tag nor the "
                    "Message-ID of a mail we sent, so anyone could have written it: nothing changed "
                    "(if it is real, remove the address by hand)")
    named = ", ".join(reading.recipients) or "no address"
    return f"no delivery or subscriber matches it (it names {named})"


def _unsubscriber(session: Session, reading: reports.Reading, secret: tokens.Keys) -> _Match | str:
    """Who a mailto unsubscribe is for: the subscriber its signed tag names, whatever its From
    says (an alias, or a forgery). A request without a tag (a mail sent before tags, or typed
    by hand) only for a From that is exactly a subscriber's address, matched as 'sender'."""
    for tag in reading.tags:
        subscriber_id = tokens.unsubscribe_tag_id(tag)
        subscriber = session.get(Subscriber, subscriber_id) if subscriber_id is not None else None
        if subscriber is not None and tokens.unsubscribe_tag_fits(
                secret, tag, subscriber.id, subscriber.link_key):
            return _Match(subscriber, None, "tag")
    subscriber = _by_address(session, reading.recipients[0])
    if subscriber is not None:  # a tag that fits no row (mail from before the list moved, or a
        return _Match(subscriber, None, "sender")  # forgery) from a reader: asked as without one
    if reading.tags:
        return (f"its tag {reading.tags[0]} is not signed for any subscriber (forged, made with "
                "another key, or its subscriber was erased): nothing changed")
    return (f"{reading.recipients[0]} is not a subscriber (a request without a tag must come from the "
            "exact address)")


def _from_delivery(session: Session, delivery: Delivery, by: str) -> _Match | str:
    subscriber = session.get(Subscriber, delivery.subscriber_id) if delivery.subscriber_id else None
    if subscriber is None:
        return f"delivery {delivery.id}'s subscriber was erased"
    return _Match(subscriber, delivery.id, by)


def _by_message_id(session: Session, message_id: str) -> Delivery | None:
    """A delivery's Message-ID (addresses.delivery_message_id): looked up by its indexed parts."""
    parsed = addresses.read_delivery_message_id(message_id)
    if parsed is None:  # not a delivery's, or one from before they carried the reader's key
        return None
    number, subscriber_id = parsed
    return session.scalar(
        select(Delivery).join(Issue, Issue.id == Delivery.issue_id)
        .where(Issue.number == number, Delivery.subscriber_id == subscriber_id,
               Delivery.message_id == message_id)
    )


def _by_address(session: Session, address: str) -> Subscriber | None:
    """By the one address rule, so '"taro..yamada."@docomo.ne.jp' finds taro..yamada.@docomo.ne.jp."""
    return session.scalar(select(Subscriber).where(Subscriber.email_key == _key(address)))


def _key(address: str) -> str:
    try:
        return parse_address(address).key
    except InvalidEmail:
        return address.strip().lower()


def open_mailbox(path: Path) -> tuple[mailbox.Mailbox, Callable[[Any], str]]:
    """A Maildir (a folder with cur, new, tmp) or an mbox file, read-only; and how to name a key."""
    if path.is_dir():
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise InvalidInput(f"{path} is a folder but not a Maildir (it needs cur, new and tmp)",
                               ja=f"「{path}」はフォルダですが Maildir ではありません"
                                  "（cur・new・tmp が必要です）")
        return mailbox.Maildir(path, factory=None, create=False), str
    if not path.exists():
        raise NotFound(f"no mailbox at {path}: give a Maildir folder or an mbox file",
                       ja=f"「{path}」にメールボックスがありません。"
                          "Maildir のフォルダか mbox ファイルを指定してください")
    with path.open("rb") as file:
        start = file.read(5)
    if start and start != b"From ":
        raise InvalidInput(f"{path} is not an mbox file (it must start with a 'From ' line)",
                           ja=f"「{path}」は mbox ファイルではありません"
                              "（先頭が「From 」の行で始まる必要があります）")
    return mailbox.mbox(path, factory=None, create=False), lambda key: f"#{key + 1}"
