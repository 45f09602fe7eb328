"""The public subscribe form and double opt-in, over real HTTP with mail caught by aiosmtpd."""

from __future__ import annotations

import concurrent.futures
import re
import sys
import threading
import time

import pytest
from conftest import SECRET
from itsdangerous import TimestampSigner
from sqlalchemy import select
from web_support import Client, LiveServer, Reply, counts, link_in, mail_text, make_services

from mailmag import addresses, clock, db, links, tokens
from mailmag.audience import consent, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import WebConfig
from mailmag.models import ConsentEvent, SubscribeAttempt, Subscriber
from mailmag.web import create_app

pytest_plugins = ["web_fixtures"]
FORM = {"agree": "yes", "lang": "ja"}


def subscribe(live: LiveServer, email: str, *, source: str = "",
              **form: str | list[str]) -> tuple[Client, Reply]:
    client = Client(live.url, source=source)
    reply = client.submit("/subscribe", {**FORM, "email": email, **form})
    return client, reply


def sent(app, smtp_server) -> list:  # type: ignore[no-untyped-def]
    app.extensions["mailmag"].mailer.wait()
    return list(smtp_server.messages)


def subscriber(services, email: str) -> Subscriber | None:  # type: ignore[no-untyped-def]
    with services.session() as session:
        return session.scalar(select(Subscriber).where(Subscriber.email_key == email.lower()))


def attempts(services) -> list[tuple[str, bool]]:  # type: ignore[no-untyped-def]
    with services.session() as session:
        rows = session.scalars(select(SubscribeAttempt).order_by(SubscribeAttempt.id)).all()
        return [(row.ip, row.mailed) for row in rows]


def test_a_new_address_becomes_pending_and_gets_a_confirmation_mail(mail_live, mail_app, mail_services,
                                                                      smtp_server):
    _, reply = subscribe(mail_live, "suzuki@example.jp", name="鈴木 花子", topic=["events"])
    assert reply.status == 200 and "お申し込みを受け付けました" in reply.text
    stored = subscriber(mail_services, "suzuki@example.jp")
    assert (stored.status, stored.name, stored.topics) == ("pending", "鈴木 花子", ["events"])
    [message] = sent(mail_app, smtp_server)
    assert message.recipients == ("suzuki@example.jp",)
    assert "/confirm/" in link_in(message.data, "confirm")
    assert "鈴木" not in mail_text(message.data)  # what a stranger typed never reaches the mail
    with mail_services.session() as session:
        [event] = session.scalars(select(ConsentEvent)).all()
        assert (event.action, event.channel, event.ip, event.user_agent, event.wording_version) == (
            "opt_in", "web", "127.0.0.1", "test-browser/1.0", "1")
        assert event.source.startswith("subscribe form, wording 1 (ja) sha256:")


def test_the_answer_is_the_same_for_new_and_known_addresses(mail_live, mail_app, mail_services, smtp_server):
    with mail_services.session() as session:
        subscribers.add(session, subscribers.parse_address("known1@example.jp"), Consent("cli"))
    _, new = subscribe(mail_live, "fresh1@example.jp")
    _, known = subscribe(mail_live, "known1@example.jp")
    assert new.status == known.status == 200
    assert new.body.replace(b"fresh1@", b"X@") == known.body.replace(b"known1@", b"X@")
    assert {k: v for k, v in new.headers.items() if k != "Date"} == {
        k: v for k, v in known.headers.items() if k != "Date"}
    messages = sent(mail_app, smtp_server)
    assert sorted(m.recipients[0] for m in messages) == ["fresh1@example.jp", "known1@example.jp"]
    by_rcpt = {m.recipients[0]: m.data for m in messages}
    link_in(by_rcpt["fresh1@example.jp"], "confirm")
    link_in(by_rcpt["known1@example.jp"], "p")  # the owner gets their preferences link instead
    assert subscriber(mail_services, "known1@example.jp").status == "active"  # unchanged


