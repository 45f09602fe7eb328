"""Composing issues: render once and freeze, 特定電子メール法 refusals, warnings, the CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import one_database
from issue_fixtures import TODAY, add_reference_items
from sqlalchemy import func, select

from mailmag import clock, placeholders
from mailmag.config import PACKAGE_TEMPLATES, ComposeConfig
from mailmag.content import issues, render
from mailmag.content import items as items_mod
from mailmag.errors import ComplianceError, InvalidInput, StateError
from mailmag.models import Issue, IssueItem, Item, Org, Rendering
from mailmag.text_ja import display_width
from mailmag.web import archive

MARKERS = placeholders.PLACEHOLDERS


@pytest.fixture
def reference_items(session, reference_text):
    return add_reference_items(session, reference_text)


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def _renderings(issue: Issue) -> dict[str, Rendering]:
    return {r.lang: r for r in issue.renderings}


def test_the_reference_issue_renders_both_parts_in_both_languages(session, config, reference_items):
    composed = issues.compose(session, config, today=TODAY)
    issue = composed.issue
    assert composed.warnings == []
    assert (issue.id, issue.number, issue.rendered_number, issue.status) == (1, None, 1, "draft")
    assert issue.title == "中国地域産学官コラボレーション会議 メールマガジン 第1号"
    assert [e.item.kind for e in issue.entries] == ["meeting", "event", "event", "exhibitors"]
    ja = _renderings(issue)["ja"]
    assert set(_renderings(issue)) == {"ja", "en"}
    assert ja.subject == "【第1号】『企画会議』（5月24日）の概要 ほか"
    for needle in ("第1号", "今号の目次", "会議報告", "イベント案内", "出展者募集", "中国経済産業局",
                   "2012年11月22日（木）〜23日（金）", "https://news.example.jp/archive/1",
                   *(item.title.replace("「", "") for item in reference_items)):
        assert needle in ja.html.replace("「", ""), needle
        assert needle in ja.text.replace("「", ""), needle
    assert "{{" not in ja.html + ja.text and "{%" not in ja.html + ja.text
    # the footer promises what the preferences page offers (topics, language), not a change of address
    assert "受信するテーマ・言語" in ja.text and "テーマや言語の変更" in ja.html
    assert "配信先の変更" not in ja.html
    # "not shown well? see the web version" is for the mail: the web version leaves it out
    assert "正しく表示されない場合は" in ja.html
    web = archive.web_version(ja.html, config.mailmag.base_url, "ja", config.sender.list_name)
    assert "正しく表示されない場合は" not in web and "今号の目次" in web
    assert "<h1" in ja.html and re.search(r'<h1 class="issue-number" style="[^"]*font-size:28px', ja.html)
    assert re.search(r"<style[^>]*>.*@media screen and \(max-width: 620px\)", ja.html, re.S)


def test_every_text_line_fits_the_width_and_urls_stand_whole(session, config, reference_items):
    issue = issues.compose(session, config, today=TODAY).issue
    for rendering in issue.renderings:
        lines = rendering.text.split("\n")
        assert all(display_width(line) <= 70 for line in lines), rendering.lang
        assert MARKERS["unsubscribe_url"] in lines  # on a line of its own: clickable once filled
        assert "https://www.example.jp/eco-messe2012/" in lines
        assert "\u200b" not in rendering.text


def test_narrower_width_from_the_configuration(session, config, reference_items):
    narrow = config.replace(compose=ComposeConfig(wrap_width=50))
    text = _renderings(issues.compose(session, narrow, today=TODAY).issue)["ja"].text
    assert max(display_width(line) for line in text.split("\n")) == 50


def test_premailer_runs_once_per_language_not_per_preview(session, config, reference_items, monkeypatch):
    calls: list[str] = []
    original = render.inline_css

    def counting(document: str) -> str:
        calls.append(document)
        return original(document)

    monkeypatch.setattr(render, "inline_css", counting)
    issues.compose(session, config, today=TODAY)
    assert len(calls) == 2  # ja and en
    for fmt in ("html", "text", "html"):
        issues.preview(session, config, 1, fmt)
    assert len(calls) == 2
    issues.rerender(session, config, 1, today=TODAY)
    assert len(calls) == 4


def test_placeholders_survive_premailer_and_only_they_remain(session, config, reference_items):
    ja = _renderings(issues.compose(session, config, today=TODAY).issue)["ja"]
    assert f'href="{MARKERS["unsubscribe_url"]}"' in ja.html
    assert f'href="{MARKERS["preferences_url"]}"' in ja.html
    assert MARKERS["email"] in ja.html and MARKERS["email"] in ja.text
    assert set(re.findall(r"__MM_[A-Z_]+__", ja.html + ja.text)) <= set(MARKERS.values())


def test_preview_shows_a_sample_recipient(session, config, reference_items):
    issues.compose(session, config, today=TODAY)
    sample = placeholders.sample_values(config.mailmag.base_url)
    page = issues.preview(session, config, 1, "html")
    text = issues.preview(session, config, 1, "text", lang="en")
    assert f'href="{sample["unsubscribe_url"]}"' in page and sample["email"] in page
    assert sample["unsubscribe_url"] in text and "Unsubscribe" in text
    assert "__MM_" not in page + text


def test_rendering_is_frozen_until_rendered_again(session, config, reference_items):
    issues.compose(session, config, today=TODAY)
    before = issues.preview(session, config, 1, "text")
    workshop = reference_items[2]
    items_mod.update(session, workshop, {"title": "本格研究ワークショップ（広島市・11月15日）"})
    assert issues.preview(session, config, 1, "text") == before
    again = issues.rerender(session, config, 1, today=TODAY)
    assert "本格研究ワークショップ（広島市・11月15日）" in issues.preview(session, config, 1, "text")
    assert [str(w) for w in again.warnings] == [
        f"item {workshop.id} 「本格研究ワークショップ（広島市・11月15日）」 is submitted, not approved: "
        "approve it again before sending"
    ]
    assert _count(session, Rendering) == 2


def test_render_refuses_an_issue_already_sent(session, config, reference_items):
    issue = issues.compose(session, config, today=TODAY).issue
    issue.status = "sent"
    html_before = _renderings(issue)["ja"].html
    reference_items[0].title = "変更"
    refusal = r"^issue 1 is sent: only a draft or scheduled issue can be rendered$"
    with pytest.raises(StateError, match=refusal):
        issues.rerender(session, config, 1, today=TODAY)
    assert _renderings(issue)["ja"].html == html_before


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("postal_address", r"^\[sender\] postal_address is empty: set the sender's postal address"),
        ("contact", r"^\[sender\] contact is empty: set a contact for enquiries"),
        ("name", r"^\[sender\] name is empty: set the sender's name"),
    ],
)
@one_database  # a rule of the input, not of the database
def test_compose_refuses_a_configuration_without_sender_data(session, config, reference_items, field,
                                                             message):
    broken = config.replace(sender=dataclasses.replace(config.sender, **{field: " "}))
    with pytest.raises(ComplianceError, match=message):
        issues.compose(session, broken, today=TODAY)
    assert _count(session, Issue) == 0 and _count(session, IssueItem) == 0


def _templates_without(tmp_path: Path, partial: str, *needles: str) -> Path:
    folder = tmp_path / "templates"
    shutil.copytree(PACKAGE_TEMPLATES, folder)
    path = folder / "partials" / partial
    lines = path.read_text(encoding="utf-8").split("\n")
    kept = [line for line in lines if not any(needle in line for needle in needles)]
    path.write_text("\n".join(kept), encoding="utf-8")
    return folder


def test_compose_refuses_a_text_template_without_unsubscribe_link_or_address(
        session, config, reference_items, tmp_path):
    folder = _templates_without(tmp_path, "footer.txt.j2", "recipient.unsubscribe_url",
                                "sender.postal_address")
    custom = config.replace(mailmag=dataclasses.replace(config.mailmag, templates_dir=str(folder)))
    with pytest.raises(ComplianceError, match=re.escape(
            "template issue.txt.j2 does not show the sender's postal address and the unsubscribe link "
            "(recipient.unsubscribe_url), which 特定電子メール法 requires in every issue: "
            "add them to its footer")):
        issues.compose(session, custom, today=TODAY)
    assert _count(session, Issue) == 0 and _count(session, Rendering) == 0


def test_compose_refuses_an_html_template_without_a_contact(session, config, reference_items, tmp_path):
    folder = _templates_without(tmp_path, "footer.en.html.j2", "sender.contact")
    custom = config.replace(mailmag=dataclasses.replace(config.mailmag, templates_dir=str(folder)))
    with pytest.raises(ComplianceError, match=r"^template issue\.en\.html\.j2 does not show a contact for "):
        issues.compose(session, custom, today=TODAY)
    assert _count(session, Issue) == 0


def test_without_english_templates_only_the_japanese_edition_is_made(session, config, reference_items,
                                                                     tmp_path):
    folder = tmp_path / "templates"
    shutil.copytree(PACKAGE_TEMPLATES, folder)
    (folder / "issue.en.html.j2").unlink()
    (folder / "issue.en.txt.j2").unlink()
    custom = config.replace(mailmag=dataclasses.replace(config.mailmag, templates_dir=str(folder)))
    issue = issues.compose(session, custom, today=TODAY).issue
    assert [r.lang for r in issue.renderings] == ["ja"]


def test_warnings_name_what_to_check(session, config):
    org = Org(code="meti", name="中国経済産業局")
    today = dt.date(2026, 12, 1)
    rows = [
        Item(org=org, kind="event", title="日付のない講演会", venue="広島市", url="https://a.example.jp/"),
        Item(org=org, kind="event", title="終わった講演会", date=dt.date(2026, 11, 30), venue="広島市",
             url="http://b.example.jp/apply", body="資料は[こちら](http://c.example.jp/doc.pdf)です。"),
        Item(org=org, kind="news", title="お知らせ", body="https のリンクは https://d.example.jp/ です。"),
    ]
    for row in rows:
        row.status = "approved"
    session.add_all(rows)
    session.flush()
    small = config.replace(compose=ComposeConfig(html_size_limit_kb=10))
    composed = issues.compose(session, small, today=today).warnings
    warnings = [str(w) for w in composed]
    first, second = rows[0].id, rows[1].id
    assert warnings[:4] == [  # items in issue order: the dated event first
        f"item {second} 「終わった講演会」 links to http://b.example.jp/apply, which is not https",
        f"item {second} 「終わった講演会」 links to http://c.example.jp/doc.pdf, which is not https",
        f"item {second} 「終わった講演会」: the event on 2026年11月30日（月） is already past",
        f"item {first} 「日付のない講演会」 (イベント案内) has no date",
    ]
    assert len(warnings) == 6
    assert re.fullmatch(r"the ja HTML is \d+ KB, over 10 KB: Gmail clips it .*", warnings[4])
    assert warnings[5].startswith("the en HTML is ")
    # the console shows the same warnings in Japanese
    assert composed[0].said("ja") == (f"記事（ID {second}）「終わった講演会」のリンク "
                                      "http://b.example.jp/apply は https ではありません")
    no_date = f"記事（ID {first}）「日付のない講演会」（イベント案内）に日付がありません"
    assert composed[3].said("ja") == no_date and composed[3].said("en") == warnings[3]
    assert re.fullmatch(r"日本語版の HTML が \d+ KB あり、10 KB を超えています。.*", composed[4].said("ja"))


def test_default_takes_approved_items_not_yet_in_an_issue(session, config, reference_items):
    issues.compose(session, config, today=TODAY)
    with pytest.raises(InvalidInput, match=r"^there are no approved items that are not already in an issue"):
        issues.compose(session, config, today=TODAY)
    late = Item(org=reference_items[0].org, kind="news", title="追加のお知らせ", body="本文",
                status="approved")
    session.add(late)
    session.flush()
    second = issues.compose(session, config, today=TODAY).issue
    assert (second.id, [e.item_id for e in second.entries]) == (2, [late.id])
    assert [i.id for i in issues.listing(session)] == [2, 1]


def test_named_items_must_be_approved(session, config, reference_items):
    reference_items[1].status = "submitted"
    refused = rf"^item {reference_items[1].id} is submitted; no issue was made: approve it$"
    with pytest.raises(StateError, match=refused):
        issues.compose(session, config, item_ids=[reference_items[0].id, reference_items[1].id], today=TODAY)
    assert _count(session, Issue) == 0


def test_sections_follow_the_configured_kind_order(session, config, reference_items):
    ordered = config.replace(compose=ComposeConfig(kind_order=["exhibitors", "event", "meeting"]))
    issue = issues.compose(session, ordered, title="特集：秋のイベント", today=TODAY).issue
    assert [e.item.kind for e in issue.entries] == ["exhibitors", "event", "event", "meeting"]
    ja = _renderings(issue)["ja"]
    assert issue.title == "特集：秋のイベント" and "特集：秋のイベント" in ja.html
    assert ja.text.index("■出展者募集") < ja.text.index("■イベント案内") < ja.text.index("■会議報告")


# --- the command line -------------------------------------------------------------------------


def _submit(mailmag, title: str, url: str) -> int:
    when = (clock.today(ZoneInfo("Asia/Tokyo")) + dt.timedelta(days=60)).isoformat()
    result = mailmag.ok("items", "submit", "--org", "meti", "--kind", "event", "--title", title,
                        "--date", when, "--venue", "広島市", "--url", url, "--json")
    item_id = json.loads(result.stdout)["id"]
    mailmag.ok("items", "approve", str(item_id))
    return item_id


def test_cli_new_list_preview_render(mailmag, tmp_path):
    mailmag.ok("orgs", "add", "meti", "中国経済産業局")
    item_id = _submit(mailmag, "ひろしま講演会", "http://example.jp/lecture")
    new = mailmag.ok("issues", "new", "--json")
    document = json.loads(new.stdout)
    assert (document["id"], document["number"], document["items"]) == (1, None, [item_id])
    assert document["title"] == "中国地域産学官コラボレーション会議 メールマガジン 第1号"
    assert new.stderr == (f"warning: item {item_id} 「ひろしま講演会」 links to http://example.jp/lecture, "
                          "which is not https\n")
    listed = json.loads(mailmag.ok("issues", "list", "--json").stdout)
    assert [(i["id"], i["number"], i["status"], i["items"], i["langs"]) for i in listed] == [
        (1, None, "draft", [item_id], ["en", "ja"])]
    page = tmp_path / "preview.html"
    mailmag.ok("issues", "preview", "1", "-o", str(page))
    assert "https://news.example.jp/u/SAMPLE-TOKEN" in page.read_text(encoding="utf-8")
    text = mailmag.ok("issues", "preview", "1", "--format", "text").stdout
    assert "ひろしま講演会" in text and "yamada@example.jp" in text
    rendered = mailmag.ok("issues", "render", "1")
    assert rendered.stdout == "rendered issue 1 again (en, ja)\n"


def test_cli_errors_are_one_line_and_change_nothing(mailmag):
    nothing = mailmag("issues", "new")
    assert nothing.exit_code == 1
    assert nothing.stderr == ("Error: there are no approved items that are not already in an issue: "
                              "approve some (`mailmag items approve ID`, or name items with --item)\n")
    missing = mailmag("issues", "preview", "9")
    assert missing.exit_code == 1
    assert missing.stderr == "Error: no issue with the id 9: see which there are (`mailmag issues list`)\n"
    assert json.loads(mailmag.ok("issues", "list", "--json").stdout) == []


def test_configured_language_picks_the_preview_edition(session, config, reference_items):
    issues.compose(session, config, today=TODAY)
    english = config.replace(mailmag=dataclasses.replace(config.mailmag, language="en"))
    assert "In this issue" in issues.preview(session, english, 1, "text")
    assert "今号の目次" in issues.preview(session, config, 1, "text")


# --- composing grows with the item, not faster ------------------------------------------------

_GROWING_UNIT = (
    "## 第{n}回 企画会議\n\n"
    "5月24日（木），**中国経済連合会**の会議室にて開催した『企画会議』の概要を"
    "[こちら](https://news.example.jp/reports/{n})でご紹介いたします。\n"
    "詳しくは *事務局* まで。The symposium will be held in Matsue on September 7.\n\n"
    "- シンポジウム「地域イノベーション創出2012」の開催について\n"
    "- 次回：2012年11月22日（木）13:30〜17:00\n\n"
    "| 項目 | 内容 |\n|---|---|\n| 会場 | 広島市中区基町10-52 |\n\n"
)


def _calls_to_compose(config, units: int) -> int:
    """Python and builtin calls made composing one item of `units` repetitions (both editions)."""
    import sys

    body = "".join(_GROWING_UNIT.format(n=n) for n in range(units))
    item = Item(id=1, kind="news", title="長い記事", body=body, url="", status="approved",
                org=Org(name="中国経済連合会"))
    spec = render.IssueSpec(1, None, TODAY, [item])
    env = render.make_environment(config.templates_path)
    render.render_issue(env, config, spec)  # templates compiled, BudouX loaded: not what grows
    calls = 0

    def count(_frame, event: str, _arg) -> None:  # type: ignore[no-untyped-def]
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        editions = render.render_issue(env, config, spec)
        issues.check(config, [item], editions, TODAY)
    finally:
        sys.setprofile(None)
    return calls


@one_database  # no database: the work of rendering
def test_composing_work_grows_linearly_with_the_item(config):
    # Four times the item must cost at most ~four times the calls (a quadratic step, such as
    # rescanning the text per line or per element, makes it up to sixteen). Calls, not seconds:
    # the count is the same on a busy machine. benchmarks/compose.py measures the time.
    small, large = _calls_to_compose(config, 20), _calls_to_compose(config, 80)  # ~16 and ~64 KB
    assert small > 50_000  # the item's work dominates the count, not the fixed cost of an issue
    assert large <= 4.4 * small, (small, large)


def test_a_title_that_takes_many_lines_is_warned_of(session, config):
    """helper-81: a 297-character title went in without a word and took ten lines of the plain-text
    table of contents."""
    org = Org(code="meti", name="中国経済産業局")
    long_title = "中国地域における産学官連携の推進に関する" * 15  # 300 characters
    rows = [Item(org=org, kind="news", title=long_title, body="本文"),
            Item(org=org, kind="news", title="あ" * issues.TITLE_LONG, body="本文")]  # at the limit: none
    for row in rows:
        row.status = "approved"
    session.add_all(rows)
    session.flush()
    composed = issues.compose(session, config, today=dt.date(2026, 12, 1)).warnings
    long = [w for w in composed if "title is" in str(w)]
    assert [str(w) for w in long] == [
        f"item {rows[0].id} 「{long_title[:30]}…」: its title is 300 characters long, and takes several "
        "lines in the table of contents and the mail; keep it under 80 (the details go in the body)"]
    assert long[0].said("ja").endswith("80 文字以内にして、詳しいことは本文に書いてください")
