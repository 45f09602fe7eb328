"""Issues: compose from approved items, render once and freeze, re-render, preview, list.

An issue is rendered when it is composed and again only when asked (`issues render N`):
the stored Renderings are exactly what `issues preview` shows and what the dispatcher sends,
with only the personalize placeholders left to fill in per recipient.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailmag import personalize, text_ja
from mailmag.config import Config
from mailmag.content import items as items_mod
from mailmag.content import markup, render
from mailmag.errors import ConfigError, InvalidInput, NotFound, StateError
from mailmag.models import ITEM_KINDS, Issue, IssueItem, Item, Rendering, utcnow

RENDERABLE = ("draft", "scheduled")
FORMATS = ("html", "text")


@dataclass
class Composed:
    """An issue just composed or rendered again, and what the secretariat should look at."""

    issue: Issue
    warnings: list[str] = field(default_factory=list)


def get(session: Session, number: int) -> Issue:
    issue = session.scalar(select(Issue).where(Issue.number == number))
    if issue is None:
        raise NotFound(f"issue {number} does not exist (see mailmag issues list)")
    return issue


def listing(session: Session) -> list[Issue]:
    """Every issue, newest first."""
    return list(session.scalars(select(Issue).order_by(Issue.number.desc())))


def compose(session: Session, config: Config, *, title: str | None = None,
            item_ids: Sequence[int] = (), today: dt.date | None = None) -> Composed:
    """A new draft issue from the given items, or every approved item not yet in an issue."""
    today = today or dt.datetime.now(config.zone).date()
    chosen, warnings = _chosen_items(session, item_ids)
    ordered = order_items(chosen, config.compose.kind_order, keep_given=bool(item_ids))
    number = (session.scalar(select(func.max(Issue.number))) or 0) + 1
    custom = text_ja.normalize_line(title) if title is not None else None
    if custom is not None and not custom:
        raise InvalidInput("the --title is empty: give a title or leave the option out")
    editions = _render(config, render.IssueSpec(number, custom, today, ordered))
    now = utcnow()
    issue = Issue(number=number, title=editions[0].title, status="draft", rendered_at=now)
    issue.entries = [IssueItem(item=item, position=i) for i, item in enumerate(ordered)]
    issue.renderings = [_rendering(edition, now) for edition in editions]
    session.add(issue)
    try:
        session.flush()
    except IntegrityError as exc:
        raise StateError(f"issue {number} was composed at the same moment elsewhere; run the command again") \
            from exc
    return Composed(issue, warnings + check(config, ordered, editions, today))


def rerender(session: Session, config: Config, number: int, *, today: dt.date | None = None) -> Composed:
    """Render a draft or scheduled issue again from its items' current text."""
    today = today or dt.datetime.now(config.zone).date()
    issue = get(session, number)
    if issue.status not in RENDERABLE:
        raise StateError(f"issue {number} is {issue.status}: only a draft or scheduled issue can be rendered")
    ordered = [entry.item for entry in issue.entries]
    default_title = render.titles(config, render.IssueSpec(number, None, today, ordered), "ja")[0]
    custom = None if issue.title == default_title else issue.title
    editions = _render(config, render.IssueSpec(number, custom, today, ordered))
    now = utcnow()
    by_lang = {r.lang: r for r in issue.renderings}
    for edition in editions:
        existing = by_lang.pop(edition.lang, None)
        if existing is None:
            issue.renderings.append(_rendering(edition, now))
        else:
            existing.subject, existing.html, existing.text = edition.subject, edition.html, edition.text
            existing.rendered_at = now
    for stale in by_lang.values():  # an English template that was removed since
        issue.renderings.remove(stale)
    issue.title, issue.rendered_at = editions[0].title, now
    session.flush()
    unapproved = [f"item {i.id} 「{i.title}」 is {i.status}, not approved: approve it again before sending"
                  for i in ordered if i.status not in ("approved", "published")]
    return Composed(issue, unapproved + check(config, ordered, editions, today))


