"""Unsubscribe links over real HTTP: the page, the button, RFC 8058 one-click, bad tokens, preferences."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest
from conftest import SECRET
from sqlalchemy import select
from web_support import Client, LiveServer, key_of, one_click, with_backend_killed_mid_request

from mailmag import links, tokens
from mailmag.audience import imports, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.content import transitions
from mailmag.models import ConsentEvent, Delivery, Issue, Rendering, Subscriber
from mailmag.services import Services
from mailmag.web import create_app

pytest_plugins = ["web_fixtures"]
BASE = "https://news.example.jp"


@pytest.fixture
def reader(web_services):  # type: ignore[no-untyped-def]
    """An active subscriber with a queued delivery of issue 1 (the send is under way)."""
    with web_services.session() as session:
        _, subscriber = subscribers.add(session, subscribers.parse_address("yamada@example.jp"),
                                        Consent("cli"), name="山田 太郎", topics=["events"])
        subscribers.add(session, subscribers.parse_address("sato@example.jp"), Consent("cli"))
        issue = Issue(number=1, title="第1号")
        issue.renderings.append(Rendering(lang="ja", subject="第1号", html="<p>x</p>", text="x"))
        session.add(issue)
        session.flush()
        transitions.start_sending(session, issue, "example.jp", "ja")
        return subscriber.id


def state(services, subscriber_id: int) -> dict:  # type: ignore[no-untyped-def]
    with services.session() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        events = session.scalars(select(ConsentEvent).where(ConsentEvent.subscriber_id == subscriber_id)
                                 .order_by(ConsentEvent.id)).all()
        deliveries = session.scalars(select(Delivery.status).where(Delivery.subscriber_id == subscriber_id))
        return {"status": subscriber.status, "lang": subscriber.lang, "topics": subscriber.topics,
                "events": [(e.action, e.channel) for e in events], "deliveries": list(deliveries)}


def unsubscribe_path(services, subscriber_id: int) -> str:  # type: ignore[no-untyped-def]
    return links.unsubscribe_url(BASE, SECRET, subscriber_id, key_of(services, subscriber_id))


def test_one_click_post_unsubscribes_without_page_cookie_or_redirect(live, web_services, reader):
    reply = one_click(live.url, unsubscribe_path(web_services, reader))
    assert reply.status == 200
    assert reply.headers.get("Set-Cookie") is None and reply.headers.get("Location") is None
    after = state(web_services, reader)
    assert after["status"] == "unsubscribed"
    assert after["events"] == [("opt_in", "cli"), ("opt_out", "one-click")]
    assert after["deliveries"] == ["cancelled"]  # the queued issue will not reach them


def test_one_click_can_be_repeated_and_each_is_logged(live, web_services, reader):
    """Repeatable (RFC 8058), and each POST is in the consent log: the reader's latest word,
    which an undo in a browser that unsubscribed before must not overturn (helper-60)."""
    assert one_click(live.url, unsubscribe_path(web_services, reader)).status == 200
    assert one_click(live.url, unsubscribe_path(web_services, reader)).status == 200
    assert state(web_services, reader)["events"] == [("opt_in", "cli"), ("opt_out", "one-click"),
                                                     ("opt_out", "one-click")]


def test_get_and_head_show_the_page_and_change_nothing(live, web_services, reader):
    before = state(web_services, reader)
    client = Client(live.url)
    page = client.get(unsubscribe_path(web_services, reader))
    assert page.status == 200
    assert "yamada@example.jp" in page.text and "会議 メールマガジン」の配信を停止" in page.text
    assert page.text.count("<button") == 1
    head = client.head(unsubscribe_path(web_services, reader))
    assert head.status == 200 and head.body == b""
    assert state(web_services, reader) == before


def test_the_button_unsubscribes_with_the_form(live, web_services, reader):
    client = Client(live.url)
    reply = client.submit(unsubscribe_path(web_services, reader), {})
    assert reply.status == 200
    assert "配信を停止しました" in reply.text and "yamada@example.jp" in reply.text
    after = state(web_services, reader)
    assert after["status"] == "unsubscribed" and after["events"][-1] == ("opt_out", "web")
    assert after["deliveries"] == ["cancelled"]
    again = client.get(unsubscribe_path(web_services, reader))
    assert "配信は停止されています" in again.text


def test_a_form_post_without_csrf_token_is_refused(live, web_services, reader):
    before = state(web_services, reader)
    client = Client(live.url)
    client.get(unsubscribe_path(web_services, reader))  # has a session, but sends no token
    reply = client.post(unsubscribe_path(web_services, reader), {"confirm": "yes"})
    assert reply.status == 400 and "フォームの有効期限が切れました" in reply.text
    stranger = Client(live.url)  # a token from another visitor's session
    token = stranger.get(unsubscribe_path(web_services, reader)).csrf()
    assert client.post(unsubscribe_path(web_services, reader), {"csrf_token": token}).status == 400
    assert state(web_services, reader) == before


def _flip(token: str, at: int) -> str:
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]


def test_a_tampered_token_is_404_and_changes_nothing(live, web_services, reader):
    token = unsubscribe_path(web_services, reader).rsplit("/", 1)[1]
    before = state(web_services, reader)
    for where in (0, 12, len(token) - 3):  # payload, timestamp, signature (not its padding bits)
        path = f"/u/{_flip(token, where)}"
        assert Client(live.url).get(path).status == 404
        assert one_click(live.url, path).status == 404
    assert state(web_services, reader) == before


def test_a_token_made_for_another_purpose_or_key_is_404(live, web_services, reader):
    before = state(web_services, reader)
    foreign = [
        tokens.make(SECRET, "preferences", {"s": reader}),
        tokens.make(SECRET, "confirm", {"s": reader}),
        tokens.make("another-installation-key", "unsubscribe", {"s": reader}),
    ]
    for token in foreign:
        assert one_click(live.url, f"/u/{token}").status == 404
        page = Client(live.url).get(f"/u/{token}")
        assert page.status == 404 and "ページが見つかりません" in page.text
    assert state(web_services, reader) == before


def test_one_click_for_a_forgotten_subscriber_still_answers_200(live, web_services, reader):
    path = unsubscribe_path(web_services, reader)
    with web_services.session() as session:
        subscribers.forget(session, session.get(Subscriber, reader), Consent("cli"))
    assert one_click(live.url, path).status == 200
    page = Client(live.url).get(path)
    # helper-85, helper-86: the page said 配信は停止されています (later: addresses not on the list
    # are not sent), also to a reader the link no longer finds (the list moved to another
    # database) who was still sent every issue
    assert page.status == 200 and "このリンクの方は読者名簿にありません" in page.text
    assert "お送りしません" not in page.text and "配信は停止されています" not in page.text
    assert "このリンクでは何も変わっていません" in page.text
    assert "いちばん新しいメールにある配信停止のリンク" in page.text


def test_preferences_change_topics_and_language(live, web_services, reader):
    path = links.preferences_url(BASE, SECRET, reader, key_of(web_services, reader))
    client = Client(live.url)
    page = client.get(path)
    assert 'value="events" checked' in page.text and 'value="news">' in page.text
    reply = client.post(path, {"csrf_token": page.csrf(), "topic": ["news"], "lang": "en", "action": "save"})
    assert reply.status == 200
    assert "Saved." in reply.text and '<html lang="en">' in reply.text  # now shown in English
    after = state(web_services, reader)
    assert (after["lang"], after["topics"], after["status"]) == ("en", ["news"], "active")
    client.submit(path, {"lang": "en", "action": "save"})  # no topic: every issue
    assert state(web_services, reader)["topics"] == []


def test_the_office_list_imported_again_keeps_what_a_subscriber_chose(live, web_services, reader, tmp_path):
    """Re-importing the office's list set 山田's language and topics back to what the list said,
    undoing what 山田 had chosen on the preferences page (`updated 1`, nothing more said). The
    subscriber's own choice stands; the office's name and organization still apply."""
    path = links.preferences_url(BASE, SECRET, reader, key_of(web_services, reader))
    Client(live.url).submit(path, {"topic": ["news"], "lang": "en", "action": "save"})
    listed = tmp_path / "list.csv"
    listed.write_text("メールアドレス,氏名,所属,言語,テーマ\n"
                      "yamada@example.jp,山田 太郎,広島大学,ja,イベント案内\n"
                      "sato@example.jp,佐藤,,en,news\n", encoding="cp932")
    with web_services.session() as session:
        report = imports.import_file(session, listed, Consent("import"), topics=web_services.config.topics)
        session.commit()
    assert report.summary() == "added 0, updated 2, unchanged 0, invalid 0, suppressed 0, kept 1 own choices"
    assert [line for line, _reason in report.kept_choices] == [2]
    with web_services.session() as session:
        yamada, sato = (session.scalar(select(Subscriber).where(Subscriber.email == email))
                        for email in ("yamada@example.jp", "sato@example.jp"))
        assert (yamada.lang, yamada.topics, yamada.organization) == ("en", ["news"], "広島大学")
        assert (sato.lang, sato.topics) == ("en", ["news"])  # chose nothing: the list applies
    assert state(web_services, reader)["events"][-1] == ("choose", "web")  # in the consent log


def test_preferences_resubscribe_after_an_unsubscribe(live, web_services, reader):
    one_click(live.url, unsubscribe_path(web_services, reader))
    path = links.preferences_url(BASE, SECRET, reader, key_of(web_services, reader))
    client = Client(live.url)
    page = client.get(path)
    assert "配信停止中" in page.text and "確認メールを受け取って配信を再開する" in page.text
    before = state(web_services, reader)
    reply = client.post(path, {"csrf_token": page.csrf(), "lang": "ja", "topic": "events",
                               "action": "resubscribe"})
    assert "確認のメールをお送りします" in reply.text and "配信を再開しました" not in reply.text
    # the request is logged (helper-94: it was not); only the mailed confirmation link re-activates
    assert state(web_services, reader) == {**before, "events": [*before["events"], ("ask", "web")]}


def test_preferences_reject_bad_input_and_missing_csrf(live, web_services, reader):
    path = links.preferences_url(BASE, SECRET, reader, key_of(web_services, reader))
    before = state(web_services, reader)
    client = Client(live.url)
    assert client.post(path, {"lang": "en"}).status == 400
    assert client.submit(path, {"lang": "fr"}).status == 400
    assert client.submit(path, {"lang": "ja", "topic": "cooking"}).status == 400
    assert Client(live.url).get(f"/p/{_flip(path.rsplit('/', 1)[1], 5)}").status == 404
    assert state(web_services, reader) == before


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_one_click_outlives_its_database_connection_dying_mid_request(live, web_services, reader):
    """A mail provider sends one-click once and shows nobody an error: a PostgreSQL backend that
    dies under the request (a restart, a failover, an administrator's pg_terminate_backend) must
    not lose the opt-out. The request is held on a lock, its backend killed, the lock let go."""
    path = unsubscribe_path(web_services, reader)
    status = with_backend_killed_mid_request(web_services.config.database.url, "subscribers",
                                             lambda: one_click(live.url, path).status)
    assert status == 200
    after = state(web_services, reader)
    assert after["status"] == "unsubscribed" and after["deliveries"] == ["cancelled"]
    assert after["events"] == [("opt_in", "cli"), ("opt_out", "one-click")]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word: a database host that hangs."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("database", ["refused", "silent"])
def test_with_the_database_down_a_one_click_is_503_with_retry_after(config, web_services, reader,
                                                                    silent_server, database):
    """Not a 500 ("broken"), and not a request that hangs (it held one of the web app's threads
    for ever when the server said nothing): 503 and Retry-After, which a provider's one-click or a
    load balancer may act on, and the page says to try again later. (The client gives up after
    10 s; [database] connect_timeout_seconds is 2 here.)"""
    path = unsubscribe_path(web_services, reader)
    port = 9 if database == "refused" else silent_server  # nothing listens on 9
    away = dataclasses.replace(config, database=dataclasses.replace(
        config.database, url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/test",
        connect_timeout_seconds=2))
    app = create_app(Services(away))
    server = LiveServer(app)
    try:
        reply = one_click(server.url, path)
        assert reply.status == 503 and reply.headers["Retry-After"] == "60"
        assert "しばらくしてから、もう一度お試しください" in reply.text
    finally:
        server.close()
        app.extensions["mailmag"].mailer.close()
    assert state(web_services, reader)["status"] == "active"
