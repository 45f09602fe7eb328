"""The console's subscribers, orgs, schedules and bounces pages, over real HTTP."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import quote

from admin_support import csrf_of, logged_in
from conftest import one_database
from sqlalchemy import func, select
from web_support import Client

from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.models import AutoSchedule, BounceEvent, ConsentEvent, Org, Subscriber, Suppression, utcnow
from mailmag.scheduling import jobs
from mailmag.scheduling.when import shown

pytest_plugins = ["web_fixtures", "admin_fixtures"]

CSV = ("メールアドレス,氏名,所属\n"
       "a@example.jp,青木,広島大学\n"
       "not-an-address,誰か,\n"
       "b@example.jp,馬場,岡山大学\n"
       "a@example.jp,重複,\n").encode()


def _upload(client: Client, token: str, data: bytes):  # type: ignore[no-untyped-def]
    boundary = "mailmagtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n{token}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"list.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return client.request("POST", "/admin/subscribers/import", body,
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _count(services, model) -> int:  # type: ignore[no-untyped-def]
    with services.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_csv_import_previews_rows_and_errors_before_storing_anything(console, console_services):
    client = logged_in(console.url, console_services, "owner", "owner")
    token = csrf_of(client.get("/admin/subscribers/import"))
    preview = _upload(client, token, CSV)
    assert preview.status == 200
    assert "青木" in preview.text and "馬場" in preview.text
    assert "3 行目: メールアドレス「not-an-address」が正しくありません（「@」がありません）" in preview.text
    assert "5 行目: a@example.jp は2行目と重複しています" in preview.text
    assert "追加 2、更新 0、変更なし 0、取り込めない行 2" in preview.text and "added 2" not in preview.text
    assert _count(console_services, Subscriber) == 0 and _count(console_services, ConsentEvent) == 0
    payload = re.search(r'name="payload" value="([^"]+)"', preview.text).group(1)
    stored = client.post("/admin/subscribers/import", {"csrf_token": token, "payload": payload,
                                                       "encoding": "auto", "confirm": "1"})
    assert stored.status == 200 and "追加 2" in stored.text
    with console_services.session() as session:
        emails = sorted(session.scalars(select(Subscriber.email)))
        sources = set(session.scalars(select(ConsentEvent.source)))
    assert emails == ["a@example.jp", "b@example.jp"]
    assert sources == {"imported by owner in the console"}


def test_csv_import_in_the_console_takes_topics_by_name_and_refuses_unknown_ones(console, console_services):
    """The console's import did not check the topic column (the command line did): a row naming a
    topic nobody sends was stored, and its subscriber left out of every issue of that topic. An
    office's list names topics as the forms do (イベント案内), which is taken for its code."""
    data = ("メールアドレス,氏名,テーマ\n"
            "c@example.jp,千田,イベント案内\nd@example.jp,土井,セミナー案内\n").encode()
    client = logged_in(console.url, console_services, "owner", "owner")
    token = csrf_of(client.get("/admin/subscribers/import"))
    preview = _upload(client, token, data)
    assert "3 行目: テーマ「セミナー案内」はありません" in preview.text
    payload = re.search(r'name="payload" value="([^"]+)"', preview.text).group(1)
    client.post("/admin/subscribers/import", {"csrf_token": token, "payload": payload, "encoding": "auto",
                                              "confirm": "1"})
    with console_services.session() as session:
        stored = dict(session.execute(select(Subscriber.email, Subscriber.topics)).all())
    assert stored == {"c@example.jp": ["events"]}  # d was not stored with a topic nobody sends


def test_unsubscribe_forget_search_and_export(console, console_services):
    with console_services.session() as session:
        for address, name in (("keep@example.jp", "残る人"), ("gone@example.jp", "消える人")):
            subscribers.add(session, subscribers.parse_address(address), Consent("cli", "test"), name=name)
        ids = dict(session.execute(select(Subscriber.email, Subscriber.id)).all())
    client = logged_in(console.url, console_services, "owner", "owner")
    found = client.get("/admin/subscribers/?q=" + quote("残る")).text
    assert "keep@example.jp" in found and "gone@example.jp" not in found
    token = csrf_of(client.get(f"/admin/subscribers/{ids['keep@example.jp']}"))
    client.post(f"/admin/subscribers/{ids['keep@example.jp']}/unsubscribe", {"csrf_token": token})
    page = client.get(f"/admin/subscribers/{ids['keep@example.jp']}").text
    assert 'id="subscriber-status">配信停止済み<' in page and "unsubscribed by owner in the console" in page
    client.post(f"/admin/subscribers/{ids['gone@example.jp']}/forget", {"csrf_token": token})
    exported = client.get("/admin/subscribers/export.csv")
    assert exported.headers["Content-Disposition"].startswith("attachment")
    text = exported.body.decode("utf-8-sig")
    assert "keep@example.jp" in text and "gone@example.jp" not in text
    assert exported.headers["Content-Type"] == "text/csv; charset=utf-8"
    for_excel = client.get("/admin/subscribers/export.csv?encoding=cp932")
    assert for_excel.headers["Content-Type"] == "text/csv; charset=Shift_JIS"  # it said utf-8
    assert "メールアドレス" in for_excel.body.decode("cp932")
    assert _count(console_services, Suppression) == 1


