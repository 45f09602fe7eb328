"""What the workflow shows on the web: a test mail's links, and the archive's footer."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import pytest
from conftest import SECRET
from web_support import Client, counts, link_in, one_click

from mailmag import links
from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.content import issues, items, orgs
from mailmag.delivery import dispatch
from mailmag.delivery.transports import MemoryTransport
from mailmag.models import Subscriber, utcnow

pytest_plugins = ["web_fixtures"]


@pytest.fixture
def composed(web_services):  # type: ignore[no-untyped-def]
    """One subscriber and issue 1, composed from one approved event (a draft)."""
    with web_services.session() as session:
        org = orgs.add(session, "cef", "中国経済連合会")
        day = (utcnow() + dt.timedelta(days=60)).date().isoformat()
        item = items.submit(session, org, "event", {"title": "シンポジウム", "date": day, "venue": "松江市"})
        items.approve(session, [item.id])
        subscribers.add(session, subscribers.parse_address("reader@example.jp"), Consent("cli"))
        return issues.compose(session, web_services.config).issue.id


def _path(url: str) -> str:
    return urlsplit(url).path


def test_the_links_of_a_test_mail_open_a_page_saying_it_is_a_test(live, web_services, composed):
    transport = MemoryTransport()
    with web_services.session() as session:
        issue = issues.test_ready(session, web_services.config, composed)
    dispatch.send_test(web_services, transport, issue, ["editor@example.jp"])
    [data] = transport.to("editor@example.jp")
    client = Client(live.url)
    for kind in ("u", "p"):
        page = client.get(_path(link_in(data, kind)))
        assert page.status == 200
        assert "テスト送信のリンクです" in page.text and "配信は停止されています" not in page.text
    assert one_click(live.url, _path(link_in(data, "u"))).text == "test link: nothing changed\n"
    with web_services.session() as session:
        assert [s.status for s in session.query(Subscriber)] == ["active"]


def test_the_archive_footer_says_how_to_unsubscribe_instead_of_an_empty_address(live, web_services, composed):
    with web_services.session() as session:
        issues.start_sending(session, web_services.config, issues.get(session, composed))
    page = Client(live.url).get("/archive/1")
    assert page.status == 200 and "シンポジウム" in page.text
    assert "配信先：" not in page.text and '/subscribe">配信停止' not in page.text
    assert "配信停止と配信設定の変更は、お届けしたメールの末尾にあるリンクから行えます。" in page.text
    assert "__MM_" not in page.text and "reader@example.jp" not in page.text
    # the mail itself still has the recipient's address and unsubscribe link in its footer
    with web_services.session() as session:
        html = issues.preview(session, web_services.config, composed, "html")
    assert "配信先：yamada@example.jp" in html and "/u/SAMPLE-TOKEN" in html


def test_the_forms_refuse_a_topic_not_offered_and_name_the_topics(live, web_services, composed):
    before = counts(web_services)
    client = Client(live.url)
    reply = client.submit("/subscribe", {"email": "new@example.jp", "agree": "yes", "topic": "evnets"})
    assert reply.status == 400 and "そのテーマはありません。選べるテーマ：events, news" in reply.text
    assert counts(web_services) == before
    with web_services.session() as session:
        reader = session.query(Subscriber).one()
        path = _path(links.preferences_url(web_services.config.mailmag.base_url, SECRET, reader.id,
                                           reader.link_key))
    reply = client.submit(path, {"lang": "ja", "topic": "event"})
    assert reply.status == 400 and "選べるテーマ：events, news" in reply.text
    with web_services.session() as session:
        assert session.query(Subscriber).one().topics == []
