"""Bounces, complaints and mailto unsubscribes read from real-shaped Maildir and mbox mailboxes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import mailbox
import re
from pathlib import Path

import bounce_samples as samples
import pytest
from conftest import SECRET, one_database
from sqlalchemy import func, select, update
from test_outbox import add_subscribers, make_issue

from mailmag import db, tokens
from mailmag.audience import bounces, reports, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import BouncesConfig
from mailmag.content import transitions
from mailmag.delivery.transports import PermanentFailure
from mailmag.errors import InvalidInput, NotFound
from mailmag.models import BounceEvent, ConsentEvent, Delivery, Subscriber, Suppression, utcnow

NOW = utcnow()


# --- helpers --------------------------------------------------------------------------------


def old_subscribers(session, n: int) -> list[Subscriber]:  # type: ignore[no-untyped-def]
    """Subscribers who opted in long ago (soft bounces count only after the last opt-in)."""
    added = add_subscribers(session, n)
    session.execute(update(ConsentEvent).values(at=NOW - dt.timedelta(days=200)))
    return added


def send_issue(session, number: int) -> dict[str, Delivery]:  # type: ignore[no-untyped-def]
    """Start sending issue `number` to everyone active; its deliveries by address."""
    transitions.start_sending(session, make_issue(session, number), "example.jp", "ja")
    rows = session.scalars(select(Delivery).where(Delivery.issue_id == _issue_id(session, number)))
    return {d.email: d for d in rows}


def _issue_id(session, number: int) -> int:  # type: ignore[no-untyped-def]
    from mailmag.models import Issue

    return session.scalar(select(Issue.id).where(Issue.number == number))


def verp(delivery: Delivery) -> str:
    return f"bounces+{tokens.verp_tag(SECRET, delivery.id)}@example.jp"


def write_maildir(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.Maildir(path, create=True)
    for message in messages:
        box.add(message)
    return path


def write_mbox(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.mbox(path)
    for message in messages:
        box.add(message)
    box.close()
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of a mailbox (Maildir folder or mbox file) and its bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): p.read_bytes() for p in files}


def db_state(session) -> dict:  # type: ignore[no-untyped-def]
    """Row counts and statuses that processing may change."""
    session.expire_all()
    count = lambda model: session.scalar(select(func.count()).select_from(model))  # noqa: E731
    return {
        "bounce_events": count(BounceEvent), "consent_events": count(ConsentEvent),
        "suppressions": count(Suppression),
        "subscribers": sorted(session.execute(select(Subscriber.email, Subscriber.status,
                                                     Subscriber.status_reason)).all()),
        "deliveries": sorted(session.execute(select(Delivery.id, Delivery.status)).all()),
    }


def process(session, config, path, **kwargs) -> bounces.Report:  # type: ignore[no-untyped-def]
    report = bounces.process_mailbox(session, path, config, SECRET, **kwargs)
    session.flush()
    return report


def subscriber(session, email: str) -> Subscriber:  # type: ignore[no-untyped-def]
    session.expire_all()
    return subscribers.get(session, email)


# --- recognising each format (pure) ---------------------------------------------------------

TO = "bounces+1-0123456789@example.jp"


@pytest.mark.parametrize(
    ("message", "kind", "code", "via"),
    [
        (samples.postfix_dsn("a@example.com", to=TO), "hard", "5.1.1", "dsn"),
        (samples.exchange_ndr("a@example.com", to=TO), "hard", "5.1.10", "dsn"),
        (samples.gmail_dsn("a@example.com", to=TO), "hard", "5.1.1", "dsn"),
        (samples.postfix_delayed("a@example.com", to=TO), "soft", "4.2.2", "dsn"),
        (samples.postfix_dsn("a@example.com", to=TO, status="5.2.2"), "soft", "5.2.2", "dsn"),
        (samples.postfix_dsn("a@example.com", to=TO, status="5.7.1"), "soft", "5.7.1", "dsn"),
        (samples.qmail_bounce("a@example.com", to=TO), "hard", "5.1.1", "flufl.bounce"),
        (samples.arf_complaint("a@example.com"), "complaint", "", "arf"),
        (samples.mailto_unsubscribe("a@example.com"), "unsubscribe", "", "mailto"),
        (samples.mailto_unsubscribe("a@example.com", to="news@example.jp", subject="配信停止"),
         "unsubscribe", "", "mailto"),
        (samples.human_reply("a@example.com"), "other", "", ""),
    ],
    ids=["postfix", "exchange", "gmail", "delayed", "mailbox-full-5.2.2", "policy-5.7.1", "qmail",
         "arf", "mailto", "mailto-subject-ja", "not-a-bounce"],
)
def test_each_format_is_recognised_with_its_kind(message, kind, code, via):
    reading = reports.read(message, "unsubscribe@example.jp")
    assert (reading.kind, reading.via) == (kind, via)
    assert [f.code for f in reading.failures][:1] == ([code] if code else [])
    if kind in ("hard", "soft"):
        assert reading.recipients == ("a@example.com",)


@pytest.mark.parametrize(
    ("message", "reason"),
    [(samples.garbage(), "no mail headers"), (samples.truncated("a@example.com", to=TO), "broken MIME")],
    ids=["garbage", "truncated"],
)
def test_unreadable_messages_say_why(message, reason):
    with pytest.raises(reports.Unreadable, match=reason):
        reports.read(message, "unsubscribe@example.jp")


def test_report_without_message_id_is_keyed_by_its_bytes():
    message = samples.postfix_dsn("a@example.com", to=TO, message_id=None)
    key = reports.read(message, "unsubscribe@example.jp").source_key
    assert key.startswith("sha256:") and key == reports.read(message, "x@example.jp").source_key


# --- hard bounces ---------------------------------------------------------------------------


def test_hard_bounce_suppresses_the_address_everywhere(session, config, tmp_path):
    add_subscribers(session, 3)
    first = send_issue(session, 1)
    session.execute(update(Delivery).values(status="sent"))
    queued = send_issue(session, 2)
    box = write_maildir(tmp_path / "Maildir", [
        samples.postfix_dsn("user0@example.jp", to=verp(first["user0@example.jp"]),
                            original_id=first["user0@example.jp"].message_id),
    ])

    report = process(session, config, box)

    assert (report.hard, report.unmatched, report.unreadable) == (1, [], [])
    assert report.events[0].matched_by == "verp" and report.events[0].action == "suppressed"
    gone = subscriber(session, "user0@example.jp")
    assert gone.status == "bounced"
    assert gone.status_reason.startswith(
        "hard bounce 5.1.1: smtp; 550 5.1.1 <user0@example.jp>: Recipient address rejected: User unknown in")
    consent = session.scalars(select(ConsentEvent).where(ConsentEvent.subscriber_id == gone.id)
                              .order_by(ConsentEvent.id)).all()[-1]
    assert (consent.action, consent.channel) == ("opt_out", "bounce")
    assert session.scalar(select(Suppression.reason)) == "bounced"
    event = session.scalar(select(BounceEvent))
    assert (event.kind, event.code, event.delivery_id) == ("hard", "5.1.1", first["user0@example.jp"].id)
    # The queued delivery of issue 2 is cancelled, saying why (not "opted out"); the others still go.
    statuses = {d.email: (d.status, d.last_reply) for d in session.scalars(select(Delivery).where(
        Delivery.id.in_([d.id for d in queued.values()])))}
    assert statuses == {"user0@example.jp": ("cancelled", "subscriber's address bounced"),
                        "user1@example.jp": ("queued", ""), "user2@example.jp": ("queued", "")}
    # A later issue is never enqueued for the bounced address.
    assert set(send_issue(session, 3)) == {"user1@example.jp", "user2@example.jp"}


@pytest.mark.parametrize("builder", [samples.exchange_ndr, samples.gmail_dsn, samples.qmail_bounce])
def test_original_message_id_maps_a_bounce_without_verp(session, config, tmp_path, builder):
    add_subscribers(session, 2)
    delivery = send_issue(session, 1)["user1@example.jp"]
    # Delivered to the plain bounce address (a relay rewrote the envelope), naming another
    # address (the subscriber's mail was forwarded): the returned Message-ID decides.
    message = builder("forwarded@elsewhere.example", to="bounces@example.jp", original_id=delivery.message_id)
    report = process(session, config, write_maildir(tmp_path / "Maildir", [message]))
    assert [(e.email, e.matched_by) for e in report.events] == [("user1@example.jp", "message-id")]
    # said beside the match (helper-95: nothing showed the report was about another address)
    assert report.events[0].names_instead == ("forwarded@elsewhere.example",)
    assert session.scalar(select(BounceEvent.delivery_id)) == delivery.id
    assert subscriber(session, "user1@example.jp").status == "bounced"


def test_a_message_id_guessed_from_another_readers_copy_changes_nothing(session, config, tmp_path):
    """The Message-ID was '<mm.ISSUE.SUBSCRIBER.NONCE@domain>', NONCE one per issue: from their own
    copy a reader could write every other reader's, and a "bounce" returning it bounced them."""
    add_subscribers(session, 2)
    sent = send_issue(session, 1)
    mine, theirs = sent["user0@example.jp"], sent["user1@example.jp"]
    guessed = re.sub(r"^(<mm\.\d+\.)\d+\.", rf"\g<1>{theirs.subscriber_id}.", mine.message_id)
    assert guessed != theirs.message_id  # each carries a part of its reader's random key
    forged = samples.exchange_ndr("user1@example.jp", to="bounces@example.jp", original_id=guessed)
    report = process(session, config, write_maildir(tmp_path / "Maildir", [forged]))
    assert report.events == [] and len(report.unmatched) == 1
    assert subscriber(session, "user1@example.jp").status == "active"
    # an issue sent before the key: its Message-IDs are as guessable, and no longer read
    theirs_id, their_message_id = theirs.id, theirs.message_id
    keyless = re.sub(r"\.[A-Za-z0-9_-]{8}@", "@", their_message_id)
    session.execute(update(Delivery).where(Delivery.id == theirs_id).values(message_id=keyless))
    old = samples.exchange_ndr("user1@example.jp", to="bounces@example.jp", original_id=keyless)
    assert process(session, config, write_maildir(tmp_path / "Old", [old])).events == []
    assert subscriber(session, "user1@example.jp").status == "active"
    session.execute(update(Delivery).where(Delivery.id == theirs_id).values(message_id=their_message_id))
    real = samples.exchange_ndr("user1@example.jp", to="bounces@example.jp", original_id=their_message_id)
    assert process(session, config, write_maildir(tmp_path / "Real", [real])).hard == 1


