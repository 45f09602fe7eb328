"""The public archive: sent issues (web versions without personal links), Atom, iCalendar of events.

An issue is public once its send started and it has its 第N号 (sending, sent, or cancelled
after some of it went). Its web version is the
frozen rendering with the per-recipient placeholders filled with nothing personal: no name,
and the subscribe page where the mail has its unsubscribe and preferences links. The
calendar lists the event items of those issues only: what is still under review or
approved but unsent is not public yet.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from html import escape
from typing import Any

import icalendar
from feedgen.feed import FeedGenerator
from flask import Blueprint, Response, abort, g, render_template, request
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from mailmag import links, personalize
from mailmag.models import Issue, IssueItem, Item, Rendering
from mailmag.web import security, state
from mailmag.web.i18n import pick_lang

bp = Blueprint("archive", __name__)
# A 第N号 whose sending started: also a cancelled one that reached someone (it keeps its number;
# one that reached nobody gave it back). Use with `Issue.number.is_not(None)`.
PUBLIC = ("sending", "sent", "cancelled")
FEED_SIZE = 50
_TIMES = re.compile(r"(\d{1,2}):(\d{2})(?:\s*[〜~\-–—ー]\s*(\d{1,2}):(\d{2}))?")


def _issues(session: Session, limit: int | None = None) -> list[Issue]:
    query = (select(Issue).where(Issue.status.in_(PUBLIC), Issue.number.is_not(None))
             .order_by(Issue.number.desc()).options(selectinload(Issue.renderings)))
    return list(session.scalars(query.limit(limit) if limit else query))


def _rendering(issue: Issue, lang: str) -> Rendering | None:
    by_lang = {r.lang: r for r in issue.renderings}
    fallback = next(iter(by_lang.values()), None)
    return by_lang.get(lang) or by_lang.get(state().config.mailmag.language) or fallback


def _when(issue: Issue) -> dt.datetime:
    return issue.sent_at or issue.rendered_at or issue.created_at


@bp.get("/archive/")
def index() -> Any:
    g.lang = lang = pick_lang(request.args.get("lang"), default=state().config.mailmag.language)
    zone = state().config.zone
    with state().services.read_session() as session:
        rows = [
            {"number": i.number, "title": (r.subject if (r := _rendering(i, lang)) else i.title),
             "date": _when(i).astimezone(zone).date()}
            for i in _issues(session)
        ]
    return render_template("archive.html.j2", issues=rows)


@bp.get("/archive/<int:number>")
def issue(number: int) -> Any:
    """The issue as mailed, without anything personal (the page's CSP allows its inline CSS)."""
    lang = pick_lang(request.args.get("lang"), default=state().config.mailmag.language)
    with state().services.read_session() as session:
        found = session.scalar(select(Issue).where(Issue.number == number, Issue.status.in_(PUBLIC),
                                                   Issue.number.is_not(None)))
        rendering = _rendering(found, lang) if found is not None else None
        if rendering is None:
            abort(404)
        config = state().config
        page = web_version(rendering.html, config.mailmag.base_url, rendering.lang, config.sender.list_name)
    security.use_issue_csp()
    return Response(page, content_type="text/html; charset=utf-8")


_PERSONAL = re.compile(r"<!-- mm:personal -->.*?<!-- /mm:personal -->", re.DOTALL)
_ARCHIVE_NOTE = {
    "ja": ('<p class="archive-note">このページは「{list}」のバックナンバーです。'
           '配信停止と配信設定の変更は、お届けしたメールの末尾にあるリンクから行えます。'
           '購読のお申し込みは<a href="{subscribe}">こちら</a>。</p>'),
    "en": ('<p class="archive-note">This page is a past issue of {list}. To unsubscribe or change your '
           'preferences, use the links at the end of the mail you received. '
           'To subscribe, <a href="{subscribe}">use this form</a>.</p>'),
}


def web_version(html: str, base_url: str, lang: str, list_name: str) -> str:
    """A rendering's HTML for everyone: no name, no address, no personal link.

    The footer's recipient part (between mm:personal comments) becomes a note saying the
    unsubscribe link is in the reader's own mail; templates without the markers still get
    the subscribe page where the mail has its personal links.
    """
    subscribe = links.subscribe_url(base_url)
    note = _ARCHIVE_NOTE.get(lang, _ARCHIVE_NOTE["ja"]).format(
        list=escape(list_name), subscribe=escape(subscribe))
    html = _PERSONAL.sub(lambda _match: note, html)
    values = {"name": "", "email": "", "unsubscribe_url": subscribe, "preferences_url": subscribe}
    return personalize.substitute(html, values, escape=True)


@bp.get("/feed.atom")
def atom() -> Response:
    config = state().config
    base = config.mailmag.base_url
    feed = FeedGenerator()
    feed.id(links.archive_url(base))
    feed.title(config.sender.list_name)
    feed.author({"name": config.sender.name})
    feed.link(href=links.archive_url(base), rel="alternate")
    feed.link(href=base.rstrip("/") + "/feed.atom", rel="self")
    feed.language(config.mailmag.language)
    with state().services.read_session() as session:
        issues = _issues(session, FEED_SIZE)
        for issue in reversed(issues):  # feedgen puts the last added entry first
            rendering = _rendering(issue, config.mailmag.language)
            entry = feed.add_entry()
            entry.id(links.archive_url(base, issue.number))
            entry.title(rendering.subject if rendering else issue.title)
            entry.link(href=links.archive_url(base, issue.number))
            entry.updated(_when(issue))
            entry.published(_when(issue))
    if issues:
        feed.updated(_when(issues[0]))
    return Response(feed.atom_str(pretty=True), content_type="application/atom+xml; charset=utf-8")


@bp.get("/events.ics")
def events() -> Response:
    """The event items of the published issues, for subscribers' calendars."""
    config = state().config
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//mailmag//council events//JA")
    calendar.add("version", "2.0")
    calendar.add("x-wr-calname", config.sender.list_name)
    calendar.add("x-wr-timezone", config.mailmag.timezone)
    with state().services.read_session() as session:
        for item, number in _published_events(session):
            calendar.add_component(_vevent(item, number))
    calendar.add_missing_timezones()
    return Response(calendar.to_ical(), content_type="text/calendar; charset=utf-8",
                    headers={"Content-Disposition": 'inline; filename="events.ics"'})


def _published_events(session: Session) -> list[tuple[Item, int]]:
    """(event item, the first public issue that carried it), soonest first."""
    rows = session.execute(
        select(Item, Issue.number)
        .join(IssueItem, IssueItem.item_id == Item.id)
        .join(Issue, Issue.id == IssueItem.issue_id)
        .where(Item.kind == "event", Item.date.is_not(None), Issue.status.in_(PUBLIC),
               Issue.number.is_not(None))
        .options(selectinload(Item.org))
        .order_by(Item.date, Item.id, Issue.number)
    ).all()
    first: dict[int, tuple[Item, int]] = {}
    for item, number in rows:
        if number is not None:  # the WHERE above: public issues have numbers
            first.setdefault(item.id, (item, number))
    return list(first.values())


def _vevent(item: Item, number: int) -> icalendar.Event:
    config = state().config
    archive = links.archive_url(config.mailmag.base_url, number)
    event = icalendar.Event()
    event.add("uid", f"item-{item.id}@{config.sender.list_id}")
    event.add("dtstamp", item.updated_at)
    event.add("summary", item.title)
    assert item.date is not None  # _published_events selects dated events only
    start, end = _span(item.date, item.end_date, item.time_text, config.zone)
    event.add("dtstart", start)
    if end is not None:
        event.add("dtend", end)
    if item.venue:
        event.add("location", item.venue)
    if item.url:
        event.add("url", item.url)
    lines = [item.org.name, item.time_text, item.fee, item.url, archive]
    event.add("description", "\n".join(line for line in lines if line))
    return event


def _span(day: dt.date, last: dt.date | None, time_text: str, zone: Any
          ) -> tuple[dt.date | dt.datetime, dt.date | dt.datetime | None]:
    """A one-day event with '13:30〜17:00' gets those times; anything else is all-day."""
    times = _TIMES.search(unicodedata.normalize("NFKC", time_text or ""))
    if times and last in (None, day):
        start = _at(day, int(times[1]), int(times[2]), zone)
        end = _at(day, int(times[3]), int(times[4]), zone) if times[3] else None
        if start is not None:
            return start, end if end is not None and end > start else None
    return day, (last or day) + dt.timedelta(days=1)


def _at(day: dt.date, hour: int, minute: int, zone: Any) -> dt.datetime | None:
    if hour > 23 or minute > 59:
        return None
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=zone)
