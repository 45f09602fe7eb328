"""The public archive: sent issues (web versions without personal links), Atom, iCalendar of events.

Public pages stay cheap whatever the archive's size: listings read only the columns they
show (never a rendering's HTML), the feed and the calendar are bounded ([web] feed_entries,
calendar_past_days, calendar_max_events) and answer If-None-Match / If-Modified-Since
with 304 after one aggregate query.

An issue is public once its send started and it has its 第N号 (sending, sent, or cancelled
after some of it went). Its web version is the
frozen rendering with the per-recipient placeholders filled with nothing personal: no name,
and the subscribe page where the mail has its unsubscribe and preferences links. The
calendar lists the event items of those issues only: what is still under review or
approved but unsent is not public yet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import unicodedata
from html import escape
from typing import Any

import icalendar
from feedgen.feed import FeedGenerator
from flask import Blueprint, Response, abort, g, render_template, request
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, selectinload

from mailmag import links, placeholders
from mailmag.models import Issue, IssueItem, Item, Rendering, utcnow
from mailmag.web import security, state
from mailmag.web.i18n import pick_lang

bp = Blueprint("archive", __name__)
# A 第N号 whose sending started: also a cancelled one that reached someone (it keeps its number;
# one that reached nobody gave it back): status in PUBLIC and a number.
PUBLIC = ("sending", "sent", "cancelled")
_TIMES = re.compile(r"(\d{1,2}):(\d{2})(?:\s*[〜~\-–—ー]\s*(\d{1,2}):(\d{2}))?")
MAX_NUMBER = 2**31 - 1  # the column's range: a larger number in a URL is simply not an issue


@dataclasses.dataclass(frozen=True)
class _Listed:
    """What a listing shows of an issue: never its HTML or text (they are ~40 KB each)."""

    number: int
    title: str
    when: dt.datetime


def _listed(session: Session, lang: str, limit: int | None = None) -> list[_Listed]:
    """Public issues newest first, each with the subject of its `lang` rendering (or another)."""
    query = (select(Issue.id, Issue.number, Issue.title, Issue.sent_at, Issue.rendered_at, Issue.created_at)
             .where(Issue.status.in_(PUBLIC), Issue.number.is_not(None)).order_by(Issue.number.desc()))
    rows = session.execute(query.limit(limit) if limit else query).all()
    subjects: dict[int, dict[str, str]] = {}
    if rows:
        found = session.execute(select(Rendering.issue_id, Rendering.lang, Rendering.subject)
                                .where(Rendering.issue_id.in_([r.id for r in rows])))
        for issue_id, rendering_lang, subject in found:
            subjects.setdefault(issue_id, {})[rendering_lang] = subject
    default = state().config.mailmag.language
    return [_Listed(r.number, _pick(subjects.get(r.id, {}), lang, default) or r.title,
                    r.sent_at or r.rendered_at or r.created_at) for r in rows]


def _pick(by_lang: dict[str, Any], lang: str, default: str) -> Any:
    """The value for `lang`, else for the default language, else any."""
    return by_lang.get(lang) or by_lang.get(default) or next(iter(by_lang.values()), None)


# --- conditional requests ------------------------------------------------------------------


def _not_modified(tag: str, modified: dt.datetime | None) -> Response | None:
    """A 304 when the client's copy (If-None-Match, else If-Modified-Since) is current."""
    if request.if_none_match:
        current = request.if_none_match.contains(tag)
    else:
        since = request.if_modified_since
        current = since is not None and modified is not None and modified.replace(microsecond=0) <= since
    return _validated(Response(status=304), tag, modified) if current else None