def test_a_control_character_in_the_name_is_refused_alike_for_new_and_known_addresses(
        mail_live, mail_app, mail_services, smtp_server):
    """helper-94: a new address answered 500 (a traceback), a known one 200, so the form told a
    stranger which addresses were on the list; the 500 stored no attempt, so probing was free."""
    with mail_services.session() as session:
        subscribers.add(session, subscribers.parse_address("known2@example.jp"), Consent("cli"))
    _, new = subscribe(mail_live, "fresh2@example.jp", name="\x07")
    _, known = subscribe(mail_live, "known2@example.jp", name="\x07")
    _, org = subscribe(mail_live, "fresh3@example.jp", organization="広島\x00大学")
    assert new.status == known.status == org.status == 400
    def shown(reply: Reply, email: str) -> str:  # (each client has its own CSRF token)
        return re.sub(r'name="csrf_token" value="[^"]*"', "", reply.text.replace(email, "X"))
    assert shown(new, "fresh2@example.jp") == shown(known, "known2@example.jp")
    assert "制御文字（U+0007）" in new.text and "制御文字（U+0000）" in org.text
    assert sent(mail_app, smtp_server) == [] and attempts(mail_services) == []
    assert subscriber(mail_services, "fresh2@example.jp") is None
    assert subscriber(mail_services, "known2@example.jp").status == "active"


def test_one_confirmation_mail_per_address_per_day(mail_live, mail_app, mail_services, smtp_server):
    _, first = subscribe(mail_live, "twice@example.jp")
    _, second = subscribe(mail_live, "Twice@Example.jp")
    assert first.body == second.body.replace(b"Twice", b"twice")
    assert len(sent(mail_app, smtp_server)) == 1
    assert attempts(mail_services) == [("127.0.0.1", True)]  # over the limit: nothing stored


def test_the_per_ip_limit_stops_subscription_bombing(config, smtp_server):
    limited = smtp_server.configure(config).replace(web=WebConfig(subscribe_per_ip_per_hour=3))
    services = make_services(limited)
    app = create_app(services)
    live = LiveServer(app)
    try:
        replies = [subscribe(live, f"victim{n}@example.jp")[1] for n in range(4)]
        assert len({r.body.replace(f"victim{n}".encode(), b"X") for n, r in enumerate(replies)}) == 1
        assert len(sent(app, smtp_server)) == 3
        assert subscriber(services, "victim3@example.jp") is None
        assert [mailed for _, mailed in attempts(services)] == [True, True, True]  # the 4th stored nothing
    finally:
        live.close()
        app.extensions["mailmag"].mailer.close()
        services.close()


def test_a_burst_for_one_address_answers_alike_and_mails_once_new_or_known(config, smtp_server):
    """helper-97: on PostgreSQL, 40 requests at once for a new address answered 500 to some (the
    second insert of the address collided: only a new address does that) and mailed it 2-3 times;
    a known one got 4 mails. The per-address limit is one mail a day."""
    limited = smtp_server.configure(config).replace(
        web=WebConfig(subscribe_per_ip_per_hour=1000, subscribe_min_answer_ms=0))
    services = make_services(limited)
    with services.session() as session:
        subscribers.add(session, subscribers.parse_address("known3@example.jp"), Consent("cli"))
    app = create_app(services)
    live = LiveServer(app, threads=16)
    try:
        for email in ("burst@example.jp", "known3@example.jp"):
            assert _burst(live, email, 24) == [200] * 24, email
        assert sorted(m.recipients[0] for m in sent(app, smtp_server)) == ["burst@example.jp",
                                                                           "known3@example.jp"]
        assert subscriber(services, "burst@example.jp").status == "pending"
    finally:
        live.close()
        app.extensions["mailmag"].mailer.close()
        services.close()


def test_a_burst_from_one_client_keeps_the_per_ip_limit(config, smtp_server):
    """On PostgreSQL, 16 requests at once from one address for 16 new addresses all counted the
    hour's attempts before any was written: 16 mails against a limit of 3 (subscription bombing)."""
    limited = smtp_server.configure(config).replace(
        web=WebConfig(subscribe_per_ip_per_hour=3, subscribe_min_answer_ms=0))
    services = make_services(limited)
    app = create_app(services)
    live = LiveServer(app, threads=16)
    try:
        emails = [f"target{n}@example.jp" for n in range(16)]
        assert _burst(live, emails, 16) == [200] * 16
        assert len(sent(app, smtp_server)) == 3
        assert len(attempts(services)) == 3  # those over the limit stored nothing
    finally:
        live.close()
        app.extensions["mailmag"].mailer.close()
        services.close()