def test_a_report_naming_only_an_address_changes_nothing_and_stays_for_a_person(session, config, tmp_path):
    """The bare bounce address is in every mail's Return-Path: a "DSN" or an abuse report naming a
    subscriber, with no signed tag and no Message-ID of ours, bounced or unsubscribed anyone."""
    add_subscribers(session, 4)
    send_issue(session, 1)
    forged_dsn = samples.postfix_dsn("USER1@example.jp", to="bounces@example.jp")
    forged_complaint = samples.arf_complaint("user3@example.jp", to="bounces@example.jp")
    report = process(session, config, write_maildir(tmp_path / "Maildir", [forged_dsn, forged_complaint]))
    assert report.events == [] and (report.hard, report.complaints) == (0, 0)
    said = ("{kind}: it names {address}, a subscriber, but carries neither our signed VERP tag nor the "
            "Message-ID of a mail we sent, so anyone could have written it: nothing changed (if it is "
            "real, remove the address by hand) (")
    assert [reason[:reason.index(" (from")] + " (" for _, reason in report.unmatched] == [
        said.format(kind="hard", address="USER1@example.jp"),
        said.format(kind="complaint", address="user3@example.jp")]
    assert session.scalar(select(func.count()).select_from(BounceEvent)) == 0
    assert {subscriber(session, f"user{i}@example.jp").status for i in range(4)} == {"active"}


