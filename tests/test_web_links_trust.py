"""Signed links act only on the person they were made for; opting back in needs fresh consent.

Over real HTTP (waitress) with mail caught by aiosmtpd, and the CLI on the same database.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from urllib.parse import urlsplit

import pytest
from conftest import SECRET
from itsdangerous import TimestampSigner
from sqlalchemy import select, update
from web_support import Client, key_of, link_in, one_click

from mailmag import links, tokens
from mailmag.audience import consent
from mailmag.config import WebConfig
from mailmag.models import ConsentEvent, Delivery, Subscriber, utcnow
from mailmag.web import create_app

pytest_plugins = ["web_fixtures"]
BASE = "https://news.example.jp"
FORM = {"agree": "yes", "lang": "ja"}
GONE = "すでに使えなくなっています"  # the 404 page: "the link is wrong or no longer valid"


def row(services, email: str) -> Subscriber | None:  # type: ignore[no-untyped-def]
    with services.session() as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email_key == email))
        if subscriber is not None:
            session.expunge(subscriber)
        return subscriber


def log(services, subscriber_id: int) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    with services.session() as session:
        events = session.scalars(select(ConsentEvent).where(ConsentEvent.subscriber_id == subscriber_id)
                                 .order_by(ConsentEvent.id))
        return [(e.action, e.channel, e.source) for e in events]


def mails(app, smtp_server) -> list:  # type: ignore[no-untyped-def]
    app.extensions["mailmag"].mailer.wait()
    return list(smtp_server.messages)


def purge_everything_pending(services) -> int:  # type: ignore[no-untyped-def]
    """`purge-pending` as it runs a week later."""
    with services.session() as session:
        return consent.purge_pending(session, 1, now=utcnow() + dt.timedelta(days=8))


def b_untouched(services, mailmag) -> None:  # type: ignore[no-untyped-def]
    b = row(services, "b@example.jp")
    assert (b.status, b.lang, b.topics) == ("active", "ja", [])
    assert [action for action, _, _ in log(services, b.id)] == ["opt_in"]
    assert '"status": "active"' in mailmag.ok("subscribers", "list", "--json").stdout


# --- 1. a link never acts on another person ------------------------------------------------


def test_a_purged_subscribers_links_do_not_reach_the_next_owner_of_the_id(
        mail_live, mail_app, mail_services, smtp_server, mailmag, db_url):
    Client(mail_live.url).submit("/subscribe", {**FORM, "email": "a@example.jp"})
    [mail] = mails(mail_app, smtp_server)
    confirm_link = link_in(mail.data, "confirm")
    a = row(mail_services, "a@example.jp")
    preferences_link = links.preferences_url(BASE, SECRET, a.id, a.link_key)  # as the confirm page shows it
    assert purge_everything_pending(mail_services) == 1
    mailmag.ok("subscribers", "add", "b@example.jp")
    b = row(mail_services, "b@example.jp")
    if db_url.startswith("sqlite"):
        assert b.id == a.id  # SQLite handed A's id to B: the id alone would now name B

    client = Client(mail_live.url)
    for link in (confirm_link, preferences_link):
        page = client.get(link)
        assert page.status == 404 and GONE in page.text and "b@example.jp" not in page.text
    token = client.get("/subscribe").csrf()
    assert client.post(confirm_link, {"csrf_token": token}).status == 404
    assert client.post(preferences_link, {"csrf_token": token, "lang": "en", "topic": "news",
                                          "action": "save"}).status == 404
    b_untouched(mail_services, mailmag)


def test_a_forgotten_subscribers_links_do_not_reach_the_next_owner_of_the_id(
        live, web_services, mailmag, db_url):
    mailmag.ok("subscribers", "add", "a@example.jp")
    a = row(web_services, "a@example.jp")
    unsubscribe = links.unsubscribe_url(BASE, SECRET, a.id, a.link_key)
    preferences = links.preferences_url(BASE, SECRET, a.id, a.link_key)
    mailmag.ok("subscribers", "remove", "a@example.jp", "--forget")
    mailmag.ok("subscribers", "add", "b@example.jp")
    if db_url.startswith("sqlite"):
        assert row(web_services, "b@example.jp").id == a.id

    client = Client(live.url)
    page = client.get(preferences)
    assert page.status == 404 and GONE in page.text
    assert client.submit(preferences, {"lang": "en", "action": "save"}, page="/subscribe").status == 404
    assert one_click(live.url, unsubscribe).status == 200  # RFC 8058: answered, and nobody changed
    page = client.get(unsubscribe)
    assert "b@example.jp" not in page.text
    client.submit(unsubscribe, {}, page="/subscribe")
    b_untouched(web_services, mailmag)


class _EarlierSigner(TimestampSigner):
    """Signs as if an hour ago: a link mailed before the upgrade that gave links keys."""

    def get_timestamp(self) -> int:
        return int(time.time()) - 3600


def _legacy(purpose: str, subscriber_id: int) -> str:
    serializer = tokens._serializer(SECRET, purpose)
    serializer.signer = _EarlierSigner
    return serializer.dumps({"s": subscriber_id})


def test_a_link_without_a_key_works_only_for_a_subscriber_older_than_the_link(live, web_services, mailmag):
    mailmag.ok("subscribers", "add", "old@example.jp")
    mailmag.ok("subscribers", "add", "new@example.jp")
    old, new = row(web_services, "old@example.jp"), row(web_services, "new@example.jp")
    with web_services.session() as session:  # old subscribed two hours ago, before the link was mailed
        session.execute(update(Subscriber).where(Subscriber.id == old.id)
                        .values(created_at=utcnow() - dt.timedelta(hours=2)))
    client = Client(live.url)
    page = client.get(f"/p/{_legacy('preferences', old.id)}")
    assert page.status == 200 and "old@example.jp" in page.text
    page = client.get(f"/p/{_legacy('preferences', new.id)}")  # a row made after the link: not its person
    assert page.status == 404 and "new@example.jp" not in page.text
    assert one_click(live.url, f"/u/{_legacy('unsubscribe', new.id)}").status == 200
    assert row(web_services, "new@example.jp").status == "active"
    assert one_click(live.url, f"/u/{_legacy('unsubscribe', old.id)}").status == 200
    assert row(web_services, "old@example.jp").status == "unsubscribed"


def test_a_link_with_another_rows_key_is_refused(live, web_services, mailmag):
    mailmag.ok("subscribers", "add", "x@example.jp")
    x = row(web_services, "x@example.jp")
    forged = links.preferences_url(BASE, SECRET, x.id, "an-earlier-rows-key-0123")
    assert Client(live.url).get(forged).status == 404
    assert Client(live.url).get(links.preferences_url(BASE, SECRET, x.id, x.link_key)).status == 200


def test_compact_links_refuse_a_forged_signature_and_a_wrong_purpose_and_old_links_still_work(
        live, web_services, mailmag):
    mailmag.ok("subscribers", "add", "x@example.jp")
    x = row(web_services, "x@example.jp")
    url = links.unsubscribe_url(BASE, SECRET, x.id, x.link_key)
    token = url.rsplit("/", 1)[1]
    assert re.fullmatch(rf"{x.id}\.[\w-]{{8}}\.[\w-]{{14}}", token)  # compact: fits List-Unsubscribe
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BA")
    assert one_click(live.url, f"/u/{forged}").status == 404
    assert Client(live.url).get(f"/p/{token}").status == 404  # an unsubscribe token is no preferences link
    assert one_click(live.url, f"/u/{tokens.make_person('another key', 'unsubscribe', x.id, x.link_key)}"
                     ).status == 404
    assert row(web_services, "x@example.jp").status == "active"
    # a link mailed before the compact form (itsdangerous, carrying the row's key) still works
    mailed = tokens.make(SECRET, "preferences", {"s": x.id, "k": x.link_key})
    assert Client(live.url).get(f"/p/{mailed}").status == 200
    assert one_click(live.url, f"/u/{tokens.make(SECRET, 'unsubscribe', {'s': x.id, 'k': x.link_key})}"
                     ).status == 200
    assert row(web_services, "x@example.jp").status == "unsubscribed"


# --- 2. opting back in needs fresh consent -------------------------------------------------


def test_resubscribing_from_a_preferences_link_needs_the_confirmation_mail(
        mail_live, mail_app, mail_services, smtp_server, mailmag):
    mailmag.ok("subscribers", "add", "r@example.jp")
    r = row(mail_services, "r@example.jp")
    assert one_click(mail_live.url, links.unsubscribe_url(BASE, SECRET, r.id, r.link_key)).status == 200
    preferences = links.preferences_url(BASE, SECRET, r.id, r.link_key)
    before = log(mail_services, r.id)

    forwarded = Client(mail_live.url)  # anyone holding the link, e.g. a forwarded issue
    reply = forwarded.submit(preferences, {"lang": "ja", "action": "resubscribe"})
    assert reply.status == 200 and "確認のメールをお送りします" in reply.text
    assert row(mail_services, "r@example.jp").status == "unsubscribed"
    # asking is no opt-in, but the log keeps the request (helper-94)
    assert log(mail_services, r.id) == [*before, ("ask", "web", "preferences page")]
    [mail] = mails(mail_app, smtp_server)
    assert mail.recipients == ("r@example.jp",)

    owner = Client(mail_live.url)
    owner.submit(link_in(mail.data, "confirm"), {})
    assert row(mail_services, "r@example.jp").status == "active"
    action, channel, source = log(mail_services, r.id)[-1]
    assert (action, channel, source) == ("confirm", "web", "confirmation link")


def test_a_confirmation_link_mailed_before_an_unsubscribe_cannot_undo_it(
        mail_live, mail_app, mail_services, smtp_server):
    client = Client(mail_live.url)
    client.submit("/subscribe", {**FORM, "email": "c@example.jp"})
    [mail] = mails(mail_app, smtp_server)
    confirm_link = link_in(mail.data, "confirm")
    client.submit(confirm_link, {})
    c = row(mail_services, "c@example.jp")
    assert c.status == "active"
    one_click(mail_live.url, links.unsubscribe_url(BASE, SECRET, c.id, c.link_key))
    page = client.get(confirm_link)
    assert page.status == 410
    # minutes old, not expired: the page says why (it said the 72 hours were over)
    assert "このリンクは使えなくなりました" in page.text and "有効期限" not in page.text
    reply = client.submit(confirm_link, {}, page="/subscribe")
    assert reply.status == 410
    assert row(mail_services, "c@example.jp").status == "unsubscribed"


def test_undo_works_only_in_the_browser_session_that_unsubscribed(live, web_services, mailmag):
    mailmag.ok("subscribers", "add", "u@example.jp")
    u = row(web_services, "u@example.jp")
    unsubscribe = links.unsubscribe_url(BASE, SECRET, u.id, u.link_key)
    browser = Client(live.url)
    page = browser.submit(unsubscribe, {})
    assert "配信を停止しました" in page.text and "取り消す" in page.text

    stranger = Client(live.url)
    assert "取り消す" not in stranger.get(unsubscribe).text
    assert stranger.submit(f"{unsubscribe}/undo", {}, page="/subscribe").status == 403
    assert row(web_services, "u@example.jp").status == "unsubscribed"

    reply = browser.post(f"{unsubscribe}/undo", {"csrf_token": page.csrf()})
    assert reply.status == 200 and "配信を再開しました" in reply.text
    assert row(web_services, "u@example.jp").status == "active"
    action, channel, source = log(web_services, u.id)[-1]
    assert (action, channel) == ("opt_in", "web") and "browser session that unsubscribed" in source
    again = browser.post(f"{unsubscribe}/undo", {"csrf_token": page.csrf()})  # once: nothing more is done
    assert (again.status, again.headers["Location"]) == (303, urlsplit(unsubscribe).path)
    assert "配信を停止する" in browser.get(unsubscribe).text  # helper-59: not a 403 for a subscribed reader
    assert [a for a, _, _ in log(web_services, u.id)] == ["opt_in", "opt_out", "opt_in"]  # added, out, back
    # the page after the undo is the preferences form: it posts to the preferences link, not to
    # /undo (where a change of topic was refused, 403, and lost)
    action = re.search(r'<form method="post" action="([^"]+)"', reply.text).group(1)
    assert action == urlsplit(links.preferences_url(BASE, SECRET, u.id, u.link_key)).path
    saved = browser.post(action, {"csrf_token": reply.csrf(), "topic": "news", "lang": "en",
                                  "action": "save"})
    assert saved.status == 200 and row(web_services, "u@example.jp").topics == ["news"]


def _unsubscribed_in_a_browser(live, services, address: str):  # type: ignore[no-untyped-def]
    """(the reader's unsubscribe link, the browser that used it, the page it got: it offers 取り消す)."""
    reader = row(services, address)
    unsubscribe = links.unsubscribe_url(BASE, SECRET, reader.id, reader.link_key)
    browser = Client(live.url)
    page = browser.submit(unsubscribe, {})
    assert "配信を停止しました" in page.text and "取り消す" in page.text
    return unsubscribe, browser, page


@pytest.mark.parametrize("undo", ["while_it_is_sent", "after_the_rest_was_sent"])
@pytest.mark.parametrize("started", ["before_they_left", "while_they_were_out"])
def test_an_undone_unsubscribe_gets_the_issue_after_all(live, web_services, mailmag, started, undo):
    """A reader unsubscribed by accident and took it back minutes later (取り消す); the page
    promises that nothing is lost. helper-55: the issue being sent to them when they left stayed
    cancelled for them and never went; helper-57: the same when the rest of the list was sent
    before they pressed 取り消す; helper-58: an issue whose send started while they were out had
    its audience frozen without them, and never went to them either."""
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    item = mailmag.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "お知らせ", "--body",
                      "本文です。", "--json")
    mailmag.ok("items", "approve", re.search(r'"id": (\d+)', item.stdout).group(1))
    for address in ("u@example.jp", "v@example.jp"):
        mailmag.ok("subscribers", "add", address)
    if started == "before_they_left":
        mailmag.ok("issues", "new")
        mailmag.ok("issues", "send", "1", "--yes")
    unsubscribe, browser, page = _unsubscribed_in_a_browser(live, web_services, "u@example.jp")
    if started == "while_they_were_out":
        mailmag.ok("issues", "new")
        assert "1 message" in mailmag.ok("issues", "send", "1", "--yes").stdout  # v only: u is out
    sent = 0
    if undo == "after_the_rest_was_sent":
        assert mailmag.ok("worker", "--once").stdout.strip() == "sent 1, failed 0, deferred 0"
        assert mailmag.ok("issues", "status", "1").stdout.startswith("issue 1 (第1号): sent")
        sent = 1
    assert browser.post(f"{unsubscribe}/undo", {"csrf_token": page.csrf()}).status == 200
    assert mailmag.ok("worker", "--once").stdout.strip() == f"sent {2 - sent}, failed 0, deferred 0"
    status = mailmag.ok("issues", "status", "1").stdout
    assert status.startswith("issue 1 (第1号): sent")
    assert "total 2, sent 2, failed 0, pending 0, dead 0, cancelled 0" in status
    with web_services.session() as session:
        assert session.scalar(select(Delivery.status).where(Delivery.email == "u@example.jp")) == "sent"