def _burst(live: LiveServer, email: str | list[str], n: int) -> list[int]:
    """`n` browsers that opened the form send it for `email` (or each its own of a list) at the
    same moment; their statuses."""
    forms = []
    for i in range(n):
        client = Client(live.url)
        to = email[i] if isinstance(email, list) else email
        forms.append((client, {**FORM, "email": to, "csrf_token": client.get("/subscribe").csrf()}))
    start = threading.Barrier(n)

    def post(form: tuple[Client, dict]) -> int:
        start.wait()
        return form[0].post("/subscribe", form[1]).status

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(post, forms))


def test_a_filled_honeypot_gets_the_same_answer_and_no_mail(mail_live, mail_app, mail_services, smtp_server):
    _, human = subscribe(mail_live, "human@example.jp")
    _, bot = subscribe(mail_live, "robot@example.jp", website="http://spam.example")
    assert bot.status == 200 and human.body.replace(b"human@", b"X@") == bot.body.replace(b"robot@", b"X@")
    assert [m.recipients for m in sent(mail_app, smtp_server)] == [("human@example.jp",)]
    assert subscriber(mail_services, "robot@example.jp") is None


def test_missing_or_foreign_csrf_token_is_refused_and_nothing_is_stored(mail_live, mail_app, mail_services,
                                                                        smtp_server):
    before = counts(mail_services)
    client = Client(mail_live.url)
    client.get("/subscribe")
    reply = client.post("/subscribe", {**FORM, "email": "csrf@example.jp"})
    assert reply.status == 400 and "フォームの有効期限が切れました" in reply.text
    other = Client(mail_live.url).get("/subscribe").csrf()
    assert client.post("/subscribe", {**FORM, "email": "csrf@example.jp", "csrf_token": other}).status == 400
    cookieless = Client(mail_live.url, cookies=False)
    token = cookieless.get("/subscribe").csrf()
    form = {**FORM, "email": "csrf@example.jp", "csrf_token": token}
    assert cookieless.post("/subscribe", form).status == 400
    assert counts(mail_services) == before and sent(mail_app, smtp_server) == []


@pytest.mark.parametrize(("form", "message"), [
    ({"email": "not-an-address"}, "メールアドレスの形式が正しくありません"),
    ({"email": "ok@example.jp", "agree": ""}, "同意が必要です"),
    # helper-75: cut to 200 characters first, this was taken as a@example.jp (the CLI refuses it)
    ({"email": "a@example.jp" + " " * 195 + "<b@example.jp>"}, "メールアドレスの形式が正しくありません"),
    # helper-84: the form said only that; the CLI and the console name what is wrong
    ({"email": "sf①@example.jp"}, "「①」はアドレスに使えない文字です"),
    ({"email": "yamada.example.jp"}, "（「@」がありません）"),
])
def test_bad_input_shows_the_form_again_and_stores_nothing(mail_live, mail_app, mail_services, smtp_server,
                                                           form, message):
    before = counts(mail_services)
    _, reply = subscribe(mail_live, **form)
    assert reply.status == 400 and message in reply.text
    assert 'name="email"' in reply.text  # the form, with what was typed
    assert counts(mail_services) == before and sent(mail_app, smtp_server) == []


def test_the_english_form_sends_an_english_mail(mail_live, mail_app, mail_services, smtp_server):
    page = Client(mail_live.url).get("/subscribe?lang=en")
    assert '<html lang="en">' in page.text and "E-mail address" in page.text and "How we use" in page.text
    _, reply = subscribe(mail_live, "smith@example.jp", lang="en")
    assert "Thank you for subscribing" in reply.text
    [message] = sent(mail_app, smtp_server)
    assert "The link is valid for 72 hours" in mail_text(message.data)
    assert subscriber(mail_services, "smith@example.jp").lang == "en"


def test_confirm_get_changes_nothing_and_only_the_button_confirms(mail_live, mail_app, mail_services,
                                                                   smtp_server):
    subscribe(mail_live, "confirm@example.jp")
    [message] = sent(mail_app, smtp_server)
    link = link_in(message.data, "confirm")
    visitor = Client(mail_live.url, user_agent="Mozilla/5.0 (iPhone)")
    page = visitor.get(link)
    assert page.status == 200 and "登録を完了する" in page.text and "confirm@example.jp" in page.text
    assert visitor.head(link).status == 200
    assert subscriber(mail_services, "confirm@example.jp").status == "pending"
    reply = visitor.post(link, {"csrf_token": page.csrf()})
    assert reply.status == 200 and "登録が完了しました" in reply.text
    stored = subscriber(mail_services, "confirm@example.jp")
    assert stored.status == "active" and stored.confirmed_at is not None
    with mail_services.session() as session:
        event = session.scalars(select(ConsentEvent).where(ConsentEvent.action == "confirm")).one()
        assert (event.channel, event.ip, event.user_agent, event.wording_version) == (
            "web", "127.0.0.1", "Mozilla/5.0 (iPhone)", "1")
    assert "すでに完了" in visitor.get(link).text


