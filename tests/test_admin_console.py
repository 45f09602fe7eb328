"""The secretariat's work in the console, over real HTTP: review, compose, preview, test, send."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import re
from urllib.parse import quote

import pytest
import time_machine
from admin_support import csrf_of, hidden_fields, logged_in, post_form, seed_items, send_from_console
from sqlalchemy import func, select, update
from web_support import mail_text

from mailmag.access import audit
from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.content import issues, items, orgs
from mailmag.delivery import outbox
from mailmag.delivery.transports import make_transport
from mailmag.errors import TransportError
from mailmag.models import Delivery, Issue, Item, Subscriber, utcnow
from mailmag.scheduling import jobs
from mailmag.scheduling.sending import make_dispatcher

pytest_plugins = ["web_fixtures", "admin_fixtures"]


def _item(services, item_id: int) -> Item:  # type: ignore[no-untyped-def]
    with services.session() as session:
        item = session.get(Item, item_id)
        session.expunge(item)
        return item


def _readers(services, n: int) -> None:  # type: ignore[no-untyped-def]
    with services.session() as session:
        for i in range(n):
            address = subscribers.parse_address(f"reader{i}@example.jp")
            subscribers.add(session, address, Consent("cli", "test"))


def _sender_with_readers(mail_console, titles: list[str], readers: int, **account):  # type: ignore[no-untyped-def]
    """Approved items of these titles, `readers` subscribers, and sam, a sender, logged in:
    (client, csrf token, item ids)."""
    services = mail_console.services
    ids = seed_items(services, titles)
    with services.session() as session:
        items.approve(session, ids)
    _readers(services, readers)
    client = logged_in(mail_console.url, services, "sam", "sender", **account)
    return client, csrf_of(client.get("/admin/issues/")), ids


def test_test_sends_to_a_slow_relay_take_one_web_thread_not_all(mail_console, smtp_server):
    """helper-100: each test send waits in a web thread for the relay's answer; nine at once to a
    relay that answered nothing held all eight threads, so the public pages and /healthz stopped
    answering for a minute. One waits at a time; the others are told so at once, nothing sent."""
    client, token, ids = _sender_with_readers(mail_console, ["会議の報告"], 1, email="sam@example.jp")
    issue_path = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[0])]}
                             ).headers["Location"]
    smtp_server.delay("data_end", 3.0, times=None)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        posts = [pool.submit(client.post, f"{issue_path}/test", {"csrf_token": token}) for _ in range(6)]
        replies = [post.result() for post in posts]
    assert sorted(r.status for r in replies) == [303] + [409] * 5
    refused = next(r for r in replies if r.status == 409)
    assert "別のテスト送信が中継サーバーの応答を待っています" in refused.text
    assert [m.recipients for m in smtp_server.messages] == [("sam@example.jp",)]
    with mail_console.services.session() as session:
        assert [e.action for e in audit.listing(session)].count("issue.test") == 1


def _deliver(services) -> None:  # type: ignore[no-untyped-def]
    """What the worker sends now, over one connection (`worker --once`)."""
    make_dispatcher(services, make_transport(services.config), concurrency=1).run(once=True)


def _draft(client, token: str, item_id: int) -> str:  # type: ignore[no-untyped-def]
    """An issue of one item, made from the console; its page's path."""
    issue_path: str = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(item_id)]}
                                  ).headers["Location"]
    return issue_path


def _sent(client, token: str, item_id: int) -> str:  # type: ignore[no-untyped-def]
    """An issue of one item, made and sent from the console; its page's path."""
    issue_path = _draft(client, token, item_id)
    assert send_from_console(client, issue_path).status == 303
    return issue_path


