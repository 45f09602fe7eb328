"""Items: submission both ways for every kind, normalization, review, and every bad input."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import REFERENCE, one_database

import mailmag
from mailmag import clock, links
from mailmag.content import items, orgs
from mailmag.errors import InvalidInput, StateError
from mailmag.services import Services

DEMO_ITEMS = sorted((Path(mailmag.__file__).parent / "data" / "demo_items").glob("*.md"))
KANGXI = re.compile("[\u2f00-\u2fdf]")

# One complete submission per kind: (kind, CLI options).
SUBMISSIONS = {
    "meeting": ["--title", "企画会議の概要", "--date", "2026年11月19日（木）",
                "--venue", "中国経済連合会 会議室",
                "--body", "次回は1月末に開催します。"],
    "event": ["--title", "本格研究ワークショップ", "--date", "R9.11.11", "--time", "13:30〜17:00",
              "--venue", "広島国際会議場", "--url", "https://example.jp/ws", "--deadline", "2027/11/1",
              "--fee", "無料"],
    "exhibitors": ["--title", "出展企業の募集", "--event", "エコ・イノベーションメッセ2027inひろしま",
                   "--deadline", "令和9年7月30日", "--how-to-apply", "申込書をメールでお送りください。",
                   "--url", "https://example.jp/messe"],
    "news": ["--title", "情報通信月間の参加行事", "--body", "今年も参加します。"],
}


@pytest.fixture
def council(mailmag, config):
    """The CLI with the council's orgs registered (through the domain: the CLI is tested in test_orgs)."""
    services = Services(config)
    with services.session() as session:
        for code, name in [("cef", "中国経済連合会"), ("chugoku-meti", "中国経済産業局"),
                           ("aist-chugoku", "産業技術総合研究所中国センター"),
                           ("soumu-chugoku", "中国総合通信局")]:
            orgs.add(session, code, name)
    services.close()
    return mailmag


def listed(mailmag, *args: str) -> list[dict]:
    return json.loads(mailmag.ok("items", "list", "--json", *args).stdout)


def refused(mailmag, *args: str) -> str:
    """Run a command that must fail with one line and store nothing; return that line."""
    before = listed(mailmag)
    result = mailmag(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert listed(mailmag) == before
    return result.stderr.removeprefix("Error: ").rstrip("\n")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- submission ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(SUBMISSIONS))
def test_submit_every_kind_from_the_command_line(council, kind):
    result = council.ok("items", "submit", "--org", "cef", "--kind", kind, *SUBMISSIONS[kind], "--json")
    item = json.loads(result.stdout)
    assert {k: item[k] for k in ("id", "org", "kind", "title", "status", "channel")} == {
        "id": 1, "org": "cef", "kind": kind, "title": SUBMISSIONS[kind][1], "status": "submitted",
        "channel": "cli",
    }
    assert listed(council) == [item]


def test_submitted_fields_are_stored_as_typed_values(council):
    council.ok("items", "submit", "--org", "chugoku-meti", "--kind", "event", *SUBMISSIONS["event"])
    council.ok("items", "submit", "--org", "chugoku-meti", "--kind", "イベント案内", "--title", "メッセ",
               "--date", "2027年11月22日（月）〜23日（火・祝）", "--place", "広島県立広島産業会館")
    event, messe = listed(council)
    assert (event["date"], event["end_date"], event["deadline"]) == ("2027-11-11", None, "2027-11-01")
    assert (event["time"], event["fee"], event["url"]) == ("13:30〜17:00", "無料", "https://example.jp/ws")
    assert (messe["kind"], messe["date"], messe["end_date"]) == ("event", "2027-11-22", "2027-11-23")
    assert messe["venue"] == "広島県立広島産業会館"


def test_a_date_without_a_year_is_the_nearest_one(council):
    council.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "お知らせ", "--body", "本文",
               "--date", "1/5")
    today = clock.today(ZoneInfo("Asia/Tokyo"))  # mailmag reads dates in Japan
    stored = dt.date.fromisoformat(listed(council)[0]["date"])
    assert (stored.month, stored.day) == (1, 5) and abs((stored - today).days) <= 184