def test_the_confirm_page_shows_what_the_form_said_and_can_leave_out_the_name(
        mail_live, mail_app, mail_services, smtp_server):
    """helper-94: a stranger typed the address with a name of their own (a URL, say), the owner
    confirmed a page that showed only the address, and every issue then went to
    "<their text>" <address>. The page shows the name, organization and topics the form was
    sent with, and the owner can complete without the name and organization."""
    subscribe(mail_live, "owner@example.jp", name="当選 https://evil.example/", organization="詐欺",
              topic=["events"])
    link = link_in(sent(mail_app, smtp_server)[0].data, "confirm")
    visitor = Client(mail_live.url)
    page = visitor.get(link)
    assert "当選 https://evil.example/" in page.text and "詐欺" in page.text
    assert "宛名と所属を登録せずに完了する" in page.text
    reply = visitor.post(link, {"csrf_token": page.csrf(), "details": "drop"})
    assert reply.status == 200 and "登録が完了しました" in reply.text
    stored = subscriber(mail_services, "owner@example.jp")
    assert (stored.status, stored.name, stored.organization, stored.topics) == ("active", "", "", ["events"])
    with mail_services.session() as session:
        assert session.scalar(select(ConsentEvent.source).where(ConsentEvent.action == "confirm")) == (
            "confirmation link, without the name and organization")


def test_the_consent_log_names_the_wording_a_confirmation_was_asked_under(
        mail_live, mail_app, mail_services, smtp_server):
    """helper-94: a reader who asked on their preferences page to receive again (a page that
    shows no consent wording) was logged as confirming wording 1, and the request itself was
    not logged. The form's request and its confirmation name the wording the form showed."""
    with mail_services.session() as session:
        _, back = subscribers.add(session, subscribers.parse_address("back@example.jp"), Consent("cli"))
        subscribers.unsubscribe(session, back, Consent("web"))
        path = links.preferences_url("https://news.example.jp", SECRET, back.id, back.link_key)
    client = Client(mail_live.url)
    client.submit(path, {"lang": "ja", "action": "resubscribe"})
    subscribe(mail_live, "new@example.jp")
    for message in sent(mail_app, smtp_server):
        link = link_in(message.data, "confirm")
        page = client.get(link)
        client.post(link, {"csrf_token": page.csrf()})
    with mail_services.session() as session:
        logged = session.execute(
            select(Subscriber.email, ConsentEvent.action, ConsentEvent.wording_version).join(Subscriber)
            .where(ConsentEvent.action.in_(("opt_in", "ask", "confirm"))).order_by(ConsentEvent.id)).all()
    assert [tuple(row) for row in logged] == [
        ("back@example.jp", "opt_in", None), ("back@example.jp", "ask", None),  # added, then asked
        ("new@example.jp", "opt_in", "1"),
        ("back@example.jp", "confirm", None), ("new@example.jp", "confirm", "1")]


def test_confirm_without_csrf_token_is_refused(mail_live, mail_app, mail_services, smtp_server):
    subscribe(mail_live, "nocsrf@example.jp")
    link = link_in(sent(mail_app, smtp_server)[0].data, "confirm")
    assert Client(mail_live.url).post(link, {}).status == 400
    assert subscriber(mail_services, "nocsrf@example.jp").status == "pending"


class _PastSigner(TimestampSigner):
    def get_timestamp(self) -> int:
        return clock.timestamp() - 73 * 3600


def test_an_expired_confirmation_link_says_so_and_the_subscriber_stays_pending(mail_live, mail_services):
    client, _ = subscribe(mail_live, "late@example.jp")
    pending = subscriber(mail_services, "late@example.jp")
    serializer = tokens._serializer(SECRET, "confirm")
    serializer.signer = _PastSigner
    path = f"/confirm/{serializer.dumps({'s': pending.id, 'k': pending.link_key})}"
    page = client.get(path)
    assert page.status == 410 and "リンクの有効期限が切れています" in page.text and "/subscribe" in page.text
    token = client.get("/subscribe").csrf()
    assert client.post(path, {"csrf_token": token}).status == 410
    assert subscriber(mail_services, "late@example.jp").status == "pending"