def test_review_queue_filters_approves_rejects_and_edits(console, console_services):
    ids = seed_items(console_services, ["一つ目の記事", "二つ目の記事", "三つ目の記事"])
    with console_services.session() as session:
        other = orgs.add(session, "okayama-u", "岡山大学")
        elsewhere = items.submit(session, other, "news", {"title": "岡山の記事", "body": "本文"}).id
    client = logged_in(console.url, console_services, "alice", "editor")
    queue = client.get("/admin/items/").text
    assert all(title in queue for title in ("一つ目の記事", "二つ目の記事", "岡山の記事"))
    only = client.get("/admin/items/?org=okayama-u&kind=news").text
    assert "岡山の記事" in only and "一つ目の記事" not in only
    page = client.get(f"/admin/items/{ids[0]}")
    assert f'src="/admin/items/{ids[0]}/frame"' in page.text and 'sandbox=""' in page.text
    assert "一つ目の記事" in client.get(f"/admin/items/{ids[0]}/frame").text
    item_page = "/admin/items/{}".format
    assert post_form(client, item_page(ids[0]), f"/admin/items/{ids[0]}/approve").status == 303
    assert post_form(client, item_page(ids[1]), f"/admin/items/{ids[1]}/reject", reason="").status == 400
    assert _item(console_services, ids[1]).status == "submitted"  # no reason, nothing changed
    reason = post_form(client, item_page(ids[1]), f"/admin/items/{ids[1]}/reject", reason="日付が未定です")
    assert reason.status == 303
    typed = {"title": "三つ目（長い修正）", "body": "長く書き直した本文", "url": "javascript:x"}
    refused = post_form(client, item_page(ids[2]), f"/admin/items/{ids[2]}/edit", **typed)
    # refused, and shown again with what was typed (it was a page with the reason only: typing lost)
    assert refused.status == 400 and 'role="alert"' in refused.text
    assert 'value="三つ目（長い修正）"' in refused.text and ">長く書き直した本文</textarea>" in refused.text
    assert _item(console_services, ids[2]).title == "三つ目の記事"  # nothing changed
    edited = post_form(client, item_page(ids[2]), f"/admin/items/{ids[2]}/edit", title="三つ目（修正）",
                       body="直した本文")
    assert edited.status == 303
    assert _item(console_services, ids[0]).status == "approved"
    rejected = _item(console_services, ids[1])
    assert (rejected.status, rejected.reject_reason) == ("rejected", "日付が未定です")
    assert _item(console_services, ids[2]).title == "三つ目（修正）"
    assert _item(console_services, elsewhere).status == "submitted"
    with console_services.session() as session:
        log = [(e.actor, e.action, e.ip) for e in audit.listing(session)]
    assert log[:3] == [("alice", "item.edit", "127.0.0.1"), ("alice", "item.reject", "127.0.0.1"),
                       ("alice", "item.approve", "127.0.0.1")]


def test_compose_reorder_remove_title_preview_test_send_schedule_cancel_send(mail_console, smtp_server):
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["会議の報告A", "会議の報告B", "会議の報告C"], 3,
                                              email="sam@example.jp")
    made = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(i) for i in ids]})
    assert made.status == 303
    issue_path = made.headers["Location"]
    issue_id = int(issue_path.rsplit("/", 1)[1])
    client.post(f"{issue_path}/move", {"csrf_token": token, "item": str(ids[2]), "direction": "up"})
    client.post(f"{issue_path}/remove", {"csrf_token": token, "item": str(ids[0])})
    client.post(f"{issue_path}/title", {"csrf_token": token, "title": "十二月号"})
    frame = client.get(f"{issue_path}/frame/ja").text
    assert frame.index("会議の報告C") < frame.index("会議の報告B") and "会議の報告A" not in frame
    assert "十二月号" in frame
    page = client.get(issue_path).text
    assert 'class="preview phone"' in page and 'class="preview desktop"' in page
    assert page.index("/frame/ja") < page.index("/frame/en")  # the Japanese edition first
    statuses = client.get("/admin/items/").text
    assert ">確認待ち</option>" in statuses and ">submitted</option>" not in statuses
    assert client.post(f"{issue_path}/test", {"csrf_token": token}).status == 303
    assert [m.recipients for m in smtp_server.messages] == [("sam@example.jp",)]
    said = "テスト送信しました（sam@example.jp、中継サーバーの応答: 250"
    assert said in client.get(issue_path).text and said not in client.get(issue_path).text  # said once
    # a notice is the console's to say: one put in a link (a phishing mail's) shows nothing
    spoofed = client.get(f"{issue_path}?notice=" + quote("パスワードの有効期限が切れました。https://evil.example/reset"))
    assert spoofed.status == 200 and "evil.example" not in spoofed.text
    assert "会議の報告C" in mail_text(smtp_server.messages[0].data)
    later = (utcnow() + dt.timedelta(days=2)).astimezone(services.config.zone).strftime("%Y-%m-%d %H:%M")
    confirm = client.get(f"{issue_path}/send?at={later.replace(' ', '+')}")
    assert "3 人" in confirm.text
    send_from_console(client, issue_path, at=later)
    with services.session() as session:
        assert session.get(Issue, issue_id).status == "scheduled"
    client.post(f"{issue_path}/cancel", {"csrf_token": token})
    with services.session() as session:
        assert session.get(Issue, issue_id).status == "draft"
    assert "3 人" in client.get(f"{issue_path}/send").text
    long_ago = client.get(f"{issue_path}/send?at=0001-01-01+00:00")  # a 500 before
    assert long_ago.status == 400 and "0001-01-01 00:00 は過去の日時です" in long_ago.text
    send_from_console(client, issue_path)
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 3
    _deliver(services)
    progress = json.loads(client.get(f"/admin/issues/{issue_id}/progress.json").text)
    assert progress == {"status": "sent", "status_word": "送信済み", "total": 3, "sent": 3, "failed": 0,
                        "pending": 0, "cancelled": 0}
    assert sorted(r for m in smtp_server.messages[1:] for r in m.recipients) == [
        f"reader{i}@example.jp" for i in range(3)]
    dashboard = client.get("/admin/").text
    assert re.search(r'data-key="sent">3<', dashboard)