def test_add_files_of_every_kind(council, tmp_path):
    paths = [
        write(tmp_path, "meeting.md", '+++\norg = "cef"\nkind = "meeting"\ntitle = "企画会議の概要"\n'
              'date = 2026-11-19\nvenue = "中国経済連合会 会議室"\n+++\n# 協議事項\n\n本文。\n'),
        write(tmp_path, "event.md", '+++\norg = "aist-chugoku"\nkind = "event"\ntitle = "ワークショップ"\n'
              'date = 2027-11-11T13:30:00\nvenue = "広島市内"\nfee = 0\n+++\n'),
        write(tmp_path, "exhibitors.md", '+++\norg = "chugoku-meti"\nkind = "exhibitors"\n'
              'title = "出展募集"\n'
              'event = "メッセ"\ndeadline = "令和9年7月30日（金）"\nhow_to_apply = "申込書を送付"\n+++\n'),
        write(tmp_path, "news.md", '+++\norg = "soumu-chugoku"\nkind = "お知らせ"\ntitle = "月間行事"\n+++\n'
              "参加行事を紹介します。\n"),
    ]
    result = council.ok("items", "add", *map(str, paths))
    assert result.stdout.count("submitted item") == 4
    rows = listed(council)
    assert [(r["org"], r["kind"], r["channel"], r["status"]) for r in rows] == [
        ("cef", "meeting", "file", "submitted"), ("aist-chugoku", "event", "file", "submitted"),
        ("chugoku-meti", "exhibitors", "file", "submitted"), ("soumu-chugoku", "news", "file", "submitted"),
    ]
    assert rows[0]["body"] == "# 協議事項\n\n本文。"
    assert (rows[1]["date"], rows[1]["time"], rows[1]["fee"]) == ("2027-11-11", "13:30", "0")
    assert rows[2]["deadline"] == "2027-07-30"


def test_the_reference_article_enters_as_a_meeting_and_comes_out_normalized(council, reference_text):
    article = REFERENCE
    assert KANGXI.search(reference_text)
    council.ok("items", "submit", "--org", "cef", "--kind", "meeting", "--title", "『企画会議』の概要",
               "--date", "2012年5⽉24⽇（⽊）", "--venue", "中国経済連合会の会議室",
               "--body-file", str(article))
    council.ok("items", "submit", "--org", "chugoku-meti", "--kind", "exhibitors",
               "--title", "「エコ・イノベーションメッセ2012inひろしま」出展企業の募集",
               "--event", "エコ・イノベーションメッセ2012inひろしま", "--date", "2012/11/22〜23",
               "--deadline", "2012年7⽉31⽇", "--how-to-apply", "事務局へ\u2003お問い合わせください")
    council.ok("items", "submit", "--org", "soumu-chugoku", "--kind", "event",
               "--title", "「ひろしまオープンソフトウェアコンソーシアム講演会」",
               "--date", "2012年6月1日（金）",
               "--venue", "広島市内")
    meeting, exhibitors, _ = listed(council)
    assert meeting["date"] == "2012-05-24"
    assert not KANGXI.search(meeting["body"]) and "\u2003" not in meeting["body"]
    assert "5月24日（木），中国経済連合会の会議室にて開催した『企画会議』" in meeting["body"]
    assert (exhibitors["date"], exhibitors["end_date"]) == ("2012-11-22", "2012-11-23")
    assert exhibitors["how_to_apply"] == "事務局へ\u3000お問い合わせください"
    shown = council.ok("items", "show", str(meeting["id"])).stdout
    assert "date: 2012年5月24日（木）" in shown and "HP・メルマガの発行などを行っており" in shown


def test_the_demo_items_load_through_add_files(services):
    with services.session() as session:
        orgs.add_file(session, Path(mailmag.__file__).parent / "data" / "demo_orgs.toml")
        added = items.add_files(session, DEMO_ITEMS, today=dt.date(2026, 11, 28)).items
        summary = [(i.org.code, i.kind, i.date, i.end_date) for i in added]
    assert summary == [
        ("cef", "meeting", dt.date(2026, 11, 19), None),
        ("cef", "event", dt.date(2027, 9, 9), None),
        ("aist-chugoku", "event", dt.date(2027, 11, 11), None),
        ("chugoku-meti", "exhibitors", dt.date(2027, 11, 22), dt.date(2027, 11, 23)),
        ("soumu-chugoku", "event", dt.date(2027, 6, 1), None),
    ]
    assert all(i.date > dt.date(2026, 11, 28) for i in added if i.kind != "meeting")
    assert all(i.url.startswith("https://example.jp/") for i in added if i.kind != "meeting")


# --- review ----------------------------------------------------------------------------------