def test_the_search_folds_what_an_ime_in_full_width_mode_types(console, console_services):
    """helper-70: ｙａｍａｄａ (an IME left in full-width mode) found nobody, nor did ABC for an
    organization stored as ＡＢＣ, nor 山田 太郎 for 山田　太郎."""
    with console_services.session() as session:
        for address, name, org in (("yamada@example.jp", "山田　太郎", "ＡＢＣ商事"),
                                   ("sato@example.jp", "Sato Hanako", "広島大学")):
            subscribers.add(session, subscribers.parse_address(address), Consent("cli", "test"), name=name,
                            organization=org)
    client = logged_in(console.url, console_services, "owner", "owner")

    def found(text: str) -> set[str]:
        page = client.get("/admin/subscribers/?q=" + quote(text)).text
        return {a for a in ("yamada@example.jp", "sato@example.jp") if a in page}

    assert found("ｙａｍａｄａ") == {"yamada@example.jp"}
    assert found("abc") == {"yamada@example.jp"}
    assert found("山田 太郎") == {"yamada@example.jp"}
    assert found("ｓａｔｏ ｈａｎａｋｏ") == {"sato@example.jp"}
    assert found("100%") == set()  # wildcards stay literal


def test_the_search_finds_a_name_written_in_full_width_capitals_and_takes_a_nul(console, console_services):
    """helper-72: Ｔａｎａｋａ (full-width, capital first) was not found by tanaka on SQLite, whose
    ILIKE folds only ASCII; a NUL in the search box was a 500 on PostgreSQL."""
    with console_services.session() as session:
        for address, name in (("tanaka@example.jp", "Ｔａｎａｋａ Ｉｃｈｉｒｏ"),
                              ("sato@example.jp", "佐藤"), ("yamada@example.jp", "ﾔﾏﾀﾞ ﾀﾛｳ")):
            subscribers.add(session, subscribers.parse_address(address), Consent("cli", "test"), name=name)
    client = logged_in(console.url, console_services, "owner", "owner")

    def found(text: str) -> set[str]:
        page = client.get("/admin/subscribers/?q=" + quote(text))
        assert page.status == 200
        return {a for a in ("tanaka@example.jp", "sato@example.jp", "yamada@example.jp") if a in page.text}

    assert found("tanaka ichiro") == {"tanaka@example.jp"}
    assert found("ICHIRO") == {"tanaka@example.jp"}
    assert found("佐藤\x00") == {"sato@example.jp"}
    assert found("ヤマダ") == {"yamada@example.jp"}  # stored in half-width katakana (helper-75)


def test_orgs_add_show_and_rotate_the_submission_link(console, console_services):
    client = logged_in(console.url, console_services, "owner", "owner")
    token = csrf_of(client.get("/admin/orgs/"))
    added = client.post("/admin/orgs/", {"csrf_token": token, "code": "kure-ct",
                                         "name": "呉工業高等専門学校"})
    assert added.status == 303 and added.headers["Location"] == "/admin/orgs/kure-ct"
    link = re.search(r'id="submission-link">([^<]+)<', client.get("/admin/orgs/kure-ct").text).group(1)
    form_path = link.replace("https://news.example.jp", "")
    assert Client(console.url).get(form_path).status == 200
    client.post("/admin/orgs/kure-ct/rotate", {"csrf_token": token})
    assert Client(console.url).get(form_path).status == 404  # the old link stopped working
    new_link = re.search(r'id="submission-link">([^<]+)<', client.get("/admin/orgs/kure-ct").text).group(1)
    assert new_link != link
    assert Client(console.url).get(new_link.replace("https://news.example.jp", "")).status == 200
    bad = client.post("/admin/orgs/", {"csrf_token": token, "code": "Bad Code!", "name": "x"})
    assert bad.status == 400 and _count(console_services, Org) == 1