def test_failures_and_reasons_show_on_the_issue(mail_console, smtp_server):
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 2)
    # the first: believed once the relay accepts reader1's message after it (dispatch._hold)
    smtp_server.fail_rcpt("reader0@example.jp", 550, "5.1.1 no such user")
    made = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[0])]})
    issue_path = made.headers["Location"]
    send_from_console(client, issue_path)
    _deliver(services)
    page = client.get(issue_path).text
    assert "reader0@example.jp" in page and "no such user" in page
    assert "reader1@example.jp" not in page


def test_a_refusal_not_believed_yet_shows_apart_from_the_failures(mail_console, smtp_server):
    """The last reader's address refused after every accepted message: held, not failed, until
    the relay accepts a message after it (dispatch._hold). The page showed "pending 1" only."""
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 2)
    smtp_server.fail_rcpt("reader1@example.jp", 550, "5.1.1 no such user")
    issue_path = _sent(client, token, ids[0])
    _deliver(services)
    page = client.get(issue_path).text
    assert "届かなかった宛先" not in page and "not believed" not in page
    held = page.split("拒否されたが、まだ配信不能としていない宛先", 1)[1]
    assert "reader1@example.jp — 550 5.1.1 no such user · 次の確認: 20" in held
    assert "reader0@example.jp" not in page
    with services.session() as session:
        reader1 = select(Subscriber.status).where(Subscriber.email == "reader1@example.jp")
        assert session.scalar(reader1) == "active"
    # once its time has come (a first retry: 5 minutes) and no worker has run, 次の確認 is not a
    # time in the past (the console's login lasts 30 idle minutes)
    with time_machine.travel(utcnow() + dt.timedelta(minutes=10), tick=True):
        assert "no such user · 次の確認: 送信処理が次に動いたとき" in client.get(issue_path).text


def test_the_issue_page_adds_up_with_cancelled_and_possibly_doubled_messages(mail_console, smtp_server):
    """helper-55: the page showed 送信済み 1 失敗 0 未送信 0 合計 3, and nothing of a reader who
    left during the send, nor of a message that may have arrived more than once, which `issues status`
    showed."""
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 3)
    issue_path = _sent(client, token, ids[0])
    with services.session() as session:
        leaving = session.scalar(select(Subscriber).where(Subscriber.email == "reader2@example.jp"))
        subscribers.unsubscribe(session, leaving, Consent("web", "test"))
    smtp_server.drop("after_data", address="reader0@example.jp")  # kept by the relay, then no reply
    _deliver(services)
    with services.session() as session:  # its retry is due now
        session.execute(update(Delivery).where(Delivery.status == "queued").values(next_attempt_at=utcnow()))
    _deliver(services)
    page = client.get(issue_path).text
    assert '送信済み</dt><dd data-key="sent">2</dd>' in page
    assert '送信取りやめ</dt><dd data-key="cancelled">1</dd>' in page
    assert '合計</dt><dd data-key="total">3</dd>' in page
    assert "複数回届いたおそれのあるメール：1 通" in page


def test_a_cancel_while_a_worker_holds_messages_says_up_to_as_the_cli_does(mail_console, smtp_server):
    """helper-100: the page and the audit log said "532 queued messages stopped" where a worker
    held some and sent those on their way: 530 were. `issues cancel` said "up to", and why."""
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 4)
    issue_path = _sent(client, token, ids[0])
    with services.session() as session:
        assert len(outbox.claim(session, "w", 2, utcnow(), 300)) == 2  # a worker holds two
    page = client.post(f"{issue_path}/cancel", {"csrf_token": token})
    page = client.get(page.headers["Location"]).text
    assert "送信待ちの最大 4 通を止めました（うち 2 通は処理中で、送信中のものは届きます）" in page
    with services.session() as session:
        [entry] = [e for e in audit.listing(session) if e.action == "issue.cancel"]
    assert entry.detail.endswith(": 0 sent, up to 4 queued messages stopped (2 of them held by a worker: "
                                 "those already on their way to the relay still go)")