def _validated(response: Response, tag: str, modified: dt.datetime | None) -> Response:
    response.set_etag(tag)
    if modified is not None:
        response.last_modified = modified
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def _tag(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


# --- pages and feeds -----------------------------------------------------------------------


def _public_state(session: Session) -> tuple[int, int | None, dt.datetime | None]:
    """(count, latest number, latest send time) of the public issues: what the listings show."""
    count, latest, modified = session.execute(
        select(func.count(), func.max(Issue.number), func.max(Issue.sent_at))
        .where(Issue.status.in_(PUBLIC), Issue.number.is_not(None))).one()
    return count, latest, modified


@bp.get("/archive/")
def index() -> Any:
    g.lang = lang = pick_lang(request.args.get("lang"), default=state().config.mailmag.language)
    zone = state().config.zone
    with state().services.read_session() as session:
        count, latest, modified = _public_state(session)
        tag = _tag("archive", count, latest, modified, lang)
        unchanged = _not_modified(tag, modified)
        if unchanged is not None:
            return unchanged

        def page() -> bytes:
            rows = [{"number": i.number, "title": i.title, "date": i.when.astimezone(zone).date()}
                    for i in _listed(session, lang)]
            return render_template("archive.html.j2", issues=rows).encode()

        body = state().pages.get(tag, page)
    return _validated(Response(body, content_type="text/html; charset=utf-8"), tag, modified)


@bp.get("/archive/<int:number>")
def issue(number: int) -> Any:
    """The issue as mailed, without anything personal (the page's CSP allows its inline CSS).
    Its rendering is frozen, so a reader's copy is current while the rendering is the same."""
    if number > MAX_NUMBER:
        abort(404)
    lang = pick_lang(request.args.get("lang"), default=state().config.mailmag.language)
    config = state().config
    with state().services.read_session() as session:
        public = and_(Issue.number == number, Issue.status.in_(PUBLIC), Issue.number.is_not(None))
        found = {code: (id_, at) for code, id_, at in session.execute(
            select(Rendering.lang, Rendering.id, Rendering.rendered_at)
            .join(Issue, Issue.id == Rendering.issue_id).where(public))}
        shown = _pick({code: code for code in found}, lang, config.mailmag.language)
        if shown is None and number > (_public_state(session)[1] or 0):
            # a test mail's Web版 link names the number its issue will have once it is sent
            g.lang = lang
            return render_template("error.html.j2", status=404, reason="not_yet", number=number), 404
        if shown is None:
            abort(404)
        rendering_id, rendered_at = found[shown]
        tag = _tag("issue", rendering_id, rendered_at, config.mailmag.base_url, config.sender.list_name)
        unchanged = _not_modified(tag, rendered_at)
        if unchanged is not None:
            return unchanged
        html = session.scalar(select(Rendering.html).where(Rendering.id == rendering_id)) or ""
        page = web_version(html, config.mailmag.base_url, shown, config.sender.list_name)
    security.use_issue_csp()
    return _validated(Response(page, content_type="text/html; charset=utf-8"), tag, rendered_at)


_PERSONAL = re.compile(r"<!-- mm:personal -->.*?<!-- /mm:personal -->", re.DOTALL)
# "Not shown well? Read the web version": the web version itself leaves it out
_MAIL_ONLY = re.compile(r"<!-- mm:mail-only -->.*?<!-- /mm:mail-only -->", re.DOTALL)
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
    html = _MAIL_ONLY.sub("", _PERSONAL.sub(lambda _match: note, html))
    values = {"name": "", "email": "", "unsubscribe_url": subscribe, "preferences_url": subscribe}
    return placeholders.substitute(html, values, escape=True)


@bp.get("/feed.atom")
def atom() -> Response:
    """The latest [web] feed_entries public issues; 304 for a reader whose copy is current."""
    config = state().config
    size = config.web.feed_entries
    with state().services.read_session() as session:
        count, latest, modified = _public_state(session)
        tag = _tag("feed", count, latest, modified, size, config.mailmag.language)
        unchanged = _not_modified(tag, modified)
        if unchanged is not None:
            return unchanged
        body = state().pages.get(tag, lambda: _feed(config, _listed(session, config.mailmag.language, size)))
    return _validated(Response(body, content_type="application/atom+xml; charset=utf-8"), tag, modified)


def _feed(config: Any, listed: list[_Listed]) -> bytes:
    base = config.mailmag.base_url
    feed = FeedGenerator()
    feed.id(links.archive_url(base))
    feed.title(config.sender.list_name)
    feed.author({"name": config.sender.name})
    feed.link(href=links.archive_url(base), rel="alternate")
    feed.link(href=base.rstrip("/") + "/feed.atom", rel="self")
    feed.language(config.mailmag.language)
    for issue in reversed(listed):  # feedgen puts the last added entry first
        entry = feed.add_entry()
        entry.id(links.archive_url(base, issue.number))
        entry.title(issue.title)
        entry.link(href=links.archive_url(base, issue.number))
        entry.updated(issue.when)
        entry.published(issue.when)
    if listed:
        feed.updated(listed[0].when)
    return feed.atom_str(pretty=True)


@bp.get("/events.ics")
def events() -> Response:
    """The event items of the published issues from [web] calendar_past_days ago on, at most
    [web] calendar_max_events of them, soonest first; 304 for a calendar whose copy is current."""
    config = state().config
    since = utcnow().astimezone(config.zone).date() - dt.timedelta(days=config.web.calendar_past_days)
    with state().services.read_session() as session:
        count, modified, latest = session.execute(
            select(func.count(Item.id.distinct()), func.max(Item.updated_at), func.max(Issue.number))
            .select_from(Item).join(IssueItem, IssueItem.item_id == Item.id)
            .join(Issue, Issue.id == IssueItem.issue_id).where(*_public_events(since))).one()
        tag = _tag("ics", count, modified, latest, since, config.web.calendar_max_events)
        unchanged = _not_modified(tag, modified)
        if unchanged is not None:
            return unchanged
        body = state().pages.get(tag, lambda: _calendar(config, _published_events(
            session, since, config.web.calendar_max_events)))
    response = Response(body, content_type="text/calendar; charset=utf-8",
                        headers={"Content-Disposition": 'inline; filename="events.ics"'})
    return _validated(response, tag, modified)


def _calendar(config: Any, events: list[tuple[Item, int]]) -> bytes:
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//mailmag//council events//JA")
    calendar.add("version", "2.0")
    calendar.add("x-wr-calname", config.sender.list_name)
    calendar.add("x-wr-timezone", config.mailmag.timezone)
    for item, number in events:
        calendar.add_component(_vevent(item, number))
    calendar.add_missing_timezones()
    return calendar.to_ical()


def _public_events(since: dt.date) -> tuple[Any, ...]:
    return (Item.kind == "event", Item.date.is_not(None), Item.date >= since,
            Issue.status.in_(PUBLIC), Issue.number.is_not(None))


def _published_events(session: Session, since: dt.date, limit: int) -> list[tuple[Item, int]]:
    """(event item, the first public issue that carried it), soonest first, at most `limit`."""
    first_issue = func.min(Issue.number).label("number")
    chosen = (select(Item.id, first_issue).join(IssueItem, IssueItem.item_id == Item.id)
              .join(Issue, Issue.id == IssueItem.issue_id).where(*_public_events(since))
              .group_by(Item.id, Item.date).order_by(Item.date, Item.id).limit(limit).subquery())
    rows = session.execute(
        select(Item, chosen.c.number).join(chosen, chosen.c.id == Item.id)
        .options(selectinload(Item.org)).order_by(Item.date, Item.id)
    ).all()
    return [(item, number) for item, number in rows]


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
    url = links.as_uri(item.url) if item.url else ""  # a URI, as RFC 5545 wants, and clickable
    if url:
        event.add("url", url)
    lines = [item.org.name, item.time_text, item.fee, url, archive]
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