def test_a_maildir_is_read_in_the_order_its_reports_arrived(session, config, tmp_path):
    """A Maildir name holds its arrival time with the microseconds unpadded: read as text, a
    report that came at .099999 s was listed (and took effect) after one that came at .100000 s."""
    add_subscribers(session, 2)
    send_issue(session, 1)
    folder = write_maildir(tmp_path / "Maildir", [])
    to = "bounces@example.jp"
    arrived = {"1790000000.M99999P7Q1.mx": samples.postfix_dsn("user1@example.jp", to=to),
               "1790000000.M100000P7Q2.mx": samples.arf_complaint("user0@example.jp", to=to),
               "1790000001.M5P7Q3.mx": samples.postfix_dsn("user0@example.jp", to=to)}
    for name, message in arrived.items():
        (folder / "new" / name).write_bytes(message)
    report = process(session, config, folder)
    assert [where for where, _ in report.unmatched] == list(arrived)
    assert {subscriber(session, f"user{i}@example.jp").status for i in range(2)} == {"active"}


def test_forged_verp_tag_is_never_trusted(session, config, tmp_path):
    add_subscribers(session, 1)
    delivery = send_issue(session, 1)["user0@example.jp"]
    forged = f"bounces+{delivery.id}-0000000000@example.jp"
    # Everything else in the report names the subscriber; the forged tag alone decides.
    message = samples.postfix_dsn("user0@example.jp", to=forged, original_id=delivery.message_id)
    before = db_state(session)

    report = process(session, config, write_maildir(tmp_path / "Maildir", [message]))

    assert report.hard == 0 and len(report.unmatched) == 1
    assert f"the VERP tag of {forged} is not signed with this secret key" in report.unmatched[0][1]
    assert db_state(session) == before


def test_smtp_rejection_during_dispatch_uses_the_same_rule(session):
    user = add_subscribers(session, 1)[0]
    delivery = send_issue(session, 1)["user0@example.jp"]
    failure = PermanentFailure(550, "5.1.1 <user0@example.jp>: Recipient address rejected: User unknown")
    bounces.record_smtp_rejection(session, delivery.id, user.id, failure)
    bounces.record_smtp_rejection(session, delivery.id, user.id, failure)  # a repeat changes nothing
    session.flush()
    reason = subscriber(session, "user0@example.jp").status_reason
    assert reason == f"rejected when sent: {failure}"
    assert session.scalar(select(func.count()).select_from(BounceEvent)) == 1
    assert session.scalar(select(Suppression.reason)) == "bounced"
    assert session.scalars(select(ConsentEvent.channel).order_by(ConsentEvent.id)).all() == ["cli", "bounce"]


# --- soft bounces ---------------------------------------------------------------------------


def test_soft_bounces_suppress_at_the_threshold_within_the_window(session, config, tmp_path):
    old_subscribers(session, 1)
    deliveries = [send_issue(session, n)["user0@example.jp"] for n in (1, 2, 3)]
    delayed = [samples.postfix_delayed("user0@example.jp", to=verp(d), date=NOW - dt.timedelta(days=10 - i))
               for i, d in enumerate(deliveries)]

    report = process(session, config, write_maildir(tmp_path / "two", delayed[:2]))
    assert report.soft == 2 and report.events[-1].action == "counted (2 of 3 within 30 days)"
    assert subscriber(session, "user0@example.jp").status == "active"

    report = process(session, config, write_maildir(tmp_path / "third", delayed[2:]))
    assert report.events[0].action == "suppressed"
    user = subscriber(session, "user0@example.jp")
    assert user.status == "bounced"
    assert user.status_reason.startswith("3 soft bounces within 30 days (last 4.2.2): smtp; 452 4.2.2")