def test_a_relative_time_is_scheduled_for_the_moment_the_confirmation_showed(mail_console, smtp_server):
    """helper-100: the confirmation page sent back the words typed, read again at the button: "明日
    9:00" shown at 23:59:50 and confirmed after midnight was scheduled a day later than shown."""
    services = mail_console.services
    zone = services.config.zone
    today = utcnow().astimezone(zone).date()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0), zone)
    with time_machine.travel(midnight - dt.timedelta(seconds=10), tick=True) as traveller:
        client, token, ids = _sender_with_readers(mail_console, ["記事"], 2)
        issue_path = _draft(client, token, ids[0])
        page = client.get(f"{issue_path}/send?at={quote('明日 9:00')}")
        traveller.shift(30)  # the button is pressed after midnight
        assert client.post(f"{issue_path}/send", hidden_fields(page, f"{issue_path}/send")).status == 303
    with services.session() as session:
        issue = session.get(Issue, int(issue_path.rsplit("/", 1)[1]))
        assert issue.status == "scheduled"
        assert issue.scheduled_at.astimezone(zone) == midnight + dt.timedelta(hours=9)


def test_the_send_page_of_a_sent_issue_offers_no_button(mail_console, smtp_server):
    """helper-100: it offered 「送信する」 to 630 readers for an issue sent already (the button was
    refused with a 409, and nothing was sent)."""
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 2)
    issue_path = _sent(client, token, ids[0])
    page = client.get(f"{issue_path}/send").text
    assert "この号はすでに送信したか送信中、または取りやめたため、送信できません。" in page
    assert "送信する</button>" not in page and f'action="{issue_path}/send"' not in page


def test_messages_given_up_on_show_in_the_list_and_go_again_from_the_issue_page(mail_console, smtp_server):
    """A `sent` issue whose some messages went dead (their worker died sending them, again and
    again): the console said only 送信済み, and only `issues retry --dead` on the server sent them."""
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 3)
    issue_path = _sent(client, token, ids[0])
    issue_id = int(issue_path.rsplit("/", 1)[1])
    with services.session() as session:  # two went dead; the worker sends the third, and the issue is sent
        first_two = session.scalars(select(Delivery.id).order_by(Delivery.id).limit(2)).all()
        session.execute(update(Delivery).where(Delivery.id.in_(first_two)).values(
            status="dead", lease_expiries=3, last_reply="lease expired too often"))
    _deliver(services)
    with services.session() as session:
        assert session.get(Issue, issue_id).status == "sent"
    assert "送信済み · <strong>送信を断念 2 通</strong>" in client.get("/admin/issues/").text
    page = client.get(issue_path).text
    assert "送信を断念した 2 通を送り直す" in page
    assert "すでに最大 3 通届いている場合もあり" in page  # helper-58: a retry may be a fourth copy
    retried = client.post(f"{issue_path}/retry-dead", {"csrf_token": token})
    assert retried.status == 303
    assert "送信を断念した 2 通を送信待ちに戻しました" in client.get(retried.headers["Location"]).text
    with services.session() as session:
        assert session.get(Issue, issue_id).status == "sending"
        assert audit.listing(session)[0].action == "issue.retry_dead"
    _deliver(services)
    assert sorted(r for m in smtp_server.messages for r in m.recipients) == [
        f"reader{i}@example.jp" for i in range(3)]  # each once: the two given up on had not gone
    assert "送信を断念" not in client.get("/admin/issues/").text
    assert "送り直す" not in client.get(issue_path).text


def test_a_relay_that_refuses_us_shows_on_the_issue_page_until_it_takes_mail_again(mail_console, smtp_server):
    """`mailmag run` retries a refusing relay by itself and says so only in its log: the office
    must see on the issue (and the dashboard) why its mail does not go."""
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 2)
    issue_path = _sent(client, token, ids[0])
    smtp_server.fail_next("rcpt", 554, "5.7.1 Relay access denied", times=None)
    with pytest.raises(TransportError):
        _deliver(services)
    for page in (client.get(issue_path).text, client.get("/admin/").text):
        assert "中継サーバー（SMTP）に送れていません" in page and "5.7.1 Relay access denied" in page
    smtp_server.clear_faults()
    _deliver(services)
    page = client.get(issue_path).text
    assert "送信済み" in page and "中継サーバー" not in page


