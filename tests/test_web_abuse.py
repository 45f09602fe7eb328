"""Abuse of the public forms and of the server: limits on what a stranger can make mailmag do."""

from __future__ import annotations

import email
import email.policy
import http.client
import json
from urllib.parse import quote

import pytest
from sqlalchemy import func, select
from web_support import Client, LiveServer, counts, make_services

from mailmag.audience import consent, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import Config, WebConfig
from mailmag.models import Item, SubscribeAttempt, utcnow
from mailmag.web import create_app

pytest_plugins = ["web_fixtures"]
FORM = {"agree": "yes", "lang": "ja"}
BIDI = "\u202e\u2066"


@pytest.fixture
def serve(config: Config, smtp_server):  # type: ignore[no-untyped-def]
    """serve(**web settings) → (live server, services, app), sending mail to `smtp_server`."""
    started = []

    def start(**web):  # type: ignore[no-untyped-def]
        services = make_services(smtp_server.configure(config).replace(web=WebConfig(**web)))
        app = create_app(services)
        live = LiveServer(app)
        started.append((live, app, services))
        return live, services, app

    yield start
    for live, app, services in started:
        live.close()
        app.extensions["mailmag"].mailer.close()
        services.close()


def mails(app, smtp_server) -> list[str]:  # type: ignore[no-untyped-def]
    app.extensions["mailmag"].mailer.wait()
    return [m.recipients[0] for m in smtp_server.messages]


def test_address_variants_share_one_per_address_limit(serve, smtp_server):
    live, services, app = serve(subscribe_per_ip_per_hour=100)
    variants = ["victim@example.jp", "victim+1@example.jp", "Victim+2@Example.JP",
                "ｖｉｃｔｉｍ＋３@example.jp", *(f"victim+{n}@example.jp" for n in range(4, 30))]
    for address in variants:
        assert Client(live.url).submit("/subscribe", {**FORM, "email": address}).status == 200
    assert len(mails(app, smtp_server)) == 1  # was 30: one mail per variant
    assert counts(services)["attempts"] == 1  # the refused ones stored nothing


def test_address_variants_from_three_ips_are_one_address(session):
    limits = consent.Limits(per_address_per_day=1, per_ip_per_hour=100)
    now = utcnow()
    mailed = [consent.request_subscription(
        session, subscribers.parse_address(f"victim+{n}@gmail.com" if n % 2 else f"vic.tim+{n}@gmail.com"),
        Consent("web", "form", f"192.0.2.{n % 3}"), limits=limits, now=now) for n in range(30)]
    assert sum(m is not None for m in mailed) == 1


def test_requests_over_the_ip_limit_store_nothing(serve, smtp_server):
    live, services, app = serve(subscribe_per_ip_per_hour=3)
    for n in range(12):
        Client(live.url).submit("/subscribe", {**FORM, "email": f"bomb{n}@example.jp"})
    assert len(mails(app, smtp_server)) == 3
    stored = counts(services)
    assert (stored["attempts"], stored["subscribers"], stored["consents"]) == (3, 3, 3)


def test_ipv6_clients_are_limited_per_64(session):
    limits = consent.Limits(per_address_per_day=5, per_ip_per_hour=3)
    now = utcnow()

    def ask(n: int, ip: str) -> consent.Mail | None:
        return consent.request_subscription(session, subscribers.parse_address(f"v6-{n}@example.jp"),
                                            Consent("web", "form", ip), limits=limits, now=now)

    assert all(ask(n, f"2001:db8:1:2::{n + 1:x}") for n in range(3))
    assert ask(3, "2001:db8:1:2:ffff::9") is None  # the same /64, another address in it
    assert ask(4, "2001:db8:1:3::1") is not None  # the next /64 is another client
    assert session.scalar(select(func.count()).select_from(SubscribeAttempt)) == 4


def test_new_active_and_unsubscribed_addresses_take_the_same_path(serve, smtp_server):
    live, services, app = serve()
    with services.session() as session:
        subscribers.add(session, subscribers.parse_address("active@example.jp"), Consent("cli"))
        _, out = subscribers.add(session, subscribers.parse_address("out@example.jp"), Consent("cli"))
        subscribers.unsubscribe(session, out, Consent("cli"))
    bodies = set()
    for address in ("new@example.jp", "active@example.jp", "out@example.jp"):
        reply = Client(live.url).submit("/subscribe", {**FORM, "email": address})
        bodies.add(reply.body.replace(address.encode(), b"X"))
    assert len(bodies) == 1
    assert sorted(mails(app, smtp_server)) == ["active@example.jp", "new@example.jp", "out@example.jp"]
    with services.session() as session:  # each answer stored one mailed attempt, nothing else differs
        assert session.scalars(select(SubscribeAttempt.mailed)).all() == [True, True, True]


# --- the org submission link ---------------------------------------------------------------


def _submission_path(mailmag) -> str:  # type: ignore[no-untyped-def]
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    link = mailmag.ok("orgs", "token", "cef").stdout.strip().split()[-1]
    return "/submit/" + link.rsplit("/submit/", 1)[1]


def _items(services) -> int:  # type: ignore[no-untyped-def]
    with services.session() as session:
        return session.scalar(select(func.count()).select_from(Item))


def test_a_submission_link_has_an_hourly_item_limit(serve, mailmag):
    live, services, _ = serve(submit_items_per_hour=2)
    path = _submission_path(mailmag)
    replies = [Client(live.url).submit(path, {"kind": "news", "title": f"お知らせ{n}", "body": "本文"},
                                       page=f"{path}?kind=news") for n in range(4)]
    assert [r.status for r in replies] == [200, 200, 429, 429]
    # the member organization reads why, in the form's language
    assert "このリンクからの投稿は1時間に 2 件までです" in replies[2].text
    assert "last hour" not in replies[2].text
    assert _items(services) == 2