@pytest.mark.parametrize("status", ["xyz", "9.9.9.9.9", "5.x.y"])
def test_a_failure_whose_status_cannot_be_read_is_counted_not_suppressed(session, config, tmp_path, status):
    """helper-95: Action: failed with a garbled Status (and no code in the diagnostic either)
    suppressed the reader at once, as a hard bounce would."""
    old_subscribers(session, 1)
    delivery = send_issue(session, 1)["user0@example.jp"]
    report_bytes = samples.postfix_dsn("user0@example.jp", to=verp(delivery), status=status)
    report_bytes = report_bytes.replace(f"550 {status} ".encode(), b"")  # no code in the diagnostic
    report = process(session, config, write_maildir(tmp_path / "garbled", [report_bytes]))
    assert (report.hard, report.soft) == (0, 1)
    assert report.events[0].action == "counted (1 of 3 within 30 days)"
    assert subscriber(session, "user0@example.jp").status == "active"


def test_soft_bounces_count_once_per_delivery(session, config, tmp_path):
    add_subscribers(session, 1)
    delivery = send_issue(session, 1)["user0@example.jp"]
    # Postfix warns again and again while it retries the same message.
    warnings = [samples.postfix_delayed("user0@example.jp", to=verp(delivery)) for _ in range(4)]
    report = process(session, config, write_maildir(tmp_path / "Maildir", warnings))
    assert report.soft == 4
    assert subscriber(session, "user0@example.jp").status == "active"


def test_old_soft_bounces_outside_the_window_do_not_count(session, config, tmp_path):
    old_subscribers(session, 1)
    deliveries = [send_issue(session, n)["user0@example.jp"] for n in (1, 2, 3, 4)]
    ages = (120, 80, 25, 0)  # two old ones, two recent ones: never 3 within 30 days
    messages = [samples.postfix_delayed("user0@example.jp", to=verp(d), date=NOW - dt.timedelta(days=age))
                for d, age in zip(deliveries, ages, strict=True)]
    report = process(session, config, write_maildir(tmp_path / "Maildir", messages))
    assert report.soft == 4
    assert subscriber(session, "user0@example.jp").status == "active"
    # One more between the two recent ones makes three within 30 days.
    extra = send_issue(session, 5)["user0@example.jp"]
    late = samples.postfix_delayed("user0@example.jp", to=verp(extra), date=NOW - dt.timedelta(days=10))
    process(session, config, write_maildir(tmp_path / "late", [late]))
    assert subscriber(session, "user0@example.jp").status == "bounced"


def test_soft_threshold_is_configurable(session, config, tmp_path):
    config = config.replace(bounces=BouncesConfig(soft_threshold=1, soft_window_days=7))
    add_subscribers(session, 1)
    delivery = send_issue(session, 1)["user0@example.jp"]
    process(session, config, write_maildir(tmp_path / "Maildir", [
        samples.postfix_delayed("user0@example.jp", to=verp(delivery))]))
    assert subscriber(session, "user0@example.jp").status_reason.startswith("1 soft bounces within 7 days")


# --- complaints and mailto unsubscribes -----------------------------------------------------


def test_complaint_unsubscribes_and_suppresses(session, config, tmp_path):
    add_subscribers(session, 2)
    delivery = send_issue(session, 1)["user1@example.jp"]
    # Feedback loops often redact the recipient: the VERP Original-Mail-From maps it.
    message = samples.arf_complaint("redacted@example.com", mail_from=verp(delivery))
    report = process(session, config, write_maildir(tmp_path / "Maildir", [message]))
    assert [(e.kind, e.email, e.matched_by, e.action) for e in report.events] == [
        ("complaint", "user1@example.jp", "verp", "unsubscribed")]
    user = subscriber(session, "user1@example.jp")
    assert user.status == "unsubscribed"
    assert user.status_reason == "complaint: abuse report from ExampleISP-FBL/1.0"
    assert session.scalars(select(ConsentEvent.channel).where(ConsentEvent.action == "opt_out")).all() == [
        "complaint"]
    assert session.scalar(select(Suppression.reason)) == "complaint"
    assert session.scalar(select(Delivery.status).where(Delivery.id == delivery.id)) == "cancelled"
    # Only the person asking again brings them back, and then the suppression goes.
    address = subscribers.parse_address("user1@example.jp")
    assert subscribers.add(session, address, Consent("cli"))[0] == "suppressed"
    assert subscribers.add(session, address, Consent("web", "asked again"), resubscribe=True)[0] == "updated"
    session.flush()
    assert session.scalar(select(func.count()).select_from(Suppression)) == 0