def test_a_domain_refusal_shows_its_sentence_and_changes_nothing(console, console_services):
    ids = seed_items(console_services, ["記事"])
    client = logged_in(console.url, console_services, "sam", "sender")
    token = csrf_of(client.get("/admin/issues/"))
    reply = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[0])]})
    # in the console's language, with its own way to mend it, not a command for a shell the
    # secretariat does not have
    assert reply.status == 409
    assert (f"記事（ID {ids[0]}）は確認待ちです。号は作っていません。"
            "対処：記事を承認する（記事のページの「承認する」）") in reply.text
    assert "no issue was made" not in reply.text and "mailmag items" not in reply.text
    english = client.post("/admin/issues/new?lang=en", {"csrf_token": token, "item": [str(ids[0])]})
    assert english.status == 409
    assert "approve it (「Approve」 on the item&#39;s page)" in english.text
    for path in ("/admin/issues/99999999999999999999999", "/admin/items/99999999999999999999999"):
        assert client.get(path).status == 404, path  # an id no database holds: not an OverflowError's 500
    with console_services.session() as session:
        assert session.scalar(select(func.count()).select_from(Issue)) == 0


def test_a_topic_narrows_the_audience_the_confirmation_counts(console, console_services):
    ids = seed_items(console_services, ["記事"])
    with console_services.session() as session:
        items.approve(session, ids)
        for address, topics in (("all@example.jp", []), ("events@example.jp", ["events"]),
                                ("news@example.jp", ["news"])):
            subscribers.add(session, subscribers.parse_address(address), Consent("cli", "t"), topics=topics)
    client = logged_in(console.url, console_services, "sam", "sender")
    token = csrf_of(client.get("/admin/issues/"))
    made = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[0])]})
    issue_path = made.headers["Location"]
    assert "3 人" in client.get(f"{issue_path}/send").text
    assert client.post(f"{issue_path}/topic", {"csrf_token": token, "topic": "nonsense"}).status == 400
    assert client.post(f"{issue_path}/topic", {"csrf_token": token, "topic": "events"}).status == 303
    assert "2 人" in client.get(f"{issue_path}/send").text  # no-topic readers and events readers
    with console_services.session() as session:
        assert session.scalar(select(Issue.topic)) == "events"


def test_the_issue_page_says_when_another_issue_took_its_number(console, console_services):
    """helper-70: a waiting issue kept showing the 第N号 another issue had started sending with."""
    ids = seed_items(console_services, ["会議の報告", "お知らせ"])
    with console_services.session() as session:
        items.approve(session, ids)
    client = logged_in(console.url, console_services, "alice", "editor")
    token = csrf_of(client.get("/admin/issues/"))
    first = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[0])]}).headers["Location"]
    client.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[1])]})
    assert "別の号が使いました" not in client.get(first).text
    sender = logged_in(console.url, console_services, "bob", "sender")
    opened = sender.get(f"{first}/send")  # a confirmation opened before: it showed 第1号, no warning
    with console_services.session() as session:  # the other one starts sending first: it is 第1号
        second = session.scalars(select(Issue).order_by(Issue.id.desc())).first()
        subscribers.add(session, subscribers.parse_address("a@example.jp"), Consent("cli", "t"))
        issues.start_sending(session, console_services.config, second)
    said = "は第1号と表示していますが、この号数は別の号が使いました。今送ると第2号になります"
    assert said in client.get(first).text
    assert said in sender.get(f"{first}/send").text  # and on the confirmation, the last page before it
    # helper-75: the form of the page opened before sent it as 第2号 after a page that said 第1号
    stale = sender.post(f"{first}/send", hidden_fields(opened, f"{first}/send"))
    assert stale.status == 409 and "号数" in stale.text
    with console_services.session() as session:
        assert session.scalars(select(Issue.status).order_by(Issue.id)).all() == ["draft", "sending"]