def test_a_bounced_reader_who_unsubscribes_keeps_the_bounce_on_record_and_undo_restores_it(
        live, web_services, mailmag):
    """helper-55: a one-click unsubscribe from an old mail turned a hard-bounced reader into
    'unsubscribed (opted out)': the list no longer showed that the address is dead, and taking
    the unsubscribe back made a dead address active again."""
    from mailmag.audience import bounces

    mailmag.ok("subscribers", "add", "u@example.jp")
    with web_services.session() as session:
        reader = session.scalar(select(Subscriber).where(Subscriber.email_key == "u@example.jp"))
        bounces.suppress(session, reader, "rejected when sent: 550 5.1.1 no such user")
    u = row(web_services, "u@example.jp")
    unsubscribe = links.unsubscribe_url(BASE, SECRET, u.id, u.link_key)
    browser = Client(live.url)
    page = browser.submit(unsubscribe, {})
    assert "配信を停止しました" in page.text
    u = row(web_services, "u@example.jp")
    assert (u.status, u.status_reason) == (
        "unsubscribed", "opted out (web); bounced before: rejected when sent: 550 5.1.1 no such user")
    assert browser.post(f"{unsubscribe}/undo", {"csrf_token": page.csrf()}).status == 200
    u = row(web_services, "u@example.jp")
    assert (u.status, u.status_reason) == ("bounced", "rejected when sent: 550 5.1.1 no such user")