def test_a_submission_link_has_a_daily_byte_limit(serve, mailmag):
    live, services, _ = serve(submit_bytes_per_day=10_000)
    path = _submission_path(mailmag)
    big = "あ" * 2000  # 6 000 bytes
    first, second = (Client(live.url).submit(path, {"kind": "news", "title": title, "body": big},
                                             page=f"{path}?kind=news") for title in ("一", "二"))
    assert (first.status, second.status) == (200, 429)
    assert _items(services) == 1


def test_a_form_whose_bytes_are_no_utf8_is_refused_and_stores_nothing(serve, mailmag):
    """helper-82: a title sent as %FF%FE, or in Shift_JIS, was stored as the text '%FF%FE' or
    '%93%FA%96{…' in the review queue and the subscriber list; raw bytes of it emptied the form."""
    live, services, _ = serve()
    path = _submission_path(mailmag)
    sjis = quote("日本語タイトル".encode("cp932"))
    for field in ("title=%FF%FEabc", f"title={sjis}", "title=\xff\xfe"):
        client = Client(live.url)
        token = client.get(f"{path}?kind=news").csrf()
        body = f"csrf_token={token}&kind=news&body=%E6%9C%AC%E6%96%87&".encode() + field.encode("latin-1")
        reply = client.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status == 400 and "送信された文字を読み取れませんでした" in reply.text, field
    client = Client(live.url)
    token = client.get("/subscribe").csrf()
    before = counts(services)
    body = f"csrf_token={token}&agree=yes&lang=ja&email=s%40example.jp&name={sjis}".encode()
    reply = client.request("POST", "/subscribe", body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 400 and "UTF-8" in reply.text
    assert _items(services) == 0 and counts(services) == before
    # multipart/form-data, which Werkzeug decoded with U+FFFD for each bad byte (helper-84)
    token = client.get(f"{path}?kind=news").csrf()
    fields = {"csrf_token": token.encode(), "kind": b"news", "body": "本文".encode(),
              "title": "松江のお知らせ".encode("cp932")}
    for name in ("title", "x"):  # a field of the form, or one more besides it
        parts = dict(fields) if name == "title" else {**fields, "title": "題".encode(), "x": b"\xff"}
        body = b"".join(b"--b\r\nContent-Disposition: form-data; name=\"" + key.encode() + b"\"\r\n\r\n"
                        + value + b"\r\n" for key, value in parts.items()) + b"--b--\r\n"
        reply = client.request("POST", path, body, {"Content-Type": "multipart/form-data; boundary=b"})
        assert reply.status == 400 and "送信された文字を読み取れませんでした" in reply.text, name
    # the same form in UTF-8 is taken
    client.post("/subscribe", {"csrf_token": token, **FORM, "email": "s@example.jp", "name": "日本語"})
    with services.session() as session:
        assert subscribers.get(session, "s@example.jp").name == "日本語"


# --- what readers are shown ----------------------------------------------------------------


def test_bidi_controls_are_stripped_from_titles_names_and_subjects(mailmag, tmp_path):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", f"お知{BIDI}らせ\u2069",
               "--body", "本文")
    mailmag.ok("items", "approve", "1")
    mailmag.ok("subscribers", "add", "n@example.jp", "--name", f"山田{BIDI}太郎\u202c")
    [item] = json.loads(mailmag.ok("items", "list", "--json").stdout)
    assert item["title"] == "お知らせ"
    [person] = json.loads(mailmag.ok("subscribers", "list", "--json").stdout)
    assert person["name"] == "山田太郎"
    mailmag.ok("issues", "new", "--title", f"第1号{BIDI}特集")
    mailmag.ok("issues", "send", "1", "--yes")
    mailmag.ok("worker", "--once")
    [mail] = (tmp_path / "outbox").glob("*.eml")
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    for shown in (str(message["Subject"]), str(message["To"]), message.get_body(("plain",)).get_content()):
        assert not any(c in shown for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def test_the_subscribe_form_strips_bidi_controls_from_the_name(serve, smtp_server):
    live, services, _ = serve()
    for _ in range(2):  # the second request updates the pending row
        Client(live.url).submit("/subscribe", {**FORM, "email": "p@example.jp", "name": f"佐藤{BIDI}花子"})
    with services.session() as session:
        assert subscribers.get(session, "p@example.jp").name == "佐藤花子"


# --- the server ----------------------------------------------------------------------------


SIGNING = [("serve", "--port", "0"), ("orgs", "token", "cef"), ("worker", "--once")]


@pytest.mark.parametrize("command", SIGNING)
def test_commands_that_sign_links_refuse_a_short_secret_key(mailmag, command):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    result = mailmag(*command, env={"MAILMAG_SECRET_KEY": "short-key"})
    assert result.exit_code == 1
    assert "MAILMAG_SECRET_KEY has only 9 characters, so links could be forged" in result.stderr


def _raw(live: LiveServer, path: str, host: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", int(live.url.rsplit(":", 1)[1]), timeout=10)
    connection.putrequest("GET", path, skip_host=True)
    connection.putheader("Host", host)
    connection.endheaders()
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


@pytest.mark.parametrize("path", ["/archive", "//archive/", "/subscribe/"])
def test_no_redirect_echoes_the_host_header(live, path):
    response = _raw(live, path, "evil.example")
    assert "evil.example" not in (response.getheader("Location") or "")
    assert response.status == 200