def test_the_issue_page_warns_that_an_item_changed_after_rendering_and_renders_it_again(
        console, console_services):
    """The preview frame shows the stored rendering: after an edit the page says it is old text,
    and renders the issue again from the edited text (before, only `mailmag issues render` on
    the server could, and sending refused the issue until then)."""
    ids = seed_items(console_services, ["会議の報告"])
    with console_services.session() as session:
        items.approve(session, ids)
    client = logged_in(console.url, console_services, "alice", "editor")
    token = csrf_of(client.get("/admin/issues/"))
    made = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[0])]})
    issue_path = made.headers["Location"]
    assert "号を作った後に変更されています" not in client.get(issue_path).text
    edited = post_form(client, f"/admin/items/{ids[0]}", f"/admin/items/{ids[0]}/edit",
                       title="会議の報告（訂正）", body="直した本文")
    assert edited.status == 303
    page = client.get(issue_path).text
    # the composer's warning, in the console's language
    assert f"記事（ID {ids[0]}）「会議の報告（訂正）」は号を作った後に変更されています" in page
    assert "changed after the issue was rendered" not in page
    assert "直した本文" not in client.get(f"{issue_path}/frame/ja").text  # what the warning is about
    assert "記事の今の内容で作り直す" in page
    assert client.post(f"{issue_path}/render", {}).status == 400  # no CSRF token: nothing done
    assert client.post(f"{issue_path}/render", {"csrf_token": token}).status == 303
    assert "号を作った後に変更されています" not in client.get(issue_path).text
    assert "直した本文" in client.get(f"{issue_path}/frame/ja").text
    with console_services.session() as session:
        assert [e.action for e in audit.listing(session)].count("issue.render") == 1


def _scheduled_in_two_days(console, console_services):  # type: ignore[no-untyped-def]
    """A sender's issue of one approved item, scheduled from the console two days ahead (to the
    minute): the sender's client and form token, the item's id, the issue's page, the time."""
    ids = seed_items(console_services, ["会議の報告"])
    with console_services.session() as session:
        items.approve(session, ids)
    _readers(console_services, 1)
    sender = logged_in(console.url, console_services, "sam", "sender")
    token = csrf_of(sender.get("/admin/issues/"))
    made = sender.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[0])]})
    issue_path = made.headers["Location"]
    at = (utcnow() + dt.timedelta(days=2)).replace(second=0, microsecond=0)
    local = at.astimezone(console_services.config.zone)
    send_from_console(sender, issue_path, at=local.strftime("%Y-%m-%d %H:%M"))
    return sender, token, ids[0], issue_path, at


def test_why_a_timed_send_failed_is_said_in_the_pages_language(console, console_services):
    """helper-90: an item edited after its issue was scheduled made the timed send fail, and the
    Japanese console gave the reason in English ("item 2 … is submitted, not approved")."""
    sender, _token, item_id, issue_path, at = _scheduled_in_two_days(console, console_services)
    item_page = f"/admin/items/{item_id}"
    edited = post_form(sender, item_page, f"{item_page}/edit", title="差し替え", body="差し替えた本文")
    assert edited.status == 303
    [fired] = jobs.fire_due_sends(console_services, at + dt.timedelta(minutes=1))
    assert fired.outcome == "failed" and "not approved" in fired.detail  # the log's and the CLI's
    page = sender.get(issue_path).text
    assert "承認されていません" in page and "not approved" not in page
    assert "not approved" in sender.get(f"{issue_path}?lang=en").text


def test_an_editor_may_not_change_what_a_scheduled_issue_sends(console, console_services):
    """Rendering a scheduled issue again changes what goes out at its time: a sender's decision,
    as scheduling it was (an editor could edit, approve and render it past every sender)."""
    sender, token, item_id, issue_path, _at = _scheduled_in_two_days(console, console_services)
    with console_services.session() as session:
        assert session.scalar(select(Issue.status)) == "scheduled"
    editor = logged_in(console.url, console_services, "alice", "editor")
    editor_token = csrf_of(editor.get("/admin/issues/"))
    item_page = f"/admin/items/{item_id}"
    # the editor is told before editing what it does to the scheduled send
    assert "この記事は送信予約済みの号「" in editor.get(item_page).text
    edited = post_form(editor, item_page, f"{item_page}/edit", title="差し替え", body="差し替えた本文")
    assert edited.status == 303
    assert post_form(editor, item_page, f"{item_page}/approve").status == 303
    assert "記事の今の内容で作り直す" not in editor.get(issue_path).text
    assert editor.post(f"{issue_path}/render", {"csrf_token": editor_token}).status == 403
    assert "差し替えた本文" not in editor.get(f"{issue_path}/frame/ja").text
    assert sender.post(f"{issue_path}/render", {"csrf_token": token}).status == 303
    assert "差し替えた本文" in sender.get(f"{issue_path}/frame/ja").text
    with console_services.session() as session:
        assert session.scalar(select(Issue.status)) == "scheduled"


