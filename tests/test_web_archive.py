"""The public archive: sent issues only, nothing personal, Atom and iCalendar feeds."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from zoneinfo import ZoneInfo

import icalendar
import pytest
from web_support import Client, with_backend_killed_mid_request

from mailmag.content import items, orgs
from mailmag.models import Issue, IssueItem, Item, Rendering, utcnow
from mailmag.placeholders import PLACEHOLDERS

pytest_plugins = ["web_fixtures"]
ATOM = "{http://www.w3.org/2005/Atom}"
JST = ZoneInfo("Asia/Tokyo")
YEAR = utcnow().year + 1  # the events are ahead, inside the calendar's window

HTML = (
    '<html><head><style>@media (max-width:600px){{.x{{width:100%}}}}</style></head>'
    '<body style="color:#333"><p>{name} 様（{email}）</p><h1>{subject}</h1>'
    '<a href="{unsubscribe_url}">配信停止</a> <a href="{preferences_url}">配信設定</a></body></html>'
)


def _issue(session, number: int, status: str, subject: str, events: list[Item] = ()) -> Issue:  # type: ignore[no-untyped-def]
    html = HTML.format(subject=subject, **PLACEHOLDERS)
    issue = Issue(number=number, title=f"第{number}号", status=status,
                  sent_at=dt.datetime(2026, 5, number, 0, 30, tzinfo=dt.UTC) if status != "draft" else None)
    issue.renderings.append(Rendering(lang="ja", subject=subject, html=html, text=subject))
    issue.entries.extend(IssueItem(item=item, position=n) for n, item in enumerate(events))
    session.add(issue)
    return issue


@pytest.fixture
def published(web_services):  # type: ignore[no-untyped-def]
    """Issue 1 sent (two events), issue 2 sending, issue 3 a draft (with an event not yet public)."""
    with web_services.session() as session:
        org = orgs.add(session, "hiroshima-u", "広島大学")
        timed = items.submit(session, org, "event", {"title": "産学連携フォーラム", "date": f"{YEAR}-06-10",
                                                     "time": "13:30〜17:00", "venue": "広島国際会議場",
                                                     "url": "https://example.jp/forum"})
        multi = items.submit(session, org, "event", {"title": "展示会", "date": f"{YEAR}-07-01",
                                                     "end_date": f"{YEAR}-07-03",
                                                     "venue": "ポートメッセなごや"})
        secret = items.submit(session, org, "event", {"title": "未発表のイベント", "date": f"{YEAR}-08-01",
                                                      "venue": "未定"})
        _issue(session, 1, "sent", "【第1号】産学連携フォーラムのご案内", [timed, multi])
        _issue(session, 2, "sending", "【第2号】お知らせ")
        _issue(session, 3, "draft", "【第3号】下書き", [secret])


def test_the_list_shows_sent_issues_newest_first_and_links_the_feeds(live, published):
    page = Client(live.url).get("/archive/")
    assert page.status == 200
    assert page.text.index("【第2号】お知らせ") < page.text.index("【第1号】産学連携フォーラムのご案内")
    assert "下書き" not in page.text
    assert "2026年5月1日（金）" in page.text
    assert 'href="/feed.atom"' in page.text and 'href="/events.ics"' in page.text
    assert Client(live.url).get("/").headers["Location"].endswith("/archive/")


def test_the_web_version_has_nothing_personal(live, published):
    page = Client(live.url).get("/archive/1")
    assert page.status == 200 and "【第1号】産学連携フォーラムのご案内" in page.text
    assert "__MM_" not in page.text
    assert "/u/" not in page.text and "/p/" not in page.text
    assert page.text.count('href="https://news.example.jp/subscribe"') == 2
    assert "<p> 様（）</p>" in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "style-src 'unsafe-inline'" in csp and "script" not in csp and "default-src 'none'" in csp


def test_drafts_and_unknown_issues_are_404(live, published):
    assert Client(live.url).get("/archive/3").status == 404
    assert Client(live.url).get("/archive/99").status == 404
    assert Client(live.url).get("/archive/abc").status == 404


def test_an_issue_has_one_address(live, published):
    """/archive/1 only: not /archive/01, nor with full-width digits (１, as a Japanese IME types it)."""
    client = Client(live.url)
    assert client.get("/archive/1").status == 200
    for other in ("/archive/01", "/archive/%EF%BC%91", "/archive/001?lang=ja"):
        assert client.get(other).status == 404, other


def test_atom_feed_lists_the_public_issues(live, published):
    reply = Client(live.url).get("/feed.atom")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/atom+xml")
    feed = ET.fromstring(reply.body)
    entries = feed.findall(f"{ATOM}entry")
    titles = [e.findtext(f"{ATOM}title") for e in entries]
    assert titles == ["【第2号】お知らせ", "【第1号】産学連携フォーラムのご案内"]
    assert [e.find(f"{ATOM}link").get("href") for e in entries] == [
        "https://news.example.jp/archive/2", "https://news.example.jp/archive/1"]
    assert feed.findtext(f"{ATOM}title") == "中国地域産学官コラボレーション会議 メールマガジン"


def test_icalendar_feed_has_the_published_events(live, published):
    reply = Client(live.url).get("/events.ics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/calendar")
    calendar = icalendar.Calendar.from_ical(reply.body)
    events = {str(e["SUMMARY"]): e for e in calendar.walk("VEVENT")}
    assert sorted(events) == ["展示会", "産学連携フォーラム"]  # not the draft's event
    forum = events["産学連携フォーラム"]
    assert forum.decoded("DTSTART") == dt.datetime(YEAR, 6, 10, 13, 30, tzinfo=JST)
    assert forum.decoded("DTEND") == dt.datetime(YEAR, 6, 10, 17, 0, tzinfo=JST)
    assert str(forum["LOCATION"]) == "広島国際会議場" and str(forum["URL"]) == "https://example.jp/forum"
    assert "https://news.example.jp/archive/1" in str(forum["DESCRIPTION"])
    assert "広島大学" in str(forum["DESCRIPTION"])
    fair = events["展示会"]  # three days, all day: DTEND is the day after (exclusive)
    assert (fair.decoded("DTSTART"), fair.decoded("DTEND")) == (dt.date(YEAR, 7, 1), dt.date(YEAR, 7, 4))
    assert calendar.walk("VTIMEZONE")[0]["TZID"] == "Asia/Tokyo"
    assert len({str(e["UID"]) for e in events.values()}) == 2


def test_empty_archive_and_feeds_still_answer(live):
    assert "まだ発行された号はありません" in Client(live.url).get("/archive/").text
    assert ET.fromstring(Client(live.url).get("/feed.atom").body).findall(f"{ATOM}entry") == []
    assert icalendar.Calendar.from_ical(Client(live.url).get("/events.ics").body).walk("VEVENT") == []


def test_an_issue_not_yet_sent_says_so_where_the_test_mail_links(live, published):
    """A test mail's Web版 link names the number the issue will have: until it is sent the page
    says the issue is not out yet (still a 404, for crawlers), not that the link is broken, and
    shows nothing of the draft."""
    page = Client(live.url).get("/archive/3")
    assert page.status == 404
    assert "第3号はまだ公開されていません" in page.text
    assert "リンクが正しくないか" not in page.text
    assert "下書き" not in page.text and "未発表" not in page.text
    assert 'href="/archive/"' in page.text
    english = Client(live.url).get("/archive/3?lang=en")
    assert english.status == 404 and "Issue 3 has not been published yet" in english.text
    # a number before the latest one that no issue has is an ordinary broken link
    assert "ページが見つかりません" in Client(live.url).get("/archive/0").text


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_page_outlives_its_database_connection_dying_mid_request(live, published, web_services):
    """A visitor reading the archive during a failover got a 503: a GET whose connection dies
    under it (here an administrator's pg_terminate_backend) is read once more on a new one."""
    def read() -> tuple[int, str]:
        reply = Client(live.url).get("/archive/1")
        return reply.status, reply.text

    status, page = with_backend_killed_mid_request(web_services.config.database.url, "renderings", read)
    assert status == 200 and "【第1号】産学連携フォーラムのご案内" in page
