"""The subscriber store on SQLite and PostgreSQL: addresses, status, and the consent log."""

from __future__ import annotations

import pytest
from dbstate import rows, snapshot, where_found
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from mailmag import addresses
from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.errors import InvalidEmail, InvalidInput, NotFound
from mailmag.models import BounceEvent, ConsentEvent, Delivery, Issue, Subscriber, Suppression

CLI = Consent("cli", "added by the secretariat")
WEB = Consent("web", "subscribe form", ip="203.0.113.7", user_agent="Mozilla/5.0")


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("Taro.Yamada@Example.JP", "Taro.Yamada@example.jp"),  # local part kept, domain lower-cased
        ("taro＠example.jp", "taro@example.jp"),  # full-width ＠
        ("　ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ　", "taro@example.jp"),  # 全角 letters and spaces
        (" <taro@example.jp> ", "taro@example.jp"),
        ("taro@ＥＸＡＭＰＬＥ.jp", "taro@example.jp"),
        ("taro@bücher.example", "taro@bücher.example"),  # IDN: the slow, careful path
    ],
)
def test_addresses_are_repaired_and_stored_normalized(typed, stored):
    address = subscribers.parse_address(typed)
    assert address.email == stored
    assert address.key == stored.lower()


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "the e-mail address is empty"),
        ("　", "the e-mail address is empty"),
        ("taro", "invalid e-mail address 'taro': .*@-sign"),
        ("taro@example", "invalid e-mail address 'taro@example': .*period"),
        ("taro@@example.jp", "invalid e-mail address 'taro@@example.jp'"),
        ("taro..yamada@example.jp", "invalid e-mail address"),
        ("taro@localhost.localhost", "invalid e-mail address"),
        ("山田@", "invalid e-mail address"),
    ],
)
def test_invalid_addresses_are_refused_with_a_reason(typed, message):
    with pytest.raises(InvalidEmail, match=message):
        subscribers.parse_address(typed)


_ADDRESS_CHARS = "abcXYZ09.-_+@!#'`~é"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ADDRESS_CHARS, max_size=30)
       | st.from_regex(r"[a-z0-9.+-]{1,12}@[a-z0-9.-]{1,12}\.[a-z]{1,4}", fullmatch=True))
@pytest.mark.slow  # many hypothesis examples
def test_the_fast_path_agrees_with_email_validator(text):
    """The regex that skips email-validator for plain addresses never accepts what it refuses."""
    try:
        result = validate_email(text, check_deliverability=False)
        expected = f"{result.local_part}@{result.domain.lower()}"
    except EmailNotValidError:
        expected = None
    try:
        got = subscribers.parse_address(text).email
    except InvalidEmail:
        got = None
    assert got == expected


def test_new_subscriber_gets_ja_and_an_opt_in_with_where_it_came_from(session):
    outcome, subscriber = subscribers.add(session, subscribers.parse_address("taro@example.jp"), WEB,
                                          name="山田 太郎", topics=["event"])
    assert (outcome, subscriber.lang, subscriber.status) == ("added", "ja", "active")
    (event,) = session.scalars(select(ConsentEvent)).all()
    assert (event.action, event.channel, event.source, event.ip, event.user_agent) == (
        "opt_in", "web", "subscribe form", "203.0.113.7", "Mozilla/5.0")
    assert event.email_hash == addresses.email_hash("taro@example.jp")


def test_update_keeps_what_is_not_given(session):
    address = subscribers.parse_address("taro@example.jp")
    subscribers.add(session, address, CLI, name="山田 太郎", organization="広島大学", lang="en")
    outcome, subscriber = subscribers.add(session, address, CLI, organization="岡山大学")
    assert outcome == "updated"
    assert (subscriber.name, subscriber.organization, subscriber.lang) == ("山田 太郎", "岡山大学", "en")
    assert subscribers.add(session, address, CLI, name="山田 太郎")[0] == "unchanged"
    assert len(session.scalars(select(ConsentEvent)).all()) == 1  # an update is not an opt-in


def test_too_long_a_name_is_refused(session):
    with pytest.raises(InvalidInput, match="the name is 201 characters long"):
        subscribers.add(session, subscribers.parse_address("taro@example.jp"), CLI, name="山" * 201)
    assert session.scalars(select(Subscriber)).all() == []