@pytest.mark.parametrize("later", ["the_office_removed_them", "another_browser_unsubscribed",
                                   "the_mail_client_said_it_again"])
def test_undo_cannot_overturn_a_later_unsubscribe(live, web_services, mailmag, later):
    """helper-59: a 取り消す page left open (or a session cookie kept from before an undo) took
    back an unsubscribe made after it, by the office (`subscribers remove`, after a re-add) or
    in another browser: the reader was active again against their latest wish. helper-60: also
    one said again while they were out (the mail client's one-click POST), which changed
    nothing and so was not logged."""
    mailmag.ok("subscribers", "add", "u@example.jp")
    unsubscribe, browser, page = _unsubscribed_in_a_browser(live, web_services, "u@example.jp")
    u = row(web_services, "u@example.jp")
    if later == "the_office_removed_them":
        mailmag.ok("subscribers", "add", "u@example.jp", "--resubscribe")
        mailmag.ok("subscribers", "remove", "u@example.jp")
    elif later == "the_mail_client_said_it_again":
        assert Client(live.url).post(unsubscribe, {"List-Unsubscribe": "One-Click"}).status == 200
    else:
        kept = dict(browser.cookies)  # this browser's session as it was before its undo
        assert browser.post(f"{unsubscribe}/undo", {"csrf_token": page.csrf()}).status == 200
        assert "配信を停止しました" in Client(live.url).submit(unsubscribe, {}).text
        browser.cookies = kept
    before = log(web_services, u.id)
    assert "取り消す" not in browser.get(unsubscribe).text
    assert browser.post(f"{unsubscribe}/undo", {"csrf_token": page.csrf()}).status == 403
    assert row(web_services, "u@example.jp").status == "unsubscribed"
    assert log(web_services, u.id) == before


