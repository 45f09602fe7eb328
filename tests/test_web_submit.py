"""Member organizations' submission forms over real HTTP: submit, review state, rotated links."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import pytest
from conftest import SECRET
from sqlalchemy import select
from web_support import Client

from mailmag import links, tokens
from mailmag.content import issues, items, orgs
from mailmag.models import Item, Org

pytest_plugins = ["web_fixtures"]
BASE = "https://news.example.jp"
EVENT = {"kind": "event", "title": "産学連携フォーラム２０２６", "date": "2026-06-10", "time": "13:30〜17:00",
         "venue": "広島国際会議場", "url": "https://example.jp/forum", "fee": "無料",
         "body": "ご参加ください。"}


@pytest.fixture
def org_id(web_services) -> int:  # type: ignore[no-untyped-def]
    with web_services.session() as session:
        return orgs.add(session, "hiroshima-u", "広島大学").id


def link(services, org_id: int) -> str:  # type: ignore[no-untyped-def]
    with services.session() as session:
        return orgs.submission_link(BASE, SECRET, session.get(Org, org_id))


def stored(services) -> list[Item]:  # type: ignore[no-untyped-def]
    with services.session() as session:
        return list(session.scalars(select(Item).order_by(Item.id)))


def test_the_link_opens_the_kinds_then_the_form_of_one_kind(live, web_services, org_id):
    client = Client(live.url)
    page = client.get(link(web_services, org_id))
    assert page.status == 200 and "広島大学 様専用の投稿フォーム" in page.text
    for label in ("会議報告", "イベント案内", "出展者募集", "お知らせ"):
        assert label in page.text
    form = client.get(link(web_services, org_id) + "?kind=event")
    assert 'name="venue"' in form.text and 'name="how_to_apply"' not in form.text
    assert page.headers["Referrer-Policy"] == "no-referrer" and page.headers["Cache-Control"] == "no-store"


def test_a_submission_lands_as_submitted_for_review(live, web_services, org_id):
    path = link(web_services, org_id)
    reply = Client(live.url).submit(path, EVENT, page=path + "?kind=event")
    assert reply.status == 200 and "投稿を受け付けました" in reply.text and "フォーラム２０２６" in reply.text
    [item] = stored(web_services)
    assert (item.org_id, item.kind, item.status, item.channel) == (org_id, "event", "submitted", "web")
    assert (item.title, item.venue) == ("産学連携フォーラム２０２６", "広島国際会議場")
    assert item.time_text == "13:30〜17:00"
    assert item.date.isoformat() == "2026-06-10"


def test_missing_fields_show_the_form_again_and_store_nothing(live, web_services, org_id):
    path = link(web_services, org_id)
    reply = Client(live.url).submit(path, {**EVENT, "venue": " ", "title": ""}, page=path + "?kind=event")
    assert reply.status == 400 and "次の項目を入力してください: タイトル、会場" in reply.text
    assert "https://example.jp/forum" in reply.text  # what was typed is kept
    bad_date = Client(live.url).submit(path, {**EVENT, "date": "2026-13-40"}, page=path + "?kind=event")
    assert bad_date.status == 400 and "入力内容を確認してください" in bad_date.text
    assert stored(web_services) == []


def test_what_was_wrong_is_said_in_japanese_and_nothing_is_stored(live, web_services, org_id):
    """The form is read by a member organization's staff: the reason a value is refused comes in
    the form's language, not as the command line's English sentence."""
    path = link(web_services, org_id)
    form = path + "?kind=event"
    bad_url = Client(live.url).submit(path, {**EVENT, "url": "ftp://example.jp/forum"}, page=form)
    assert bad_url.status == 400
    assert "URL「ftp://example.jp/forum」は http:// または https:// で始まる" in bad_url.text
    assert "is not an http" not in bad_url.text
    bad_date = Client(live.url).submit(path, {**EVENT, "date": "2026-13-40"}, page=form)
    assert bad_date.status == 400 and "日付：「2026-13-40」" in bad_date.text
    assert "date:" not in bad_date.text
    assert stored(web_services) == []


def test_input_is_escaped_on_the_pages(live, web_services, org_id):
    path = link(web_services, org_id)
    reply = Client(live.url).submit(path, {**EVENT, "title": "<script>alert(1)</script>"},
                                    page=path + "?kind=event")
    assert "<script>" not in reply.text and "&lt;script&gt;" in reply.text


def test_a_post_without_csrf_token_is_refused(live, web_services, org_id):
    path = link(web_services, org_id)
    client = Client(live.url)
    client.get(path)
    assert client.post(path, EVENT).status == 400
    assert stored(web_services) == []


def test_a_call_for_exhibitors_carries_its_fee_named_as_such(live, web_services, org_id):
    """A call for exhibitors could not say what a booth costs (`fee does not apply to exhibitors
    items`, and no field on the form): it is 出展料 on the form and in the mail."""
    path = link(web_services, org_id)
    client = Client(live.url)
    form = client.get(path + "?kind=exhibitors")
    assert 'name="fee"' in form.text and "出展料" in form.text and "参加費" not in form.text
    call = {"kind": "exhibitors", "title": "展示会の出展者募集", "event": "ビジネスフェア中国2027",
            "deadline": "2027-01-15", "how_to_apply": "事務局までメールでお申し込みください。",
            "fee": "1小間 30,000円"}
    assert client.submit(path, call, page=path + "?kind=exhibitors").status == 200
    [item] = stored(web_services)
    assert (item.kind, item.fee) == ("exhibitors", "1小間 30,000円")
    with web_services.session() as session:
        items.approve(session, [item.id])
        composed = issues.compose(session, web_services.config, today=dt.date(2027, 1, 5))
        text = next(r.text for r in composed.issue.renderings if r.lang == "ja")
    assert "出展料：1小間 30,000円" in text


def test_a_form_sent_twice_stores_one_item_and_the_received_page_can_be_reloaded(live, web_services, org_id):
    """A reload of the page after sending, or a double click, sent the same POST again: two items
    「再送信テスト」 waited for review, and both could land in an issue. The answer is now a redirect
    (reloading it sends nothing), and the same contents again within minutes are the same item."""
    path = link(web_services, org_id)
    client = Client(live.url)
    token = client.get(path + "?kind=event").csrf()
    first = client.post(path, {**EVENT, "csrf_token": token})
    again = client.post(path, {**EVENT, "csrf_token": token})  # the browser sends the form again
    assert first.status == again.status == 303
    assert first.headers["Location"] == again.headers["Location"]
    received = client.get(first.headers["Location"])
    assert received.status == 200 and "投稿を受け付けました" in received.text
    assert client.get(first.headers["Location"]).status == 200  # a reload: a page, nothing sent
    [item] = stored(web_services)
    assert f"<dd>{item.id}</dd>" in received.text
    changed = client.post(path, {**EVENT, "title": "別の催し", "csrf_token": token})
    assert changed.status == 303 and len(stored(web_services)) == 2  # other contents: another item
    with web_services.session() as session:
        other = orgs.add(session, "okayama-u", "岡山大学")
        foreign = orgs.submission_link(BASE, SECRET, other)
    assert client.get(f"{urlsplit(foreign).path}/done/{item.id}").status == 404  # not that org's item


def test_a_rotated_wrong_or_foreign_link_is_404(live, web_services, org_id):
    old = link(web_services, org_id)
    client = Client(live.url)
    token = client.get(old + "?kind=event").csrf()
    with web_services.session() as session:
        orgs.rotate_token(session, session.get(Org, org_id))
    for path in (old, links.submit_url(BASE, SECRET, 999, 1),
                 f"/submit/{tokens.make(SECRET, 'unsubscribe', {'o': org_id, 'v': 2})}"):
        page = client.get(path)
        assert page.status == 404 and "広島大学" not in page.text
    assert client.post(old, {**EVENT, "csrf_token": token}).status == 404
    assert stored(web_services) == []
    new = link(web_services, org_id)
    assert new != old and Client(live.url).submit(new, EVENT, page=new + "?kind=event").status == 200


def test_a_long_japanese_item_is_taken_up_to_its_limit_and_past_it_the_form_says_how_long(
        live, web_services, org_id):
    """A browser sends each byte of Japanese as %XX: 30 000 characters (88 KB, under the 100 KB an
    item may hold) are 270 KB on the wire, over the web server's old 256 KB, which refused them
    in its own English before the form could say anything."""
    path = link(web_services, org_id)
    form = path + "?kind=event"
    taken = Client(live.url).submit(path, {**EVENT, "body": "あ" * 30_000}, page=form)
    assert taken.status == 200 and "投稿を受け付けました" in taken.text
    assert len(stored(web_services)[0].body) == 30_000
    longer = Client(live.url).submit(path, {**EVENT, "title": "別の案内", "body": "い" * 40_000},
                                     page=form)
    assert longer.status == 400
    assert "本文が長すぎます（117.2 KB）。本文は 100 KB（日本語でおよそ34,000文字）までです" in longer.text
    huge = Client(live.url).submit(path, {**EVENT, "title": "もっと別の案内", "body": "う" * 200_000},
                                   page=form)
    assert huge.status == 413
    assert "送信された内容が大きすぎます" in huge.text and "Request Entity" not in huge.text
    assert len(stored(web_services)) == 1