def test_a_mailto_request_without_a_tag_is_answered_not_acted_on(session, config, tmp_path):
    """Anyone can write a From: a request without our signed tag changes nothing; the subscriber
    its exact From names is to be sent their own unsubscribe link (send_unsubscribe_links)."""
    add_subscribers(session, 2)
    box = write_maildir(tmp_path / "Maildir", [
        samples.mailto_unsubscribe("User0@Example.JP"),
        samples.mailto_unsubscribe("user0@example.jp", message_id="<again@example.jp>"),  # one link, not two
        samples.mailto_unsubscribe("stranger@example.com"),
        samples.mailto_unsubscribe("user1@example.jp",
                                   subject=f"unsubscribe {_tag(session, 'user1@example.jp')}"),
    ])
    report = process(session, config, box)
    assert (report.unsubscribes, report.asked) == (1, 0)  # asked: counted once the link is sent
    assert [(a.email, a.subscriber_id) for a in report.asks] == [
        ("user0@example.jp", subscriber(session, "user0@example.jp").id)]
    assert report.events[0].action == ("not answered: a link went, or is going, to the address within "
                                       "the last 24 hours")
    assert [r for _, r in report.unmatched] == [
        "unsubscribe: stranger@example.com is not a subscriber (a request without a tag must come "
        "from the exact address) (from 山田 太郎 <stranger@example.com>, subject 'unsubscribe')"]
    assert subscriber(session, "user0@example.jp").status == "active"
    assert subscriber(session, "user1@example.jp").status == "unsubscribed"
    channels = session.scalars(select(ConsentEvent.channel).where(ConsentEvent.action == "opt_out")).all()
    assert channels == ["mailto"]
    assert "link_key" not in json.dumps(report.as_dict())  # the asks stay out of --json


def test_a_claim_left_by_a_run_that_died_before_the_relay_is_answered_later(session, config, tmp_path):
    """A request is claimed ("being sent") in the run's transaction; a run killed after its
    commit and before the relay left it so. An hour on, the request is read again."""
    add_subscribers(session, 1)
    box = write_maildir(tmp_path / "Maildir", [samples.mailto_unsubscribe("user0@example.jp")])
    now = utcnow()
    assert len(process(session, config, box, now=now).asks) == 1  # ... and nothing sent: it died
    assert process(session, config, box, now=now + dt.timedelta(minutes=30)).duplicates == 1
    assert len(process(session, config, box, now=now + dt.timedelta(hours=2)).asks) == 1


def test_a_request_without_a_tag_from_a_pending_address_is_not_answered(session, config, tmp_path):
    """helper-75: a stranger could have a never-confirmed address mailed on every run."""
    subscribers.add(session, subscribers.parse_address("pending@example.jp"), Consent("web"), pending=True)
    report = process(session, config, write_maildir(tmp_path / "Maildir", [
        samples.mailto_unsubscribe("pending@example.jp")]))
    assert report.asks == [] and report.unmatched == []
    assert report.events[0].action == "not answered: the address is pending, nothing is sent to it"


def _old_tag(row: Subscriber) -> str:
    """The tag mail carried before the short form, made as the old code made it."""
    digest = hmac.new(SECRET.encode(), f"mailto:{row.id}:{row.link_key}".encode(), hashlib.sha256)
    return f"{row.id}-{digest.hexdigest()[:16]}"


def test_mailto_tags_old_and_new_name_their_row_and_a_forged_one_changes_nothing(session, config, tmp_path):
    add_subscribers(session, 4)
    rows = [subscriber(session, f"user{i}@example.jp") for i in range(4)]
    new = tokens.unsubscribe_tag(SECRET, rows[0].id, rows[0].link_key)
    forged = new[:-3] + ("aaa" if not new.endswith("aaa") else "bbq")
    box = write_maildir(tmp_path / "Maildir", [
        # every From is a stranger's: only the tag can name the row
        samples.mailto_unsubscribe("alias@example.com", subject=f"unsubscribe {new}", message_id="<n@x>"),
        samples.mailto_unsubscribe("alias@example.com", to=f"unsubscribe+{_old_tag(rows[1])}@example.jp",
                                   message_id="<o1@x>"),
        samples.mailto_unsubscribe("alias@example.com", subject=f"unsubscribe {_old_tag(rows[2])}",
                                   message_id="<o2@x>"),
        samples.mailto_unsubscribe("user3@example.jp", subject=f"unsubscribe {forged}", message_id="<f@x>"),
    ])
    box2 = write_maildir(tmp_path / "Maildir2", [  # the same forged tag from a stranger
        samples.mailto_unsubscribe("alias@example.com", subject=f"unsubscribe {forged}", message_id="<s@x>")])
    report = process(session, config, box)
    assert report.unsubscribes == 3
    # a tag that fits no row, from a reader's own address (helper-87: mail from before the list
    # moved was dropped), changes nothing and is answered as a request without a tag
    assert report.unmatched == [] and [a.email for a in report.asks] == ["user3@example.jp"]
    assert [subscriber(session, f"user{i}@example.jp").status for i in range(4)] == [
        "unsubscribed", "unsubscribed", "unsubscribed", "active"]
    assert [r for _, r in process(session, config, box2).unmatched] == [
        f"unsubscribe: its tag {forged} is not signed for any subscriber (forged, made with another key, "
        "or its subscriber was erased): nothing changed (from 山田 太郎 <alias@example.com>, subject "
        f"'unsubscribe {forged}')"]