def test_review_flow(council):
    for kind in SUBMISSIONS:
        council.ok("items", "submit", "--org", "cef", "--kind", kind, *SUBMISSIONS[kind])
    assert council.ok("items", "approve", "1", "2").stdout == "approved 1, 2\n"
    council.ok("items", "reject", "3", "--reason", "締切日を確認してください")
    approved = listed(council, "--status", "approved")
    assert [(r["id"], r["status"]) for r in approved] == [(1, "approved"), (2, "approved")]
    rejected = listed(council, "--status", "rejected")
    assert [(r["id"], r["reject_reason"]) for r in rejected] == [(3, "締切日を確認してください")]
    assert [r["id"] for r in listed(council, "--status", "submitted")] == [4]

    # Editing an approved item sends it back for review; so does fixing a rejected one.
    edited = json.loads(council.ok("items", "edit", "2", "--fee", "3,000円", "--json").stdout)
    assert (edited["status"], edited["fee"]) == ("submitted", "3,000円")
    council.ok("items", "edit", "3", "--deadline", "令和9年8月6日")
    assert [(r["id"], r["status"], r["reject_reason"]) for r in listed(council, "--status", "submitted")] == [
        (2, "submitted", ""), (3, "submitted", ""), (4, "submitted", "")]


def test_a_published_item_is_frozen(services):
    with services.session() as session:
        org = orgs.add(session, "cef", "中国経済連合会")
        item = items.submit(session, org, "news", {"title": "お知らせ", "body": "本文"})
        items.approve(session, [item.id])
        items.mark_published(session, [item])
    with services.session() as session:
        item = items.get(session, item.id)
        with pytest.raises(StateError, match="was published in an issue and can no longer be edited"):
            items.update(session, item, {"title": "変更"})
        with pytest.raises(StateError, match="already published and cannot be rejected"):
            items.reject(session, item.id, "理由")
        with pytest.raises(StateError, match="already published; nothing changed"):
            items.approve(session, [item.id])
        assert (item.status, item.title) == ("published", "お知らせ")


def test_an_unapproved_item_cannot_be_published(session):
    org = orgs.add(session, "cef", "中国経済連合会")
    item = items.submit(session, org, "news", {"title": "t", "body": "b"})
    with pytest.raises(StateError, match="item 1 is submitted, not approved"):
        items.mark_published(session, [item])


def test_only_a_published_item_goes_back_to_approved(session):
    """The transition `issues cancel` uses for an issue that reached nobody, with its guard."""
    org = orgs.add(session, "cef", "中国経済連合会")
    item = items.submit(session, org, "news", {"title": "t", "body": "b"})
    with pytest.raises(StateError, match="item 1 is submitted, not published"):
        items.unpublish(item)
    items.approve(session, [item.id])
    items.mark_published(session, [item])
    items.unpublish(item)
    assert item.status == "approved"
    with pytest.raises(StateError, match="item 1 is approved, not published"):
        items.unpublish(item)


def test_show_prints_fields_and_a_preview(council):
    council.ok("items", "submit", "--org", "cef", "--kind", "exhibitors", *SUBMISSIONS["exhibitors"],
               "--body", "## 出展のご案内\n\n- 小間料：無料\n- 定員 **30社**<script>x()</script>")
    shown = council.ok("items", "show", "1").stdout
    for line in ("item 1: 出展企業の募集", "status: submitted", "kind: exhibitors (出展者募集)",
                 "org: cef (中国経済連合会)", "deadline: 2027年7月30日（金）",
                 "event: エコ・イノベーションメッセ2027inひろしま", "出展のご案内", "・小間料：無料",
                 "・定員 30社"):
        assert line in shown, line
    assert "script" not in shown