def test_undo_is_refused_after_its_minutes(config, mailmag):
    from web_support import LiveServer, make_services

    services = make_services(config.replace(web=WebConfig(undo_minutes=0)))
    app = create_app(services)
    live = LiveServer(app)
    try:
        mailmag.ok("subscribers", "add", "late@example.jp")
        s = row(services, "late@example.jp")
        unsubscribe = links.unsubscribe_url(BASE, SECRET, s.id, s.link_key)
        browser = Client(live.url)
        page = browser.submit(unsubscribe, {})
        assert "配信を停止しました" in page.text and "取り消す" not in page.text
        assert browser.submit(f"{unsubscribe}/undo", {}, page="/subscribe").status == 403
        assert row(services, "late@example.jp").status == "unsubscribed"
    finally:
        live.close()
        app.extensions["mailmag"].mailer.close()
        services.close()


@pytest.mark.parametrize("status", ["unsubscribed", "bounced"])
def test_the_subscribe_form_for_an_opted_out_address_sends_a_confirmation(
        status, mail_live, mail_app, mail_services, smtp_server, mailmag):
    mailmag.ok("subscribers", "add", "o@example.jp")
    with mail_services.session() as session:
        session.execute(update(Subscriber).values(status=status))
    Client(mail_live.url).submit("/subscribe", {**FORM, "email": "o@example.jp"})
    [mail] = mails(mail_app, smtp_server)
    assert row(mail_services, "o@example.jp").status == status
    Client(mail_live.url).submit(link_in(mail.data, "confirm"), {})
    assert row(mail_services, "o@example.jp").status == "active"
    assert key_of(mail_services, row(mail_services, "o@example.jp").id)