def preview(session: Session, config: Config, number: int, fmt: str = "html", lang: str | None = None) -> str:
    """The stored rendering with a sample recipient's values in the placeholders."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown preview format {fmt!r}: use html or text")
    issue = get(session, number)
    renderings = {r.lang: r for r in issue.renderings}
    wanted = lang or (config.mailmag.language if config.mailmag.language in renderings else "ja")
    rendering = renderings.get(wanted)
    if rendering is None:
        raise NotFound(
            f"issue {number} has no {wanted} edition: add templates/issue.{wanted}.html.j2 and "
            f"issue.{wanted}.txt.j2, then run mailmag issues render {number}"
        )
    values = personalize.sample_values(config.mailmag.base_url)
    if fmt == "html":
        return personalize.substitute(rendering.html, values, escape=True)
    return personalize.substitute(rendering.text, values, escape=False)


# --- composing --------------------------------------------------------------------------------


def _chosen_items(session: Session, item_ids: Sequence[int]) -> tuple[list[Item], list[str]]:
    """The named items (approved or published), or every approved item in no live issue."""
    if not item_ids:
        chosen = list(session.scalars(
            select(Item).where(Item.status == "approved", Item.id.not_in(_items_in_live_issues()))
            .order_by(Item.id)
        ))
        if not chosen:
            raise InvalidInput(
                "there are no approved items that are not already in an issue: approve some with "
                "mailmag items approve ID, or name items with --item"
            )
        return chosen, []
    chosen = [items_mod.get(session, item_id) for item_id in dict.fromkeys(item_ids)]
    for item in chosen:
        if item.status not in ("approved", "published"):
            raise StateError(f"item {item.id} is {item.status}: approve it first (mailmag items approve "
                             f"{item.id}); no issue was made")
    return chosen, _already_in_issues(session, chosen)


def _items_in_live_issues():  # type: ignore[no-untyped-def]
    return select(IssueItem.item_id).join(Issue).where(Issue.status != "cancelled")


def _already_in_issues(session: Session, chosen: list[Item]) -> list[str]:
    rows = session.execute(
        select(IssueItem.item_id, Issue.number, Issue.status).join(Issue)
        .where(Issue.status != "cancelled", IssueItem.item_id.in_([i.id for i in chosen]))
        .order_by(Issue.number)
    )
    return [f"item {item_id} is also in issue {number} ({status})" for item_id, number, status in rows]


def order_items(chosen: Sequence[Item], kind_order: Sequence[str], *, keep_given: bool) -> list[Item]:
    """Grouped by kind in the configured order; within a kind as given, else soonest first."""
    unknown = [kind for kind in kind_order if kind not in ITEM_KINDS]
    if unknown:
        raise ConfigError(f"[compose] kind_order names {unknown[0]!r}: use {', '.join(ITEM_KINDS)}")
    order = list(dict.fromkeys([*kind_order, *ITEM_KINDS]))
    given = {item.id: position for position, item in enumerate(chosen)}

    def key(item: Item) -> tuple:
        when = item.date or item.deadline or dt.date.max
        within = (given[item.id],) if keep_given else (when, item.id)
        return (order.index(item.kind), *within)

    return sorted(chosen, key=key)


def _render(config: Config, spec: render.IssueSpec) -> list[render.Edition]:
    env = render.make_environment(config.templates_path)
    return render.render_issue(env, config, spec)


def _rendering(edition: render.Edition, now: dt.datetime) -> Rendering:
    return Rendering(lang=edition.lang, subject=edition.subject, html=edition.html, text=edition.text,
                     rendered_at=now)


# --- warnings ---------------------------------------------------------------------------------

_HTTP = re.compile(r"http://[A-Za-z0-9\-._~:/?#\[\]@!$&*+,;=%]+")  # up to a ')' or a Japanese character
_HREF = re.compile(r'href="([^"]+)"')


def check(config: Config, ordered: Sequence[Item], editions: Sequence[render.Edition],
          today: dt.date) -> list[str]:
    """What compose lets through but the secretariat should look at before sending."""
    warnings = [w for item in ordered for w in _item_warnings(item, today)]
    warnings += _character_warnings(ordered, editions)
    limit = config.compose.html_size_limit_kb
    sample = personalize.sample_values(config.mailmag.base_url)
    for edition in editions:
        size = len(personalize.substitute(edition.html, sample, escape=True).encode("utf-8"))
        if size > limit * 1024:
            warnings.append(
                f"the {edition.lang} HTML is {size / 1024:.0f} KB, over {limit} KB: Gmail clips it "
                "(\"[Message clipped]\"); shorten the items or move some to the web"
            )
    return warnings


def _item_warnings(item: Item, today: dt.date) -> list[str]:
    name = f"item {item.id} 「{item.title}」"
    needed = items_mod.required_fields(item.kind)
    warnings = [f"{name} ({items_mod.KIND_LABELS[item.kind]}) has no {attr}"
                for attr in ("date", "deadline") if attr in needed and getattr(item, attr) is None]
    warnings += [f"{name} links to {url}, which is not https" for url in _insecure_links(item)]
    last_day = item.end_date or item.date
    if item.kind == "event" and last_day is not None and last_day < today:
        warnings.append(f"{name}: the event on {text_ja.format_date_ja(last_day)} is already past")
    if item.kind in ("event", "exhibitors") and item.deadline is not None and item.deadline < today:
        warnings.append(f"{name}: the deadline {text_ja.format_date_ja(item.deadline)} has passed")
    return warnings


# Item fields that reach the mail, and whether a warning quotes the whole normalized value.
_TEXT_FIELDS = {"title": True, "event_name": True, "venue": True, "time_text": True, "fee": True,
                "body": False, "how_to_apply": False}


def _character_warnings(ordered: Sequence[Item], editions: Sequence[render.Edition]) -> list[str]:
    """Characters that render poorly (①, ㈱, ㌔, ｶﾅ …), each with the form to use instead."""
    warnings: list[str] = []
    seen: set[str] = set()
    for item in ordered:
        for attr, quote in _TEXT_FIELDS.items():
            value = getattr(item, attr) or ""
            pairs = text_ja.poor_characters(value)
            seen.update(chars for chars, _ in pairs)
            if pairs:
                where = f"item {item.id} 「{item.title}」: the {attr.replace('_', ' ')}"
                warnings.append(_poor_warning(where, value, pairs, quote))
    for edition in editions:
        pairs = [p for p in text_ja.poor_characters(edition.subject) if p[0] not in seen]
        if pairs:
            warnings.append(_poor_warning(f"the {edition.lang} subject", edition.subject, pairs, True))
    return warnings


def _poor_warning(where: str, value: str, pairs: list[tuple[str, str]], quote: bool) -> str:
    shown = ", ".join(f"{chars} → {better}" for chars, better in pairs)
    offer = f"; normalized: 「{text_ja.suggest_display(value)}」" if quote else ""
    return f"{where} has characters some mail clients show poorly ({shown}){offer}"


def _insecure_links(item: Item) -> list[str]:
    found = [item.url] if item.url.startswith("http://") else []
    for source in (item.body, item.how_to_apply):
        hrefs = (html.unescape(h) for h in _HREF.findall(markup.to_html(source or "")))
        found += [h for h in hrefs if h.startswith("http://")]
        found += _HTTP.findall(source or "")
    return list(dict.fromkeys(url.rstrip(".,;:)") for url in found))