def test_unsubscribed_stays_suppressed_until_resubscribe_logs_an_opt_in(session):
    address = subscribers.parse_address("taro@example.jp")
    _, subscriber = subscribers.add(session, address, CLI)
    assert subscribers.unsubscribe(session, subscriber, Consent("one-click", "List-Unsubscribe-Post"))
    # repeatable; logged again: the latest word, which an undo elsewhere must not overturn
    assert not subscribers.unsubscribe(session, subscriber, CLI)
    assert subscribers.add(session, address, CLI, name="x") == ("suppressed", subscriber)
    assert (subscriber.status, subscriber.name) == ("unsubscribed", "")
    assert subscribers.add(session, address, CLI, resubscribe=True) == ("updated", subscriber)
    assert (subscriber.status, subscriber.status_reason) == ("active", "")
    log = [(e.action, e.channel) for e in session.scalars(select(ConsentEvent).order_by(ConsentEvent.id))]
    assert log == [("opt_in", "cli"), ("opt_out", "one-click"), ("opt_out", "cli"), ("opt_in", "cli")]


def test_confirm_activates_a_pending_subscriber_once(session):
    _, subscriber = subscribers.add(session, subscribers.parse_address("taro@example.jp"), WEB,
                                    pending=True)
    assert (subscriber.status, subscriber.confirmed_at) == ("pending", None)
    assert subscribers.confirm(session, subscriber, WEB)
    assert not subscribers.confirm(session, subscriber, WEB)
    assert subscriber.status == "active" and subscriber.confirmed_at is not None


def test_get_is_case_insensitive_and_names_a_missing_address(session):
    subscribers.add(session, subscribers.parse_address("Taro@Example.jp"), CLI)
    assert subscribers.get(session, "TARO@EXAMPLE.JP").email == "Taro@example.jp"
    with pytest.raises(NotFound, match=r"^no subscriber with the address hanako@example\.jp$"):
        subscribers.get(session, "hanako@example.jp")


def test_forget_leaves_no_trace_of_the_address_but_keeps_consent_and_suppression(services, db_url):
    with services.session() as session:
        _, taro = subscribers.add(session, subscribers.parse_address("Taro.Yamada@example.jp"), WEB,
                                  name="山田 太郎", organization="広島大学")
        subscribers.add(session, subscribers.parse_address("hanako@example.jp"), CLI)
        issue = Issue(number=1, title="第1号")
        session.add(issue)
        session.flush()
        sent = Delivery(issue_id=issue.id, subscriber_id=taro.id, email=taro.email, message_id="<1@x>",
                        status="failed", last_reply="550 5.1.1 <taro.yamada@EXAMPLE.jp>: unknown user")
        session.add(sent)
        session.flush()
        session.add(BounceEvent(subscriber_id=taro.id, delivery_id=sent.id, kind="soft", source_key="<b@x>",
                                diagnostic="mailbox full: Taro.Yamada@example.jp"))
    with services.session() as session:
        subscribers.forget(session, subscribers.get(session, "taro.yamada@example.jp"), CLI)

    assert where_found(db_url, "taro.yamada@example.jp") == []
    assert where_found(db_url, "山田") == [] and where_found(db_url, "広島大学") == []
    digest = addresses.email_hash("taro.yamada@example.jp")
    events = [e for e in rows(db_url, "consent_events") if e["email_hash"] == digest]
    assert [(e["action"], e["subscriber_id"]) for e in events] == [
        ("opt_in", None), ("opt_out", None), ("forget", None)]
    assert events[0]["ip"] == "203.0.113.7"  # the proof of consent outlives the person's data
    assert [(s["email_hash"], s["reason"]) for s in rows(db_url, "suppressions")] == [(digest, "forgotten")]
    assert rows(db_url, "deliveries")[0]["last_reply"] == "550 5.1.1 <[forgotten]>: unknown user"
    assert [s["email"] for s in rows(db_url, "subscribers")] == ["hanako@example.jp"]

    before = snapshot(db_url)
    with services.session() as session:
        address = subscribers.parse_address("TARO.YAMADA@example.jp")
        assert subscribers.add(session, address, CLI) == ("suppressed", None)
        with pytest.raises(NotFound, match="erased and stays suppressed"):
            subscribers.get(session, "taro.yamada@example.jp")
    assert snapshot(db_url) == before


def test_resubscribe_after_forget_starts_afresh(session):
    address = subscribers.parse_address("taro@example.jp")
    _, subscriber = subscribers.add(session, address, CLI)
    subscribers.forget(session, subscriber, CLI)
    session.flush()
    outcome, again = subscribers.add(session, address, WEB, resubscribe=True)
    assert (outcome, again.status) == ("added", "active")
    assert session.scalars(select(Suppression)).all() == []