# --- bad input: one line, nothing stored -----------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--org", "nope", "--kind", "news", "--title", "t", "--body", "b"],
     "no org with the code 'nope'; known codes: aist-chugoku, cef, chugoku-meti, soumu-chugoku"),
    (["--org", "cef", "--kind", "party", "--title", "t", "--body", "b"],
     "unknown kind 'party': use meeting, event, exhibitors or news"),
    (["--org", "cef", "--kind", "meeting", "--title", "t", "--date", "5/24", "--venue", "v"],
     "missing body: meeting items (会議報告) need title, date, venue, body"),
    (["--org", "cef", "--kind", "event", "--title", "t", "--date", "12/1"],
     "missing venue: event items (イベント案内) need title, date, venue"),
    (["--org", "cef", "--kind", "exhibitors", "--title", "t", "--event", "e"],
     "missing deadline, how_to_apply: "
     "exhibitors items (出展者募集) need title, event, deadline, how_to_apply"),
    (["--org", "cef", "--kind", "news", "--body", "b"],
     "missing title: news items (お知らせ) need title, body"),
    (["--org", "cef", "--kind", "news", "--title", "\u200b", "--body", "b"],
     "missing title: news items (お知らせ) need title, body"),
    (["--org", "cef", "--kind", "event", "--title", "t", "--date", "来月", "--venue", "v"],
     "date: cannot read the date '来月'; write it as 2026-12-01, 2026/12/1, 2026年12月1日, 令和8年12月1日, "
     "R8.12.1 or 12/1"),
    (["--org", "cef", "--kind", "event", "--title", "t", "--date", "2027/6/1（水）", "--venue", "v"],
     "date: '2027/6/1（水）': 2027-06-01 is a 火曜日, not 水曜日; check the date or the weekday"),
    (["--org", "cef", "--kind", "event", "--title", "t", "--date", "2027/6/2", "--end-date", "2027/6/1",
      "--venue", "v"], "end_date 2027-06-01 is before date 2027-06-02"),
    (["--org", "cef", "--kind", "event", "--title", "講演会\r\nBcc: all@example.jp", "--date", "12/1",
      "--venue", "v"], "the title must be one line (it becomes the mail subject)"),
    (["--org", "cef", "--kind", "event", "--title", "t", "--date", "12/1", "--venue", "v",
      "--url", "javascript:alert(1)"], "url 'javascript:alert(1)' is not an http:// or https:// address"),
    (["--org", "cef", "--kind", "news", "--title", "t", "--body", "b", "--fee", "無料"],
     "fee does not apply to news items (お知らせ); they take: title, body, date, url"),
    (["--org", "cef", "--kind", "news", "--title", "t", "--body", "b", "--body-file", "x.md"],
     "give --body or --body-file, not both"),
    (["--org", "cef", "--kind", "news", "--title", "t", "--body-file", "/nonexistent/body.md"],
     "cannot read /nonexistent/body.md: No such file or directory"),
])
@one_database  # a rule of the input, not of the database
def test_bad_submissions(council, args, message):
    assert refused(council, "items", "submit", *args) == message


@pytest.mark.parametrize(("url", "message"), [
    # helper-72 F1: the reviewer saw 例え.jp, the mail linked evil.com (urlsplit splits at the
    # last '@'; a browser reads the backslash as '/' and opens 例え.jp).
    ("https://例え.jp\\@evil.com/",
     "url 'https://例え.jp\\\\@evil.com/' holds a backslash: type '/' instead"),
    ("https://www.meti.go.jp@evil.com/",
     "url 'https://www.meti.go.jp@evil.com/' has a name before '@': the link would open evil.com"),
    ("https://例え.jp:abc/", "url 'https://例え.jp:abc/': '例え.jp:abc' is not a site name "
                            "(a host, then ':port' if any)"),
    ("https://例え.jp%2F/x", "url 'https://例え.jp%2F/x': '例え.jp%2F' is not a site name "
                            "(a host, then ':port' if any)"),
    ("https://a.jp:99999/", "url 'https://a.jp:99999/': 'a.jp:99999' is not a site name "
                           "(a host, then ':port' if any)"),
    ("https://☃.jp/", "url 'https://☃.jp/': '☃.jp' is not a site name (a host, then ':port' if any)"),
    # was a 500 in the console: urlsplit raises on a full-width ／ in the site name
    ("https://例え.jp／申込", "url 'https://例え.jp／申込': its site name cannot be read (a full-width "
                            "sign such as ／ or ＠, or a broken [ ]): type it as the browser's address bar "
                            "shows it"),
    # helper-74: invalid punycode is a dead link
    ("https://a。。jp/", "url 'https://a..jp/': 'a..jp' is not a site name (a host, then ':port' if any)"),
    ("https://xn--a.jp/",
     "url 'https://xn--a.jp/': 'xn--a.jp' is not a site name (a host, then ':port' if any)"),
])
@one_database
def test_a_link_whose_site_a_browser_reads_otherwise_is_refused(council, url, message):
    assert refused(council, "items", "submit", "--org", "cef", "--kind", "news", "--title", "t",
                   "--body", "b", "--url", url) == message