def test_a_missed_timed_send_says_so_on_the_issue_the_list_and_the_dashboard(mail_console, smtp_server):
    """`mailmag run` was down at the time an issue was scheduled for: the issue became a draft
    again, and only `issues status` on the server said why; the office saw a bare 下書き."""
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 2)
    issue_path = _draft(client, token, ids[0])
    issue_id = int(issue_path.rsplit("/", 1)[1])
    at = utcnow().replace(second=0, microsecond=0) + dt.timedelta(hours=1)
    send_from_console(client, issue_path, at=at.astimezone(services.config.zone).strftime("%Y-%m-%d %H:%M"))
    late = at + dt.timedelta(seconds=services.config.schedule.grace_seconds + 60)
    [fired] = jobs.fire_due_sends(services, late)  # the scheduler's first poll after a restart
    assert fired.outcome == "missed"
    when = at.astimezone(services.config.zone).strftime("%Y-%m-%d %H:%M JST")
    said = (f"{when} の予約送信は行われませんでした。"
            "その時刻に送信サービス（mailmag run）が止まっていたためです。")
    page = client.get(issue_path).text
    assert said in page and "下書き" in page
    assert "予約送信が行われませんでした" in client.get("/admin/issues/").text
    dashboard = client.get("/admin/").text
    assert "行われなかった予約送信" in dashboard and said in dashboard
    assert "did not happen: the sending service (mailmag run) was not running" in client.get(
        f"{issue_path}?lang=en").text
    send_from_console(client, issue_path)  # sent now: nothing left to explain
    _deliver(services)
    with services.session() as session:
        assert session.get(Issue, issue_id).status == "sent"
    assert len(smtp_server.messages) == 2
    assert said not in client.get(issue_path).text
    assert "行われなかった予約送信" not in client.get("/admin/").text
    assert "予約送信が行われませんでした" not in client.get("/admin/issues/").text


def test_a_timed_send_past_its_time_says_run_seems_stopped_on_the_issue_and_the_dashboard(mail_console):
    """helper-87: with `mailmag run` down, the console went on showing the issue as scheduled for a
    time already past, and nothing told the office why nothing went out (nor until when starting
    `run` would still send it)."""
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 2)
    issue_path = _draft(client, token, ids[0])
    at = utcnow().replace(second=0, microsecond=0) + dt.timedelta(minutes=3)
    send_from_console(client, issue_path, at=at.astimezone(services.config.zone).strftime("%Y-%m-%d %H:%M"))
    assert "予約がまだ実行されていません" not in client.get("/admin/").text
    when = at.astimezone(services.config.zone).strftime("%Y-%m-%d %H:%M JST")
    until = (at + dt.timedelta(hours=1)).astimezone(services.config.zone).strftime("%Y-%m-%d %H:%M JST")
    said = (f"{when} の予約がまだ実行されていません。送信サービス（mailmag run）が止まっているようです。"
            f"{until} までに起動すれば実行されます。")
    with services.session() as session:
        jobs.add_auto(session, "*/5 * * * *", "五分ごと", services.config)
    with time_machine.travel(at + dt.timedelta(minutes=5), tick=True):  # no `run`: nothing fired
        assert said in client.get(issue_path).text
        dashboard = client.get("/admin/").text
        assert said in dashboard
        assert dashboard.count("の予約がまだ実行されていません") == 2  # and the automatic issue's
        assert "の予約がまだ実行されていません" in client.get("/admin/schedules/").text
        assert "予約時刻を過ぎても送信されていません" in client.get("/admin/issues/").text  # helper-91
        assert "Started by" in client.get(f"{issue_path}?lang=en").text
    with services.session() as session:
        assert session.scalar(select(Issue.status)) == "scheduled"


def test_automatic_moments_not_sent_this_week_are_named_on_the_dashboard(mail_console):
    """helper-90: after `run` came back, the dashboard showed only the last moment (sent); the
    ones missed while it was down were in the log alone."""
    services = mail_console.services
    client, _token, _ids = _sender_with_readers(mail_console, ["記事"], 1)
    with services.session() as session:
        added = jobs.add_auto(session, "0 9 * * *", "毎朝", services.config)
        added.created_at = utcnow() - dt.timedelta(days=3)
    assert "この1週間に送信されなかった回" not in client.get("/admin/").text
    jobs.fire_due_autos(services, utcnow())
    assert "この1週間に送信されなかった回: " in client.get("/admin/").text
    assert "この1週間に送信されなかった回: " in client.get("/admin/schedules/").text
    assert "Moments not sent in the last 7 days: " in client.get("/admin/?lang=en").text


