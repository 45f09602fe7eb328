"""The consent domain behind the web forms: requests, limits, confirmation, purge (no HTTP)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from mailmag import addresses
from mailmag.audience import consent, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.errors import ConfigError, InvalidInput
from mailmag.models import ConsentEvent, SubscribeAttempt, Subscriber, Suppression

NOW = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)
WEB = Consent("web", "subscribe form", "192.0.2.1", "UA", "1")
LIMITS = consent.Limits(per_address_per_day=1, per_ip_per_hour=10)


def ask(session, email: str, at: dt.datetime = NOW, ip: str = "192.0.2.1", **kw):  # type: ignore[no-untyped-def]
    address = subscribers.parse_address(email)
    return consent.request_subscription(session, address, Consent("web", "form", ip, "UA", "1"),
                                        limits=LIMITS, now=at, **kw)


def test_the_per_address_limit_is_a_rolling_day(session):
    mail = ask(session, "a@example.jp")
    assert mail.kind == "confirm"
    consent.mail_sent(session, mail.attempt_id)
    assert ask(session, "a@example.jp", NOW + dt.timedelta(hours=23)) is None
    assert ask(session, "a@example.jp", NOW + dt.timedelta(hours=25)).kind == "confirm"


def test_a_mail_still_unsent_a_quarter_of_an_hour_later_stops_counting(session):
    """helper-94, -97: it waited in a web process that stopped, and will not go; until then it
    may still go, so no second one is asked for (another server may be sending it)."""
    ask(session, "b@example.jp")
    assert ask(session, "b@example.jp", NOW + dt.timedelta(minutes=14)) is None
    late = ask(session, "b@example.jp", NOW + dt.timedelta(minutes=16))
    assert late is not None and late.kind == "confirm"
    consent.mail_sent(session, late.attempt_id)
    assert ask(session, "b@example.jp", NOW + dt.timedelta(hours=2)) is None


def test_the_per_ip_limit_counts_every_request_of_the_hour(session):
    for n in range(10):
        assert ask(session, f"u{n}@example.jp", NOW + dt.timedelta(minutes=n)) is not None
    assert ask(session, "u10@example.jp", NOW + dt.timedelta(minutes=30)) is None
    assert ask(session, "u10@example.jp", NOW + dt.timedelta(minutes=30), ip="198.51.100.7") is not None
    assert ask(session, "u11@example.jp", NOW + dt.timedelta(minutes=70)) is not None


def test_a_known_address_is_not_changed_by_the_form(session):
    subscribers.add(session, subscribers.parse_address("k@example.jp"), Consent("cli"), name="本人",
                    lang="en")
    mail = ask(session, "k@example.jp", name="他人", lang="ja", topics=["news"])
    assert (mail.kind, mail.lang) == ("known", "en")  # the owner's language, their preferences link
    stored = subscribers.get(session, "k@example.jp")
    assert (stored.status, stored.name, stored.lang, stored.topics) == ("active", "本人", "en", [])


def test_an_unsubscribed_address_gets_a_confirmation_mail_and_stays_unsubscribed(session):
    _, s = subscribers.add(session, subscribers.parse_address("u@example.jp"), Consent("cli"))
    subscribers.unsubscribe(session, s, Consent("web"))
    mail = ask(session, "u@example.jp")
    assert (mail.kind, mail.opt_outs, mail.link_key) == ("confirm", 1, s.link_key)
    assert subscribers.get(session, "u@example.jp").status == "unsubscribed"


def test_a_forgotten_address_stays_suppressed_until_its_owner_confirms(session):
    _, s = subscribers.add(session, subscribers.parse_address("f@example.jp"), Consent("cli"))
    subscribers.forget(session, s, Consent("cli"))
    mail = ask(session, "f@example.jp")
    assert mail.kind == "confirm"
    digest = addresses.email_hash("f@example.jp")
    assert session.scalar(select(Suppression.reason).where(Suppression.email_hash == digest)) == "forgotten"
    pending = session.get(Subscriber, mail.subscriber_id)
    assert consent.confirm(session, pending, WEB)
    assert session.scalar(select(Suppression.id).where(Suppression.email_hash == digest)) is None
    assert pending.status == "active"


def test_resubscribe_for_unsubscribed_and_bounced_needs_the_confirmation(session):
    for n, (email, status) in enumerate((("x@example.jp", "unsubscribed"), ("y@example.jp", "bounced"))):
        _, s = subscribers.add(session, subscribers.parse_address(email), Consent("cli"))
        s.status = status
        mail = consent.request_resubscription(session, s, WEB, limits=LIMITS, now=NOW + dt.timedelta(hours=n))
        assert mail.kind == "confirm" and s.status == status  # asking changes nothing
        assert consent.confirm(session, s, WEB)
        assert s.status == "active" and s.consents[-1].action == "confirm"
        assert not consent.confirm(session, s, WEB)  # already active: nothing to do


def test_update_preferences_rejects_an_unknown_language(session):
    _, s = subscribers.add(session, subscribers.parse_address("p@example.jp"), Consent("cli"))
    with pytest.raises(InvalidInput, match="unknown language 'fr'"):
        consent.update_preferences(session, s, "fr", [])
    assert consent.update_preferences(session, s, "en", ["news", "events", "news"])
    assert (s.lang, s.topics) == ("en", ["events", "news"])
    assert not consent.update_preferences(session, s, "en", ["events", "news"])


def test_purge_deletes_only_stale_pending_subscribers_and_keeps_the_log(session):
    old = ask(session, "old@example.jp", NOW - dt.timedelta(hours=200))
    ask(session, "again@example.jp", NOW - dt.timedelta(hours=200))
    ask(session, "again@example.jp", NOW - dt.timedelta(hours=2))  # asked again: kept
    session.get(Subscriber, old.subscriber_id).created_at = NOW - dt.timedelta(hours=200)
    again = subscribers.get(session, "again@example.jp")
    again.created_at = NOW - dt.timedelta(hours=200)
    session.execute(ConsentEvent.__table__.update()
                    .where(ConsentEvent.subscriber_id == old.subscriber_id)
                    .values(at=NOW - dt.timedelta(hours=200)))
    _, active = subscribers.add(session, subscribers.parse_address("active@example.jp"), Consent("cli"))
    active.created_at = NOW - dt.timedelta(days=30)
    session.flush()
    assert consent.purge_pending(session, 168, now=NOW) == 1
    emails = set(session.scalars(select(Subscriber.email)))
    assert emails == {"again@example.jp", "active@example.jp"}
    orphaned = session.scalar(select(func.count()).select_from(ConsentEvent)
                              .where(ConsentEvent.subscriber_id.is_(None)))
    assert orphaned == 1  # the deleted one's opt-in request stays in the log
    assert session.scalar(select(func.count()).select_from(SubscribeAttempt)) == 1  # 200 h old ones gone


def test_topics_setting_and_choices():
    topics = consent.parse_topics_setting(["events|イベント案内|Events", "news"])
    assert [(t.code, t.label("ja"), t.label("en")) for t in topics] == [
        ("events", "イベント案内", "Events"), ("news", "news", "news")]
    assert consent.choose_topics(["news", "events", "news"], topics) == ["events", "news"]
    with pytest.raises(InvalidInput, match="unknown topic 'x'"):
        consent.choose_topics(["x"], topics)
    with pytest.raises(ConfigError, match="the code must be"):
        consent.parse_topics_setting(["a b|x"])