def test_the_short_tag_carries_the_old_tags_bits_and_fits_only_its_row(session):
    add_subscribers(session, 2)
    one, two = (subscriber(session, f"user{i}@example.jp") for i in range(2))
    tag = tokens.unsubscribe_tag(SECRET, one.id, one.link_key)
    assert len(tag) == len(str(one.id)) + 14 and tag == tag.lower()
    assert tokens.unsubscribe_tag_fits(SECRET, _old_tag(one), one.id, one.link_key)
    assert tokens.unsubscribe_tag_fits(SECRET, tag.upper(), one.id, one.link_key)  # a client's case
    assert not tokens.unsubscribe_tag_fits(SECRET, tag, two.id, two.link_key)
    assert not tokens.unsubscribe_tag_fits(SECRET, tag, one.id, two.link_key)  # id reused by another row
    assert not tokens.unsubscribe_tag_fits("another secret", tag, one.id, one.link_key)


# --- whole mailboxes: both formats, idempotence, unreadable messages ------------------------


def _tag(session, email: str) -> str:  # type: ignore[no-untyped-def]
    """The signed tag of the subscriber's List-Unsubscribe mailto."""
    row = subscriber(session, email)
    return tokens.unsubscribe_tag(SECRET, row.id, row.link_key)


def mixed_mailbox(session) -> tuple[list[bytes], dict[str, int]]:  # type: ignore[no-untyped-def]
    """One of everything; returns the messages and the counts a first run must report."""
    add_subscribers(session, 6)
    sent = send_issue(session, 1)
    messages = [
        samples.postfix_dsn("user0@example.jp", to=verp(sent["user0@example.jp"])),
        samples.exchange_ndr("user1@example.jp", to="bounces@example.jp",
                             original_id=sent["user1@example.jp"].message_id),
        samples.gmail_dsn("user2@example.jp", to=verp(sent["user2@example.jp"]), message_id=None),
        samples.qmail_bounce("user3@example.jp", to=verp(sent["user3@example.jp"])),
        samples.postfix_delayed("user4@example.jp", to=verp(sent["user4@example.jp"])),
        samples.arf_complaint("user5@example.jp", original_id=sent["user5@example.jp"].message_id),
        samples.mailto_unsubscribe("user4@example.jp",
                                   subject=f"unsubscribe {_tag(session, 'user4@example.jp')}"),
        samples.human_reply("someone@example.com"),
        samples.garbage(),
        samples.truncated("user5@example.jp", to=verp(sent["user5@example.jp"])),
    ]
    return messages, {"hard": 4, "soft": 1, "complaints": 1, "unsubscribes": 1}


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_processing_twice_changes_nothing_the_second_time(session, config, tmp_path, kind):
    messages, counts = mixed_mailbox(session)
    writer = write_maildir if kind == "maildir" else write_mbox
    box = writer(tmp_path / "bounces", messages)
    files = snapshot(box)

    first = process(session, config, box)
    assert {k: getattr(first, k) for k in counts} == counts
    assert first.duplicates == 0
    assert len(first.unmatched) == 1 and "not a bounce report" in first.unmatched[0][1]
    assert sorted(r for _, r in first.unreadable) == [
        "broken MIME structure (CloseBoundaryNotFoundDefect): truncated or damaged",
        "no mail headers: not an e-mail message",
    ]
    after_first = db_state(session)
    assert [s for _, s, _ in after_first["subscribers"]] == [
        "bounced", "bounced", "bounced", "bounced", "unsubscribed", "unsubscribed"]

    second = process(session, config, box)
    assert (second.hard, second.soft, second.complaints, second.unsubscribes) == (0, 0, 0, 0)
    assert second.duplicates == sum(counts.values())
    assert (second.unmatched, second.unreadable) == (first.unmatched, first.unreadable)
    assert db_state(session) == after_first
    # The mailbox is only read: the unreadable messages are still there, nothing moved.
    assert snapshot(box) == files


def test_a_path_that_is_no_mailbox_is_refused(session, config, tmp_path):
    add_subscribers(session, 1)
    before = db_state(session)
    with pytest.raises(NotFound, match=r"no mailbox at .*: give a Maildir folder or an mbox file"):
        process(session, config, tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidInput, match="is a folder but not a Maildir"):
        process(session, config, tmp_path / "folder")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(InvalidInput, match="is not an mbox file"):
        process(session, config, tmp_path / "notes.txt")
    assert db_state(session) == before


# --- the command line -----------------------------------------------------------------------