def test_an_item_in_a_draft_or_already_published_is_not_composed_again(mail_console, smtp_server):
    """The form offers only items in no issue; a second tab, a resent form or a crafted POST put
    one item into two issues, and each sent it."""
    services = mail_console.services
    client, token, ids = _sender_with_readers(mail_console, ["記事"], 1)
    issue_path = _draft(client, token, ids[0])
    again = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[0])]})
    assert again.status == 409
    assert f"記事（ID {ids[0]}）はすでに号（ID 1）（下書き）に入っています。" in again.text
    assert send_from_console(client, issue_path).status == 303
    _deliver(services)
    published = client.post("/admin/issues/new", {"csrf_token": token, "item": [str(ids[0])]})
    assert published.status == 409
    assert f"記事（ID {ids[0]}）は掲載済みです。号は作っていません" in published.text
    huge = client.post("/admin/issues/new", {"csrf_token": token, "item": ["99999999999999999999"]})
    assert huge.status == 400 and "「99999999999999999999」は記事の ID ではありません" in huge.text
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Issue)) == 1
    assert len(smtp_server.messages) == 1


def test_errors_in_the_console_are_the_consoles_pages_with_the_way_back(console, console_services):
    """An unknown page, an expired form or a body over the limit showed the subscribers' error
    page (the magazine's footer, バックナンバー) with no way back into the console."""
    ids = seed_items(console_services, ["記事"])
    client = logged_in(console.url, console_services, "alice", "editor")
    token = csrf_of(client.get("/admin/items/"))
    unknown = client.get("/admin/nowhere")
    expired = client.post(f"/admin/items/{ids[0]}/approve", {"csrf_token": "stale"})
    huge = client.post(f"/admin/items/{ids[0]}/edit",
                       {"csrf_token": token, "title": "題", "body": "あ" * 200_000})
    for reply, status, said in ((unknown, 404, "ページが見つかりません。"),
                                (expired, 400, "フォームの有効期限が切れました。"),
                                (huge, 413, "送った内容が大きすぎます（1,024 KB まで）。")):
        assert reply.status == status and said in reply.text, status
        assert 'href="/admin/"' in reply.text and "バックナンバー" not in reply.text, status
    assert _item(console_services, ids[0]).status == "submitted"  # nothing changed
    assert _item(console_services, ids[0]).title == "記事"


def test_what_was_confirmed_or_approved_cannot_be_replaced_by_a_change_since(mail_console, smtp_server):
    """Two people at once: the sender's confirmation said 「…」 to 2 readers while an editor
    retitled the issue; an approval approved text the approver never saw; an edit overwrote
    another's. Each now refuses, changes nothing, and shows what is there now."""
    services = mail_console.services
    sender, token, ids = _sender_with_readers(mail_console, ["会議の報告A", "会議の報告B"], 2)
    issue_path = _draft(sender, token, ids[0])
    confirmation = sender.get(f"{issue_path}/send")
    editor = logged_in(mail_console.url, services, "alice", "editor")
    editor_token = csrf_of(editor.get("/admin/issues/"))
    retitled = editor.post(f"{issue_path}/title", {"csrf_token": editor_token, "title": "差し替えた号"})
    assert retitled.status == 303
    stale = sender.post(f"{issue_path}/send", hidden_fields(confirmation, f"{issue_path}/send"))
    assert stale.status == 409
    assert "号（ID 1）は確認画面を開いた後に変更されました（タイトル・テーマ・記事・号数のいずれか）" \
        in stale.text
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        assert session.get(Issue, 1).status == "draft"
    assert send_from_console(sender, issue_path).status == 303  # looked again: sent as now shown
    item_page = f"/admin/items/{ids[1]}"
    with services.session() as session:
        session.get(Item, ids[1]).status = "submitted"
    seen = editor.get(item_page)  # the approver reads it
    rewritten = post_form(sender, item_page, f"{item_page}/edit", title="会議の報告B", body="書き換えた本文")
    assert rewritten.status == 303
    approved = editor.post(f"{item_page}/approve", hidden_fields(seen, f"{item_page}/approve"))
    assert approved.status == 409 and "このページを開いた後に変更されました" in approved.text
    assert _item(services, ids[1]).status == "submitted"
    overwrite = editor.post(f"{item_page}/edit", {**hidden_fields(seen, f"{item_page}/edit"),
                                                  "title": "会議の報告B", "body": "古い本文を直したもの"})
    assert overwrite.status == 409 and ">古い本文を直したもの</textarea>" in overwrite.text  # what was typed
    assert _item(services, ids[1]).body == "書き換えた本文"  # the other's change stands
    again = editor.post(f"{item_page}/edit", {**hidden_fields(overwrite, f"{item_page}/edit"),
                                              "title": "会議の報告B", "body": "古い本文を直したもの"})
    assert again.status == 303 and _item(services, ids[1]).body == "古い本文を直したもの"  # having seen both