def test_schedules_list_add_remove_and_an_editor_only_reads_them(console, console_services):
    sender = logged_in(console.url, console_services, "sam", "sender")
    token = csrf_of(sender.get("/admin/schedules/"))
    added = sender.post("/admin/schedules/", {"csrf_token": token, "cron": "0 9 1,15 * *", "name": "定期号"})
    assert added.status == 303
    assert sender.post("/admin/schedules/", {"csrf_token": token, "cron": "not a cron"}).status == 400
    assert "定期号" in sender.get("/admin/schedules/").text and _count(console_services, AutoSchedule) == 1
    # helper-90: the console could not give an automatic issue a topic, as `--topic` does
    assert '<option value="events">' in sender.get("/admin/schedules/").text
    for topic, answer in (("nope", 400), ("events", 303)):
        form = {"csrf_token": token, "cron": "0 9 2 * *", "topic": topic}
        assert sender.post("/admin/schedules/", form).status == answer
    assert "<code>0 9 2 * *</code> · イベント案内)" in sender.get("/admin/schedules/").text
    with console_services.session() as session:
        events = session.scalar(select(AutoSchedule).where(AutoSchedule.topic == "events"))
        assert events is not None
        session.delete(events)
    with console_services.session() as session:
        [auto] = jobs.list_auto(session, console_services.config, utcnow())
    assert auto.next_run is not None
    [fired] = jobs.fire_due_autos(console_services, auto.next_run + dt.timedelta(minutes=1))
    assert fired.outcome == "skipped"  # no approved item waits: the office must see why nothing came
    for page in (sender.get("/admin/schedules/").text, sender.get("/admin/").text):
        assert f"前回 {shown(auto.next_run, console_services.config.zone)}:" in page
        assert "見送りました" in page and "fewer than [schedule] min_items" in page
    editor = logged_in(console.url, console_services, "ed", "editor")
    etoken = csrf_of(editor.get("/admin/schedules/"))
    with console_services.session() as session:
        schedule_id = session.scalar(select(AutoSchedule.id))
    assert editor.post(f"/admin/schedules/{schedule_id}/remove", {"csrf_token": etoken}).status == 403
    assert sender.post(f"/admin/schedules/{schedule_id}/remove", {"csrf_token": token}).status == 303
    assert _count(console_services, AutoSchedule) == 0


def test_bounces_page_shows_recent_bounces_and_suppressions(console, console_services):
    with console_services.session() as session:
        _, sub = subscribers.add(session, subscribers.parse_address("x@example.jp"), Consent("cli", "t"))
        session.add(BounceEvent(subscriber_id=sub.id, kind="hard", code="5.1.1",
                                diagnostic="user unknown", source_key="k1"))
        session.add(BounceEvent(subscriber_id=sub.id, kind="asked", diagnostic="a request", source_key="k2"))
        session.add(Suppression(email_hash="ab" * 32, reason="bounced"))
    client = logged_in(console.url, console_services, "owner", "owner")
    page = client.get("/admin/bounces/").text
    assert "x@example.jp" in page and "user unknown" in page and "bounced" in page
    # each kind in the page's words, not the database's (the office read 'asked' and 'hard')
    assert "<td>不達（恒久的）</td>" in page and "<td>メールでの配信停止依頼（タグなし）</td>" in page
    assert "<td>hard</td>" not in page and "<td>asked</td>" not in page


@one_database  # (PostgreSQL: readers and writers never wait for each other)
def test_a_preview_waits_for_no_writer_and_holds_none_up(console, console_services):
    """helper-100: the preview landed the rows and rolled them back, holding SQLite's write lock:
    a 200 000-row file stopped every worker's results and every console save for 20 s. It only
    reads now; here it answers while another connection holds the write lock."""
    import sqlite3

    url = console_services.config.database.url
    client = logged_in(console.url, console_services, "owner", "owner")
    token = csrf_of(client.get("/admin/subscribers/import"))
    writer = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN IMMEDIATE")
        preview = _upload(client, token, CSV)
        writer.execute("ROLLBACK")
    finally:
        writer.close()
    assert preview.status == 200 and "追加 2、更新 0、変更なし 0、取り込めない行 2" in preview.text
    assert _count(console_services, Subscriber) == 0 and _count(console_services, ConsentEvent) == 0


def test_a_list_of_thousands_is_previewed_and_stored(console, console_services):
    """The web server refused any body over 256 KB in its own English before the console's own
    8 MB limit applied: a list of 7 000 (200 KB) previewed, then failed at 「この内容で取り込む」."""
    rows = "".join(f"reader{i}@example.jp,読者{i},広島大学\n" for i in range(7000))
    data = ("メールアドレス,氏名,所属\n" + rows).encode()
    assert len(data) > 256 * 1024
    client = logged_in(console.url, console_services, "owner", "owner")
    token = csrf_of(client.get("/admin/subscribers/import"))
    preview = _upload(client, token, data)
    assert preview.status == 200 and "追加 7000" in preview.text
    payload = re.search(r'name="payload" value="([^"]+)"', preview.text).group(1)
    stored = client.post("/admin/subscribers/import", {"csrf_token": token, "payload": payload,
                                                       "encoding": "auto", "confirm": "1"})
    assert stored.status == 200 and "追加 7000" in stored.text
    assert _count(console_services, Subscriber) == 7000