def test_cli_processes_and_lists_bounced_and_refuses_to_re_add(mailmag, session, tmp_path):
    for n in range(3):
        mailmag.ok("subscribers", "add", f"user{n}@example.jp")
    tag = _tag(session, "user2@example.jp")  # (before: it expires what send_issue loads)
    sent = send_issue(session, 1)
    session.commit()
    box = write_mbox(tmp_path / "bounces.mbox", [
        samples.postfix_dsn("user0@example.jp", to=verp(sent["user0@example.jp"])),
        samples.postfix_delayed("user1@example.jp", to=verp(sent["user1@example.jp"])),
        samples.mailto_unsubscribe("user2@example.jp", subject=f"unsubscribe {tag}"),
        samples.human_reply("someone@example.com"),
        samples.garbage(),
    ])

    out = mailmag.ok("bounces", "process", str(box)).output.splitlines()
    assert out[0] == ("hard 1, soft 1, complaints 0, unsubscribes 1, asked to confirm 0, duplicates 0, "
                      "unmatched 1, unreadable 1")
    assert out[1].startswith("unmatched #4: not a bounce report, complaint or unsubscribe request "
                             "(from someone@example.com")
    assert out[2] == "unreadable #5: no mail headers: not an e-mail message"

    again = json.loads(mailmag.ok("bounces", "process", str(box), "--json").output)
    assert (again["hard"], again["duplicates"], len(again["unreadable"])) == (0, 3, 1)

    bounced = json.loads(mailmag.ok("subscribers", "list", "--status", "bounced", "--json").output)
    assert [(s["email"], s["status"]) for s in bounced] == [("user0@example.jp", "bounced")]
    assert bounced[0]["status_reason"].startswith("hard bounce 5.1.1: smtp; 550 5.1.1")

    refused = mailmag("subscribers", "add", "user0@example.jp")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: user0@example.jp is bounced")
    assert "--resubscribe" in refused.stderr
    csv = tmp_path / "members.csv"
    csv.write_text("メールアドレス,氏名\nuser0@example.jp,山田\n", encoding="utf-8")
    imported = mailmag.ok("subscribers", "import", str(csv)).output
    assert "line 2: skipped: user0@example.jp is bounced" in imported
    listed = json.loads(mailmag.ok("subscribers", "list", "--json").output)
    assert [s["status"] for s in listed] == ["bounced", "active", "unsubscribed"]