@one_database
def test_site_names_browsers_open_are_taken_as_pasted(council):
    pasted = ["https://例え.jp:8443/申込", "http://192.168.0.1:8080/", "https://[::1]/x",
              "https://ｅｘａｍｐｌｅ.jp/", "https://a.jp:/x", "https://a.jp/%2Fx?q=@b#c",
              # helper-74: JPRS's own example of a name with ・, and 。 as an IME types the dot
              "https://ザ・セール.jp/", "https://例え。jp/", "https://例え.jp:/sympo"]
    for url in pasted:
        council.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "t", "--body", "b",
                   "--url", url)
    # 。 in a site name is kept as the dot browsers read (helper-76: www.meti.go.jp。evil.com read
    # as a sentence ending at meti.go.jp); elsewhere the link stays as pasted
    assert [i["url"] for i in listed(council)] == [url.replace("例え。jp", "例え.jp") for url in pasted]
    # and the mail links the site the pasted text names (IDNA maps full-width letters as browsers do)
    assert links.as_uri(pasted[3]) == "https://example.jp/"
    council.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "t", "--body", "b",
               "--url", "https://www.meti.go.jp。evil.com/資料。pdf")
    assert listed(council)[-1]["url"] == "https://www.meti.go.jp.evil.com/資料。pdf"
    council.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "t", "--body", "b",
               "--url", "https://例え。jp/x?")  # helper-77: only the site changes, the empty ? stays
    assert listed(council)[-1]["url"] == "https://例え.jp/x?"
    assert [links.as_uri(url) for url in pasted[-3:]] == [
        "https://xn--wckk8lmcg.jp/", "https://xn--r8jz45g.jp/", "https://xn--r8jz45g.jp:/sympo"]
    assert links.as_uri("https://例え.jp\\@evil.com/") == "https://xn--r8jz45g.jp/@evil.com/"  # stored before


