"""Public pages stay cheap and bounded: what listings read, feed and calendar limits, 304s,
out-of-range numbers, and the limits `mailmag serve` runs waitress with."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import icalendar
import pytest
from conftest import SECRET
from sqlalchemy import event
from web_support import Client, LiveServer, make_services

from mailmag.config import Config, WebConfig
from mailmag.content import items, orgs
from mailmag.models import Issue, IssueItem, Rendering, utcnow
from mailmag.web import create_app

pytest_plugins = ["web_fixtures"]
ATOM = "{http://www.w3.org/2005/Atom}"


def _publish(services, numbers: range, event_days: list[int] = ()) -> None:  # type: ignore[no-untyped-def]
    """Sent issues with these numbers; the last carries events `event_days` from today."""
    today = utcnow().date()
    with services.session() as session:
        org = orgs.get(session, "hu") if session.get(Issue, 1) else orgs.add(session, "hu", "広島大学")
        events = [items.submit(session, org, "event", {"title": f"催し{d}", "venue": "広島",
                                                        "date": str(today + dt.timedelta(days=d))})
                  for d in event_days]
        for number in numbers:
            issue = Issue(number=number, title=f"第{number}号", status="sent",
                          sent_at=utcnow() - dt.timedelta(days=100 - number))
            html = "<p>x</p>" * 5000  # ~40 KB, as a real issue
            issue.renderings.append(Rendering(lang="ja", subject=f"件名{number}", html=html, text="x"))
            if number == numbers[-1]:
                issue.entries.extend(IssueItem(item=item, position=n) for n, item in enumerate(events))
            session.add(issue)


@pytest.fixture
def bounded(config: Config):  # type: ignore[no-untyped-def]
    services = make_services(config.replace(web=WebConfig(feed_entries=3, calendar_past_days=30,
                                                          calendar_max_events=4)))
    app = create_app(services)
    live = LiveServer(app)
    yield live, services
    live.close()
    app.extensions["mailmag"].mailer.close()
    services.close()


def test_the_archive_list_never_reads_a_renderings_html(bounded):
    live, services = bounded
    _publish(services, range(1, 6))
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(services.engine, "before_cursor_execute", listener)
    try:
        page = Client(live.url).get("/archive/")
    finally:
        event.remove(services.engine, "before_cursor_execute", listener)
    assert page.status == 200 and all(f"件名{n}" in page.text for n in range(1, 6))
    assert statements and not any("renderings.html" in s for s in statements)


def test_the_feed_is_bounded_and_answers_conditional_requests(bounded):
    live, services = bounded
    _publish(services, range(1, 6))
    client = Client(live.url)
    reply = client.get("/feed.atom")
    titles = [e.findtext(f"{ATOM}title") for e in ET.fromstring(reply.body).findall(f"{ATOM}entry")]
    assert titles == ["件名5", "件名4", "件名3"]  # [web] feed_entries = 3
    tag, modified = reply.headers["ETag"], reply.headers["Last-Modified"]
    again = client.request("GET", "/feed.atom", headers={"If-None-Match": tag})
    assert (again.status, again.body, again.headers["ETag"]) == (304, b"", tag)
    assert client.request("GET", "/feed.atom", headers={"If-Modified-Since": modified}).status == 304
    _publish(services, range(6, 7))
    fresh = client.request("GET", "/feed.atom", headers={"If-None-Match": tag})
    assert fresh.status == 200 and fresh.headers["ETag"] != tag
    assert ET.fromstring(fresh.body).findall(f"{ATOM}entry")[0].findtext(f"{ATOM}title") == "件名6"


def test_the_calendar_holds_a_recent_window_at_most_its_count_and_answers_304(bounded):
    live, services = bounded
    _publish(services, range(1, 3), event_days=[-400, -31, -29, 0, 3, 10, 20, 40])
    client = Client(live.url)
    reply = client.get("/events.ics")
    summaries = [str(e["SUMMARY"]) for e in icalendar.Calendar.from_ical(reply.body).walk("VEVENT")]
    assert summaries == ["催し-29", "催し0", "催し3", "催し10"]  # 30 days back at most, 4 events
    again = client.request("GET", "/events.ics", headers={"If-None-Match": reply.headers["ETag"]})
    assert again.status == 304 and again.body == b""


def test_an_archived_issue_answers_304_while_its_rendering_is_the_same(bounded):
    """helper-70: the README said the archive answers 304, and an issue's page never did; a
    reader's browser fetched ~40 KB again for a page that cannot change once sent."""
    live, services = bounded
    _publish(services, range(1, 3))
    client = Client(live.url)
    reply = client.get("/archive/2")
    assert reply.status == 200 and "x" in reply.text
    tag, modified = reply.headers["ETag"], reply.headers["Last-Modified"]
    again = client.request("GET", "/archive/2", headers={"If-None-Match": tag})
    assert (again.status, again.body, again.headers["ETag"]) == (304, b"", tag)
    assert client.request("GET", "/archive/2", headers={"If-Modified-Since": modified}).status == 304
    assert client.request("GET", "/archive/1", headers={"If-None-Match": tag}).status == 200
    with services.session() as session:  # rendered again (a cancelled issue, edited and sent on)
        rendering = session.query(Rendering).join(Issue).filter(Issue.number == 2).one()
        rendering.html, rendering.rendered_at = "<p>改訂版</p>", utcnow() + dt.timedelta(seconds=5)
    fresh = client.request("GET", "/archive/2", headers={"If-None-Match": tag})
    assert fresh.status == 200 and "改訂版" in fresh.text and fresh.headers["ETag"] != tag


@pytest.mark.parametrize("path", ["/archive/99999999999999999999999", "/archive/2147483648",
                                  "/archive/9223372036854775808"])
def test_an_issue_number_out_of_range_is_404(live, path):
    assert Client(live.url).get(path).status == 404


def test_serve_refuses_a_body_over_its_limit_before_the_app(mailmag, config_file, tmp_path):
    settings = config_file.read_text(encoding="utf-8") + "\n[web]\nmax_request_body_size = 4096\n"
    config_file.write_text(settings, encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "mailmag", "--config", str(config_file), "serve", "--port", "0"],
        stderr=subprocess.PIPE, text=True, env={"MAILMAG_SECRET_KEY": SECRET, "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        match = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", process.stderr.readline())
        assert match
        client = Client(match.group(1))
        big = client.post("/subscribe", {"email": "x@example.jp", "name": "x" * 10_000})
        small = client.post("/subscribe", {"email": "x@example.jp"})
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stderr.close()
    assert big.status == 413
    assert small.status == 400  # read by the app: no CSRF token