def test_cli_names_a_missing_mailbox(mailmag, tmp_path):
    result = mailmag("bounces", "process", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: no mailbox at {tmp_path / 'nowhere'}: give a Maildir folder or an mbox file")


def test_report_dates_in_the_future_are_recorded_as_now(session, config, tmp_path):
    add_subscribers(session, 1)
    delivery = send_issue(session, 1)["user0@example.jp"]
    message = samples.postfix_delayed("user0@example.jp", to=verp(delivery),
                                      date=NOW + dt.timedelta(days=365))
    process(session, config, write_maildir(tmp_path / "Maildir", [message]), now=NOW)
    assert session.scalar(select(BounceEvent.at)) == NOW


def test_resubscribed_address_starts_counting_afresh(session, config, tmp_path):
    old_subscribers(session, 1)
    deliveries = [send_issue(session, n)["user0@example.jp"] for n in (1, 2, 3, 4)]
    old = [samples.postfix_delayed("user0@example.jp", to=verp(d), date=NOW - dt.timedelta(days=20))
           for d in deliveries[:3]]
    process(session, config, write_maildir(tmp_path / "old", old))
    user = subscriber(session, "user0@example.jp")
    assert user.status == "bounced"
    subscribers.add(session, subscribers.parse_address(user.email), Consent("cli", "asked again"),
                    resubscribe=True)
    session.flush()
    fresh = samples.postfix_delayed("user0@example.jp", to=verp(deliveries[3]), date=utcnow())
    report = process(session, config, write_maildir(tmp_path / "fresh", [fresh]))
    assert report.events[0].action == "counted (1 of 3 within 30 days)"
    assert subscriber(session, "user0@example.jp").status == "active"


def test_report_as_dict_names_every_count():
    report = bounces.Report(hard=1, duplicates=2, unmatched=[("k", "why")])
    assert report.as_dict() == {
        "hard": 1, "soft": 0, "complaints": 0, "unsubscribes": 0, "asked": 0, "duplicates": 2, "events": [],
        "unmatched": [{"message": "k", "reason": "why"}], "unreadable": [], "unanswered": [],
    }


@one_database
def test_the_send_step_meets_a_locked_database_and_keeps_the_report(config, tmp_path):
    """helper-79: a second run held SQLite's write lock past the busy timeout while the first was
    answering: the first died with one line, its report lost, a request stuck "being sent"."""
    import sqlite3

    from mailmag.config import DatabaseConfig
    from mailmag.services import Services

    quick = DatabaseConfig(url=config.database.url, busy_timeout_seconds=0.5)
    services = Services(config.replace(database=quick))
    db.init_db(services.engine)
    try:
        with services.session() as session:
            add_subscribers(session, 2)
        box = write_maildir(tmp_path / "Maildir", [
            samples.mailto_unsubscribe("user0@example.jp"),
            samples.mailto_unsubscribe("user1@example.jp", message_id="<b@x>")])
        with services.session() as session:
            report = bounces.process_mailbox(session, box, services.config, SECRET)
        other = sqlite3.connect(config.database.url.removeprefix("sqlite:///"))
        other.execute("BEGIN IMMEDIATE")  # another run, writing
        bounces.send_unsubscribe_links(services, report)
        other.rollback()
        other.close()
        assert report.asked == 0 and [why for _, why in report.unanswered] == [
            f"could not send the unsubscribe link to user{n}@example.jp (the database did not answer: "
            "database is locked); the request is read again on the next run" for n in (0, 1)]
        with services.session() as session:  # nothing was taken: both are read again (after an hour)
            again = bounces.process_mailbox(session, box, services.config, SECRET,
                                            now=utcnow() + dt.timedelta(hours=2))
        assert len(again.asks) == 2
    finally:
        services.close()


def test_a_request_left_being_sent_is_read_again_after_a_day(services, tmp_path):
    """helper-79: a request taken for sending whose run then died, or could not settle it (a
    locked database after a 4xx), stayed "being sent" for good: never answered."""
    with services.session() as session:
        add_subscribers(session, 1)
    box = write_maildir(tmp_path / "Maildir", [samples.mailto_unsubscribe("user0@example.jp")])
    now = utcnow()
    with services.session() as session:
        report = bounces.process_mailbox(session, box, services.config, SECRET, now=now)
    assert bounces._take(services, report.asks[0], now, report)  # taken; the run dies here
    for hours, asks in ((2, 0), (23, 0), (25, 1)):
        with services.session() as session:
            later = bounces.process_mailbox(session, box, services.config, SECRET,
                                            now=now + dt.timedelta(hours=hours))
        assert len(later.asks) == asks, hours


@one_database
def test_a_link_sent_whose_record_cannot_be_written_is_reported_sent(config, smtp_server, tmp_path):
    """helper-80: the relay took the link, then the database was locked as its record was written:
    the report said the link could not be sent, and the sent event was missing."""
    import sqlite3
    import threading
    import time

    from mailmag.config import DatabaseConfig
    from mailmag.services import Services

    quick = DatabaseConfig(url=config.database.url, busy_timeout_seconds=0.5)
    services = Services(smtp_server.configure(config.replace(database=quick)))
    db.init_db(services.engine)
    smtp_server.delay("data_end", 2.0)  # the lock below is taken while the relay holds its answer
    try:
        with services.session() as session:
            add_subscribers(session, 1)
        box = write_maildir(tmp_path / "Maildir", [samples.mailto_unsubscribe("user0@example.jp")])
        with services.session() as session:
            report = bounces.process_mailbox(session, box, services.config, SECRET)
        other = sqlite3.connect(config.database.url.removeprefix("sqlite:///"), check_same_thread=False)

        def lock_once_it_arrives() -> None:  # once taken: while the relay holds its answer
            taken = "SELECT count(*) FROM bounce_events WHERE diagnostic LIKE '%being sent'"
            while not other.execute(taken).fetchone()[0]:
                time.sleep(0.02)
            other.execute("BEGIN IMMEDIATE")  # another run, writing

        locker = threading.Thread(target=lock_once_it_arrives)
        locker.start()
        bounces.send_unsubscribe_links(services, report)
        locker.join()
        other.rollback()
        other.close()
        assert smtp_server.recipients() == ["user0@example.jp"]
        assert report.asked == 1 and report.unanswered == []
        assert "its record could not be written" in report.events[-1].action
    finally:
        services.close()


def test_records_stamped_by_a_fast_clock_hold_nothing_back(config, smtp_server, tmp_path):
    """helper-80: a run whose clock was a year fast stamped its link a year ahead. Once the clock
    was put right, the reader's next request was refused as 'within the last 24 hours' for a year,
    and a request it had left "being sent" was never read again."""
    from mailmag.services import Services

    services = Services(smtp_server.configure(config))
    db.init_db(services.engine)
    now, fast = utcnow(), utcnow() + dt.timedelta(days=365)
    try:
        with services.session() as session:
            add_subscribers(session, 2)
        ask = samples.mailto_unsubscribe
        first = write_maildir(tmp_path / "first", [ask("user0@example.jp"),
                                                   ask("user1@example.jp", message_id="<b@x>")])
        with services.session() as session:
            report = bounces.process_mailbox(session, first, services.config, SECRET, now=fast)
        bounces.send_unsubscribe_links(services, bounces.Report(asks=report.asks[:1]), now=fast)
        assert bounces._take(services, report.asks[1], fast, report)  # user1's: taken; the run dies
        second = write_maildir(tmp_path / "second", [ask("user0@example.jp", message_id="<c@x>")])
        with services.session() as session:  # the clock put right
            again = bounces.process_mailbox(session, second, services.config, SECRET, now=now)
            stuck = bounces.process_mailbox(session, first, services.config, SECRET, now=now)
        assert [a.email for a in again.asks] == ["user0@example.jp"]
        assert [a.email for a in stuck.asks] == ["user1@example.jp"]
        bounces.send_unsubscribe_links(services, again, now=now)
        bounces.send_unsubscribe_links(services, stuck, now=now)
        assert sorted(smtp_server.recipients()) == ["user0@example.jp"] * 2 + ["user1@example.jp"]
    finally:
        services.close()



def test_a_request_from_an_smtputf8_address_is_answered_and_reported_readably(session, config, tmp_path):
    """helper-84: From: nm4@例え.jp in raw UTF-8 (RFC 6532) was read as nm4@������.jp: no one was
    matched, and a refused address was reported as mojibake."""
    subscribers.add(session, subscribers.parse_address("nm4@例え.jp"), Consent("cli", "test"))
    session.flush()
    raw = samples.mailto_unsubscribe("nm4@xn--r8jz45g.jp").replace(b"xn--r8jz45g.jp", "例え.jp".encode())
    other = samples.mailto_unsubscribe("x@example.jp", message_id="<u8@x>").replace(
        b"x@example.jp", "ﬁle@例え.jp".encode())
    report = process(session, config, write_maildir(tmp_path / "Maildir", [raw, other]))
    assert [a.email for a in report.asks] == ["nm4@例え.jp"]
    [(_, why)] = report.unmatched
    assert "ﬁle@例え.jp" in why and "\ufffd" not in why