def test_a_tampered_or_foreign_confirmation_link_is_404(mail_live, mail_services):
    subscribe(mail_live, "tamper@example.jp")
    pending = subscriber(mail_services, "tamper@example.jp")
    for token in (tokens.make(SECRET, "unsubscribe", {"s": pending.id}),
                  tokens.make(SECRET, "confirm", {"s": pending.id})[:-3] + "AAA",
                  tokens.make(SECRET, "confirm", {"s": "1"})):
        assert Client(mail_live.url).get(f"/confirm/{token}").status == 404
    assert subscriber(mail_services, "tamper@example.jp").status == "pending"


def test_a_failed_mail_does_not_count_against_the_address(mail_live, mail_app, mail_services, smtp_server):
    smtp_server.fail_next("rcpt", 550, "5.1.1 no such user")
    subscribe(mail_live, "retry@example.jp")
    assert sent(mail_app, smtp_server) == []
    assert attempts(mail_services) == [("127.0.0.1", False)]
    subscribe(mail_live, "retry@example.jp")  # the person tries again: this time it arrives
    assert [m.recipients for m in sent(mail_app, smtp_server)] == [("retry@example.jp",)]



def test_a_mail_the_relay_may_have_kept_counts_against_the_address(mail_live, mail_app, mail_services,
                                                                    smtp_server):
    """helper-99: a relay that drops the line after the final dot (or answers it past the timeout)
    may have the mail; it was freed as failed, so asking again mailed the address again and again."""
    smtp_server.drop("after_data")  # the relay keeps the message and says nothing
    subscribe(mail_live, "victim@example.jp")
    assert [m.recipients for m in sent(mail_app, smtp_server)] == [("victim@example.jp",)]
    subscribe(mail_live, "victim@example.jp")
    assert [m.recipients for m in sent(mail_app, smtp_server)] == [("victim@example.jp",)]  # no second
    with mail_services.session() as session:
        rows = session.execute(select(SubscribeAttempt.mailed, SubscribeAttempt.sent)).all()
    assert [tuple(r) for r in rows] == [(True, True)]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_address_an_import_adds_meanwhile_gets_the_usual_answer(mail_live, mail_app, mail_services,
                                                                   smtp_server):
    """helper-102: on PostgreSQL, asking for an address a running import had added (not yet
    committed) waited for the import and then answered 500: the insert collided. The usual answer
    now, and the owner of a known address gets their preferences link."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with mail_services.session() as importing:
            subscribers.add(importing, subscribers.parse_address("bulk@example.jp"), Consent("import"))
            importing.flush()
            asked = pool.submit(subscribe, mail_live, "bulk@example.jp")
            time.sleep(0.5)  # its insert waits for the import's
        _, reply = asked.result(timeout=10)
    assert reply.status == 200 and "お申し込みを受け付けました" in reply.text
    [mail] = sent(mail_app, smtp_server)
    link_in(mail.data, "p")  # known: the preferences link, no confirmation
    assert subscriber(mail_services, "bulk@example.jp").status == "active"


@pytest.mark.skipif(sys.platform != "linux", reason="another client from 127.0.0.2: all of 127/8 is Linux's")
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_request_held_up_for_one_address_holds_up_no_other_client(mail_live, mail_app, mail_services,
                                                                   smtp_server):
    """helper-99: one lock for every request, so a transaction holding it (a slow database) made
    the whole form answer 503, whatever the address. The turn is per address, and per client
    before that (the per-IP limit): a client's request that waits holds up only that client."""
    slow = consent.limit_key(subscribers.parse_address("slow@example.jp"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with mail_services.session() as held:
            db.one_at_a_time(held, f"subscribe:{addresses.email_hash(slow)}")
            waiting = pool.submit(subscribe, mail_live, "slow@example.jp")
            _, reply = subscribe(mail_live, "other@example.jp", source="127.0.0.2")
            assert reply.status == 200
            time.sleep(0.5)
            assert not waiting.done()  # slow@'s own request waits for its turn
        assert waiting.result(timeout=10)[1].status == 200
    assert sorted(m.recipients for m in sent(mail_app, smtp_server)) == [("other@example.jp",),
                                                                        ("slow@example.jp",)]