FILE_CASES = {
    "unknown org": ('+++\norg = "nope"\nkind = "news"\ntitle = "t"\n+++\nb\n',
                    "no org with the code 'nope'; "
                    "known codes: aist-chugoku, cef, chugoku-meti, soumu-chugoku"),
    "unknown kind": ('+++\norg = "cef"\nkind = "party"\ntitle = "t"\n+++\nb\n',
                     "unknown kind 'party': use meeting, event, exhibitors or news"),
    "missing field": ('+++\norg = "cef"\nkind = "event"\ntitle = "t"\ndate = "12/1"\n+++\n',
                      "missing venue: event items (イベント案内) need title, date, venue"),
    "bad date": ('+++\norg = "cef"\nkind = "meeting"\ntitle = "t"\ndate = "先週"\nvenue = "v"\n+++\nb\n',
                 "date: cannot read the date '先週'; write it as 2026-12-01, 2026/12/1, 2026年12月1日, "
                 "令和8年12月1日, R8.12.1 or 12/1"),
    "not TOML": ('+++\norg: cef\nkind = "news"\n+++\nb\n',
                 "the front matter is not valid TOML "
                 "(Expected '=' after a key in a key/value pair (at line 1, column 4))"),
    "YAML": ('---\norg: cef\n---\nb\n',
             "expected TOML front matter between +++ lines at the top, found YAML (---)"),
    "no front matter": ("# 見出し\n\n本文\n", "expected TOML front matter between +++ lines at the top, "
                                              "found no front matter"),
    "unclosed": ('+++\norg = "cef"\nkind = "news"\ntitle = "t"\n\n本文\n',
                 "the front matter has no closing +++ line"),
    "no org": ('+++\nkind = "news"\ntitle = "t"\n+++\nb\n',
               'the front matter needs org = "CODE" and kind = "meeting|event|…"'),
    "unknown key": ('+++\norg = "cef"\nkind = "news"\ntitle = "t"\nsumary = "x"\n+++\nb\n',
                    "unknown field 'sumary'; the fields are: title, body, date, end_date, time, venue, url, "
                    "deadline, fee, event, how_to_apply"),
    "multi-line title": ('+++\norg = "cef"\nkind = "news"\ntitle = """講演会\nのご案内"""\n+++\nb\n',
                         "the title must be one line (it becomes the mail subject)"),
    "list value": ('+++\norg = "cef"\nkind = "news"\ntitle = ["a", "b"]\n+++\nb\n',
                   "title must be text, not list"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
@one_database  # a rule of the input, not of the database
def test_bad_files_store_nothing_even_beside_good_ones(council, tmp_path, case):
    text, message = FILE_CASES[case]
    good = write(tmp_path, "good.md", '+++\norg = "cef"\nkind = "news"\ntitle = "良い記事"\n+++\n本文\n')
    bad = write(tmp_path, "bad.md", text)
    assert refused(council, "items", "add", str(good), str(bad)) == f"{bad}: {message}"


def test_unreadable_files_are_refused(council, tmp_path):
    good = write(tmp_path, "good.md", '+++\norg = "cef"\nkind = "news"\ntitle = "t"\n+++\nb\n')
    missing = tmp_path / "missing.md"
    binary = tmp_path / "picture.md"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\xff\xfe")
    assert refused(council, "items", "add", str(good), str(missing)) == (
        f"{missing}: cannot read {missing}: No such file or directory")
    assert refused(council, "items", "add", str(good), str(tmp_path)) == (
        f"{tmp_path}: cannot read {tmp_path}: Is a directory")
    assert refused(council, "items", "add", str(good), str(binary)) == (
        f"{binary}: cannot read {binary}: it is not UTF-8 or Shift_JIS text")


def test_a_shift_jis_file_from_a_windows_editor_is_read(council, tmp_path):
    path = tmp_path / "sjis.md"
    text = '+++\norg = "cef"\nkind = "news"\ntitle = "お知らせ"\n+++\r\n本文です。\r\n'
    path.write_bytes(text.encode("cp932"))
    council.ok("items", "add", str(path))
    assert [(r["title"], r["body"]) for r in listed(council)] == [("お知らせ", "本文です。")]


@pytest.mark.parametrize(("args", "message"), [
    (["approve", "1", "99"],
     "no item with the id 99; nothing changed: see which there are (`mailmag items list`)"),
    (["reject", "1", "--reason", " \u3000"], "give a reason for the rejection: the org sees it"),
    (["reject", "99", "--reason", "r"], "no item with the id 99: see which there are (`mailmag items list`)"),
    (["edit", "1", "--date", "13/40"], "date: '13/40' is not a date on the calendar"),
    (["edit", "1", "--title", "a\nb"], "the title must be one line (it becomes the mail subject)"),
    (["edit", "1"], "nothing to change: give at least one field option (see --help)"),
    (["list", "--status", "draft"], "unknown status 'draft': use submitted, approved, rejected, published"),
])
@one_database  # a rule of the input, not of the database
def test_bad_review_commands_change_nothing(council, args, message):
    council.ok("items", "submit", "--org", "cef", "--kind", "event", *SUBMISSIONS["event"])
    council.ok("items", "approve", "1")
    assert refused(council, "items", *args) == message
    assert [r["status"] for r in listed(council)] == ["approved"]


def test_the_domain_names_the_missing_field(session):
    org = orgs.add(session, "cef", "中国経済連合会")
    with pytest.raises(InvalidInput, match=r"^missing how_to_apply: exhibitors items"):
        items.submit(session, org, "exhibitors", {"title": "t", "event": "e", "deadline": "2027-01-05"})
    assert items.listing(session) == []
    assert items.required_fields("出展者募集") == ("title", "event_name", "deadline", "how_to_apply")


def test_a_body_pasted_on_standard_input_is_normalized(council):
    pasted = ("\ufeff発⾏のお知らせ\r\n次回は6⽉末\u200bに開催します。\r\n\r\n"
              "ｶﾀｶﾅとＡＢＣ１２３はそのまま\x0c\r\n")
    council.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "⾏事の\u200bお知らせ",
               "--body-file", "-", input=pasted)
    item = listed(council)[0]
    assert item["title"] == "行事のお知らせ"
    assert item["body"] == "発行のお知らせ\n次回は6月末に開催します。\n\nｶﾀｶﾅとＡＢＣ１２３はそのまま"


def test_editing_the_date_to_a_range_replaces_the_stored_end(council):
    council.ok("items", "submit", "--org", "cef", "--kind", "event", "--title", "メッセ", "--venue", "広島",
               "--date", "2027/11/22", "--end-date", "2027/11/23")
    council.ok("items", "edit", "1", "--date", "2027/11/24〜26")
    assert [(r["date"], r["end_date"]) for r in listed(council)] == [("2027-11-24", "2027-11-26")]
    council.ok("items", "edit", "1", "--end-date", "")
    assert [(r["date"], r["end_date"]) for r in listed(council)] == [("2027-11-24", None)]