def test_the_migration_gives_every_existing_subscriber_a_key_of_its_own(db_url):
    from alembic import command
    from sqlalchemy import text

    from mailmag import db

    engine = db.make_engine(db_url)
    try:
        command.upgrade(db.alembic_config(engine), "0002")
        with engine.begin() as conn:
            for n in (1, 2):
                conn.execute(text(
                    "INSERT INTO subscribers (email, email_key, name, organization, lang, topics, status, "
                    "status_reason, created_at, updated_at) "
                    "VALUES (:e, :e, '', '', 'ja', '[]', 'active', '', :t, :t)"),
                    {"e": f"s{n}@example.jp", "t": utcnow().replace(tzinfo=None)})
            conn.execute(text(
                "INSERT INTO consent_events (subscriber_id, email_hash, action, channel, source, at) "
                "VALUES (1, 'h', 'opt_in', 'cli', '', :t)"), {"t": utcnow().replace(tzinfo=None)})
        command.upgrade(db.alembic_config(engine), "head")
        with engine.connect() as conn:
            keys = conn.execute(text("SELECT link_key FROM subscribers")).scalars().all()
            kept = conn.execute(text("SELECT subscriber_id FROM consent_events")).scalars().all()
        assert len(keys) == 2 and len(set(keys)) == 2 and all(len(k) >= 20 for k in keys)
        assert kept == [1]  # the consent log still names its subscriber
    finally:
        engine.dispose()
