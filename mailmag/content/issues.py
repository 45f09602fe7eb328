"""Issues: compose from approved items, render once and freeze, re-render, preview, list,
delete a draft, start and cancel a send (the issue's state changes live here).

An issue is rendered when it is composed and again only when asked (`issues render N`):
the stored Renderings are exactly what `issues preview` shows and what the dispatcher sends,
with only the placeholders (mailmag.placeholders) left to fill in per recipient.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Select, func, select
from sqlalchemy import delete as sa_delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailmag import addresses, clock, placeholders, text_ja, topics
from mailmag.config import Config
from mailmag.content import items as items_mod
from mailmag.content import markup, render, transitions
from mailmag.delivery import outbox
from mailmag.errors import ConfigError, Fix, InvalidInput, MailmagError, NotFound, Sentence, StateError
from mailmag.models import (
    ITEM_KINDS,
    STATUS_JA,
    Issue,
    IssueItem,
    Item,
    JobRun,
    Rendering,
    timed_send_job_id,
    utcnow,
)

RENDERABLE = transitions.SENDABLE  # a draft or scheduled issue can be rendered again, and sent
FORMATS = ("html", "text")
# How often starting a send looks again for a free number when another process took it.
NUMBER_ATTEMPTS = 5


@dataclass
class Composed:
    """An issue just composed or rendered again, and what the secretariat should look at."""

    issue: Issue
    warnings: list[Sentence] = field(default_factory=list)

    @property
    def clipped(self) -> list[Sentence]:
        """The warnings that an edition is over the size Gmail clips at, footer and unsubscribe
        link with it: an automatic issue is not sent with one (helper-90)."""
        return [warning for warning in self.warnings if isinstance(warning, Clipped)]


class Clipped(Sentence):
    """An edition's HTML over [compose] html_size_limit_kb."""


@dataclass(frozen=True)
class Cancelled:
    """What `issues cancel` did: unscheduled (a draft again), or stopped with counts."""

    issue: Issue
    unscheduled: bool = False
    not_sent: int = 0  # queued or claimed messages that will not go
    sent: int = 0  # messages that went (sent, or dead: they may have reached the relay)
    dead: int = 0  # of `sent`, those given up on: they may or may not have reached the relay
    in_flight: int = 0  # claimed by a worker when cancelled: what it sends before its next check still goes
    maybe_sent: int = 0  # of `not_sent`, those that may have reached the relay before (marked ambiguous)
    maybe_failed: int = 0  # failed, after the relay may have taken them (a drop after the final dot)
    opted_out: int = 0  # cancelled earlier, one by one: their readers unsubscribed
    items_returned: int = 0  # items approved again (the issue sent nothing)


def get(session: Session, issue_id: int) -> Issue:
    """An issue by its id (what every `issues` command takes; the 第N号 comes at send time)."""
    issue = session.get(Issue, issue_id)
    if issue is None:
        raise NotFound(f"no issue with the id {issue_id}", fixes=[Fix("list_issues")],
                       ja=f"号（ID {issue_id}）はありません")
    return issue


def listing(session: Session) -> list[Issue]:
    """Every issue, newest first."""
    return list(session.scalars(select(Issue).order_by(Issue.id.desc())))


def next_number(session: Session) -> int:
    """The 第N号 the next issue to start sending gets: numbers count what was sent, without gaps."""
    return (session.scalar(select(func.max(Issue.number))) or 0) + 1


def label(issue: Issue) -> str:
    """How messages name an issue: 'issue 3 (第2号)', or 'issue 3' before it has a number."""
    return f"issue {issue.id}" + (f" (第{issue.number}号)" if issue.number is not None else "")


def label_ja(issue: Issue) -> str:
    """`label` in Japanese sentences: '第2号（ID 3）', or '号（ID 3）' before it has a number."""
    return (f"第{issue.number}号" if issue.number is not None else "号") + f"（ID {issue.id}）"


def compose(session: Session, config: Config, *, title: str | None = None,
            item_ids: Sequence[int] = (), topic: str | None = None,
            today: dt.date | None = None, rerun_published: bool = False) -> Composed:
    """A new draft issue from the given items, or every approved item not yet in an issue.
    `rerun_published`: named items may have gone out already (`issues new --item`: an event
    announced again), with a warning; the console offers only items in no issue.

    The draft has no number yet: it is rendered with the number it would get if it were sent
    now, and rendered again at send time only if another issue took that number meanwhile.
    """
    today = today or clock.today(config.zone)
    render.check_real_sender(config)
    topic = topics.check_code(topic, config.topics)
    chosen, warnings = _chosen_items(session, item_ids, rerun_published)
    ordered = order_items(chosen, config.compose.kind_order, keep_given=bool(item_ids))
    number = next_number(session)
    custom = text_ja.normalize_line(title) if title is not None else None
    if custom is not None and not custom:
        raise InvalidInput("the title is empty: give a title, or none for the usual one",
                           ja="タイトルが空です。タイトルを入力するか、いつものタイトルにしてください")
    editions = _render(config, render.IssueSpec(number, custom, today, ordered))
    now = utcnow()
    issue = Issue(number=None, rendered_number=number, title=editions[0].title, topic=topic,
                  status="draft", rendered_at=now)
    issue.entries = [IssueItem(item=item, position=i) for i, item in enumerate(ordered)]
    issue.renderings = [_rendering(edition, now) for edition in editions]
    session.add(issue)
    session.flush()
    return Composed(issue, warnings + check(config, ordered, editions, today))


def rerender(session: Session, config: Config, issue_id: int, *, today: dt.date | None = None) -> Composed:
    """Render a draft or scheduled issue again from its items' current text."""
    today = today or clock.today(config.zone)
    issue = get(session, issue_id)
    if issue.status not in RENDERABLE:
        raise StateError(f"{label(issue)} is {issue.status}: only a draft or scheduled issue can be rendered",
                         ja=f"{label_ja(issue)}は{STATUS_JA[issue.status]}です。作り直せるのは下書きか送信予約済みの号だけです")
    render.check_real_sender(config)
    editions = _render_again(session, config, issue, next_number(session), today)
    ordered = [entry.item for entry in issue.entries]
    return Composed(issue, unapproved_warnings(ordered) + check(config, ordered, editions, today))


def unapproved_warnings(ordered: Sequence[Item]) -> list[Sentence]:
    """An item of the issue that is no longer approved (edited since): sending would refuse it."""
    return [Sentence(f"item {i.id} 「{i.title}」 is {i.status}, not approved: "
                     "approve it again before sending",
                     f"記事（ID {i.id}）「{i.title}」は{STATUS_JA[i.status]}で、承認されていません。"
                     "送信の前にもう一度承認してください")
            for i in ordered if i.status not in ("approved", "published")]


def _render_again(session: Session, config: Config, issue: Issue, number: int,
                  today: dt.date) -> list[render.Edition]:
    """The renderings again with `number`; a custom title stays, a default one follows the number."""
    ordered = [entry.item for entry in issue.entries]
    shown = issue.rendered_number if issue.rendered_number is not None else number
    default_title = render.titles(config, render.IssueSpec(shown, None, today, ordered), "ja")[0]
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
    issue.title, issue.rendered_at, issue.rendered_number = editions[0].title, now, number
    session.flush()
    return editions


def preview(session: Session, config: Config, issue_id: int, fmt: str = "html",
            lang: str | None = None) -> str:
    """The stored rendering with a sample recipient's values in the placeholders."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown preview format {fmt!r}: use html or text",
                           ja=f"プレビューの形式「{fmt}」はありません（html か text です）")
    issue = get(session, issue_id)
    renderings = {r.lang: r for r in issue.renderings}
    wanted = lang or (config.mailmag.language if config.mailmag.language in renderings else "ja")
    rendering = renderings.get(wanted)
    if rendering is None:
        raise NotFound(
            f"issue {issue_id} has no {wanted} edition; add templates/issue.{wanted}.html.j2 and "
            f"issue.{wanted}.txt.j2", fixes=[Fix("render_issue", issue_id)],
            ja=f"号（ID {issue_id}）には{outbox.edition_ja(wanted)}がありません"
               f"（templates/issue.{wanted}.html.j2 と issue.{wanted}.txt.j2 を追加してください）",
        )
    values = placeholders.sample_values(config.mailmag.base_url)
    if fmt == "html":
        return placeholders.substitute(rendering.html, values, escape=True)
    return placeholders.substitute(rendering.text, values, escape=False)


def test_ready(session: Session, config: Config, issue_id: int) -> Issue:
    """`issues test`: the issue with its renderings loaded (no transaction stays open during SMTP);
    test mail goes out with the real sender data too."""
    render.check_real_sender(config)
    issue = get(session, issue_id)
    issue.renderings  # noqa: B018 - loaded now
    return issue


def audience(session: Session, issue: Issue) -> int:
    """Active subscribers the issue would reach now (its topic's, and those without topics)."""
    return outbox.audience_count(session, issue)


def delete(session: Session, issue_id: int) -> Issue:
    """`issues delete`: a draft goes, with its renderings; its items stay approved for the next issue."""
    issue = get(session, issue_id)
    if issue.status == "scheduled":
        raise StateError(f"{label(issue)} is scheduled", fixes=[Fix("unschedule_issue", issue_id)],
                         ja=f"{label_ja(issue)}は送信予約済みです")
    if issue.status != "draft":
        raise StateError(f"{label(issue)} is {issue.status}: only a draft can be deleted; sent and "
                         "cancelled issues stay on record",
                         ja=f"{label_ja(issue)}は{STATUS_JA[issue.status]}です。削除できるのは下書きだけです（送信済み・取り消し済みの号は記録に残ります）")
    # A timed send it once had goes from the history with it (its id is never given again).
    session.execute(sa_delete(JobRun).where(JobRun.job_id == timed_send_job_id(issue.id)))
    session.delete(issue)
    session.flush()
    return issue


# --- sending ----------------------------------------------------------------------------------


def _named(items: list[Item]) -> str:
    """'item 3 「題」', or 'items 3 「題」, 5 「題」' (every one: the operator mends them all at once)."""
    if len(items) == 1:
        return f"item {items[0].id} 「{items[0].title}」"
    return "items " + ", ".join(f"{item.id} 「{item.title}」" for item in items)


def _named_ja(items: list[Item]) -> str:
    return "記事 " + "、".join(f"{item.id}「{item.title}」" for item in items)


def _not_approved(items: list[Item]) -> str:
    statuses = sorted({item.status for item in items})
    edited = " (edited since it was approved?)" if "submitted" in statuses else ""
    verb = "is" if len(items) == 1 else "are"
    return f"{_named(items)} {verb} {' or '.join(statuses)}, not approved{edited}"


def _not_approved_ja(items: list[Item]) -> str:
    statuses = "・".join(STATUS_JA[s] for s in sorted({item.status for item in items}))
    edited = "（承認の後に編集されましたか）" if any(item.status == "submitted" for item in items) else ""
    return f"{_named_ja(items)}は承認されていません（{statuses}）{edited}"


def check_sendable(session: Session, config: Config, issue: Issue, *, allow_empty: bool = False) -> int:
    """The gates before subscribers see anything; returns the audience. Each refusal names the fix."""
    if issue.status not in RENDERABLE:
        raise StateError(f"{label(issue)} is {issue.status}; only a draft or scheduled issue can be sent",
                         ja=f"{label_ja(issue)}は{STATUS_JA[issue.status]}です。送信できるのは下書きか送信予約済みの号だけです")
    if not issue.renderings:
        raise StateError(f"{label(issue)} is not rendered", fixes=[Fix("render_issue", issue.id)],
                         ja=f"{label_ja(issue)}の本文（HTML とテキスト）がまだ作られていません")
    unapproved = [entry.item for entry in issue.entries if entry.item.status not in ("approved", "published")]
    if unapproved:
        approve = Fix("approve_item", unapproved[0].id) if len(unapproved) == 1 else \
            Fix("approve_these", " ".join(str(item.id) for item in unapproved))
        raise StateError(f"{_not_approved(unapproved)}; nothing was sent",
                         fixes=[Fix("review_item", unapproved[0].id), approve, Fix("render_issue", issue.id)],
                         ja=f"{_not_approved_ja(unapproved)}。何も送信していません")
    changed = changed_since_rendering(issue)
    if changed:
        raise StateError(
            f"{_named(changed)} changed after {label(issue)} was rendered; nothing was sent",
            fixes=[Fix("render_issue", issue.id), Fix("preview_issue", issue.id)],
            ja=f"{_named_ja(changed)}は{label_ja(issue)}を作った後に変更されています。何も送信していません",
        )
    render.check_real_sender(config)
    reached = audience(session, issue)
    if reached == 0 and not allow_empty:
        raise StateError(
            f"no active subscriber matches {label(issue)} "
            f"({topics.describe(issue.topic, config.topics)}); nothing was sent",
            fixes=[Fix("add_subscribers")],
            ja=f"{label_ja(issue)}を受け取る読者がいません"
               f"（{topics.describe_ja(issue.topic, config.topics)}）。何も送信していません",
        )
    return reached


def changed_since_rendering(issue: Issue) -> list[Item]:
    """Items of a draft or scheduled issue edited after its rendering: the stored rendering (what
    preview and test mail show) still has their old text. A sent issue keeps what it sent."""
    if issue.status not in RENDERABLE or issue.rendered_at is None:
        return []
    rendered_at = issue.rendered_at
    return [entry.item for entry in issue.entries if entry.item.updated_at > rendered_at]


def number_warning(session: Session, issue: Issue) -> Sentence | None:
    """A waiting issue's rendering shows the 第N号 that was next when it was rendered; another
    issue (an automatic one, say) may have started sending with it since (helper-70: the preview
    showed a number already taken). Sending renders it again with its own."""
    shown = issue.rendered_number
    if issue.status not in RENDERABLE or shown is None or (coming := next_number(session)) <= shown:
        return None
    return Sentence(f"{label(issue)} shows 第{shown}号, which another issue has taken since: sent now, it "
                    f"would be 第{coming}号 (it is rendered again with its number when sending starts)",
                    f"{label_ja(issue)}は第{shown}号と表示していますが、この号数は別の号が使いました。"
                    f"今送ると第{coming}号になります（送信開始のときに号数を入れて作り直します）")


def stale_warning(issue: Issue) -> MailmagError | None:
    """What preview and test mail say when they would show text that has changed since (a
    warning, not raised: the front shows it with the fix in its own terms)."""
    changed = changed_since_rendering(issue)
    if not changed:
        return None
    which = ", ".join(f"{item.id} 「{item.title}」" for item in changed)
    which_ja = "、".join(f"{item.id}「{item.title}」" for item in changed)
    return StateError(f"warning: item {which} changed after {label(issue)} was rendered; this shows the "
                      "old text", fixes=[Fix("render_issue", issue.id)],
                      ja=f"注意：記事 {which_ja} は{label_ja(issue)}を作った後に変更されています。"
                         "ここに表示しているのは古い内容です")


def start_sending(session: Session, config: Config, issue: Issue, *, allow_empty: bool = False,
                  today: dt.date | None = None) -> int:
    """Sending starts: gates, the next 第N号, the audience frozen into the outbox, items published.

    Returns the messages queued. Safe against another process starting a send at the same
    moment: the number's UNIQUE constraint decides, and the loser takes the next one.
    """
    check_sendable(session, config, issue, allow_empty=allow_empty)
    number = _take_number(session, issue)
    if number != issue.rendered_number:
        _render_again(session, config, issue, number, today or clock.today(config.zone))
    domain = addresses.sender_domain(config)
    added = transitions.start_sending(session, issue, domain, config.mailmag.language)
    items_mod.mark_published(session, [entry.item for entry in issue.entries])
    return added


def _take_number(session: Session, issue: Issue) -> int:
    lost: IntegrityError | None = None
    for _ in range(NUMBER_ATTEMPTS):
        number = next_number(session)
        try:
            with session.begin_nested():
                issue.number = number
                session.flush()
        except IntegrityError as exc:
            lost = exc
            continue  # another process took this number and committed: read the next one
        return number
    # Chained to the collision: an automatic firing (scheduling.jobs) sees it lost a race and
    # tries again later instead of recording a failure for the operator.
    raise StateError(f"{label(issue)}: other issues kept taking the next number; "
                     "run the command again",
                     ja=f"{label_ja(issue)}：ほかの号が続けて次の号数を使いました。"
                        "もう一度お試しください") from lost


def cancel(session: Session, issue_id: int) -> Cancelled:
    """`issues cancel`: a scheduled issue becomes a draft again; a send stops what is still queued.

    What was sent stays sent and keeps its 第N号 (and its archive page). A send that reached
    nobody gives its number back and its items become approved again, for the next issue.
    """
    issue = get(session, issue_id)
    if issue.status == "scheduled":
        transitions.unschedule(issue)
        return Cancelled(issue, unscheduled=True)
    if issue.status == "draft":
        raise StateError(f"{label(issue)} is a draft: nothing is being sent",
                         fixes=[Fix("delete_issue", issue_id)],
                         ja=f"{label_ja(issue)}は下書きです。送信中のものはありません")
    before = outbox.counts(session, issue.id)
    not_sent = transitions.cancel_issue(session, issue)
    counts = outbox.counts(session, issue.id)
    went = counts.sent + counts.dead  # dead: may have reached the relay
    reached = outbox.maybe_reached(session, issue.id)
    # a message that may have reached a reader (a failed one too, given up after drops after the
    # final dot: helper-97), or one on its way: the 第N号 stays
    if went or reached or before.sending:
        return Cancelled(issue, not_sent=not_sent, sent=went, dead=counts.dead, in_flight=before.sending,
                         opted_out=before.cancelled, maybe_sent=reached.get("cancelled", 0),
                         maybe_failed=reached.get("failed", 0))
    issue.number = None
    returned = _items_back(session, issue)
    session.flush()
    return Cancelled(issue, not_sent=not_sent, items_returned=returned)


def _items_back(session: Session, issue: Issue) -> int:
    """Published items of an issue that reached nobody: approved again, unless another issue
    went out with them."""
    elsewhere = (select(IssueItem.item_id).join(Issue)
                 .where(Issue.id != issue.id, Issue.number.is_not(None)))
    kept = set(session.scalars(elsewhere))
    returned = 0
    for entry in issue.entries:
        item = entry.item
        if item.status == "published" and item.id not in kept:
            items_mod.unpublish(item)
            returned += 1
    return returned


# --- composing --------------------------------------------------------------------------------


def _chosen_items(session: Session, item_ids: Sequence[int],
                  rerun_published: bool) -> tuple[list[Item], list[Sentence]]:
    """The named items (approved, or published with `rerun_published`), or every approved item
    in no live issue. An item waits in one unsent issue at a time: two editors composing at
    once, or a form posted twice, must not put it in two issues (each would send it)."""
    if not item_ids:
        approved = _locked(session, select(Item).where(Item.status == "approved").order_by(Item.id))
        taken = _waiting_in(session, approved)
        chosen = [item for item in approved if item.id not in taken]
        if not chosen:
            raise InvalidInput("there are no approved items that are not already in an issue",
                               fixes=[Fix("approve_items")],
                               ja="まだ号に入っていない承認済みの記事がありません")
        return chosen, []
    wanted = list(dict.fromkeys(item_ids))
    found = {item.id: item for item in _locked(session, select(Item).where(Item.id.in_(wanted)))}
    chosen = [found.get(item_id) or items_mod.get(session, item_id) for item_id in wanted]
    for item in chosen:
        if item.status not in ("approved", "published"):
            raise StateError(f"item {item.id} is {item.status}; no issue was made",
                             fixes=[Fix("approve_item", item.id)],
                             ja=f"記事（ID {item.id}）は{STATUS_JA[item.status]}です。号は作っていません")
    taken = _waiting_in(session, chosen)
    if taken:
        item_id, issue = next(iter(taken.items()))
        raise StateError(
            f"item {item_id} is already in {label(issue)} ({issue.status}): an item waits in one "
            "issue at a time; no issue was made",
            ja=f"記事（ID {item_id}）はすでに{label_ja(issue)}（{STATUS_JA[issue.status]}）に入っています。"
               "記事が待てる号は一度に一つだけです。号は作っていません")
    published = [item for item in chosen if item.status == "published"]
    if published and not rerun_published:
        raise StateError(f"item {published[0].id} was published already; no issue was made",
                         ja=f"記事（ID {published[0].id}）は掲載済みです。号は作っていません")
    return chosen, _already_in_issues(session, published)


def _locked(session: Session, query: Select[Item]) -> list[Item]:
    """Items locked until the transaction ends (PostgreSQL; SQLite's write lock is the whole
    database), so whether they wait in an issue is read after any concurrent compose committed."""
    return list(session.scalars(query.with_for_update(of=Item)))


def _waiting_in(session: Session, chosen: Sequence[Item]) -> dict[int, Issue]:
    """The unsent issue (draft or scheduled) each of these items waits in, by item id. Read
    after _locked: under READ COMMITTED this statement sees what a compose we waited for wrote."""
    rows = session.execute(
        select(IssueItem.item_id, Issue).join(Issue)
        .where(Issue.status.in_(("draft", "scheduled")), IssueItem.item_id.in_([i.id for i in chosen]))
        .order_by(Issue.id)
    )
    return {item_id: issue for item_id, issue in rows}


def waiting_in(session: Session, item: Item) -> Issue | None:
    """The unsent issue (draft or scheduled) `item` waits in, if any."""
    return _waiting_in(session, [item]).get(item.id)


def items_in_live_issues() -> Select[int]:
    """The ids of items taken by an issue that is not cancelled (a subquery)."""
    return select(IssueItem.item_id).join(Issue).where(Issue.status != "cancelled")


def _already_in_issues(session: Session, chosen: list[Item]) -> list[Sentence]:
    rows = session.scalars(
        select(IssueItem).join(Issue)
        .where(Issue.status != "cancelled", IssueItem.item_id.in_([i.id for i in chosen]))
        .order_by(Issue.id)
    )
    return [Sentence(f"item {entry.item_id} is also in {label(entry.issue)} ({entry.issue.status})",
                     f"記事（ID {entry.item_id}）は{label_ja(entry.issue)}"
                     f"（{STATUS_JA[entry.issue.status]}）にも入っています")
            for entry in rows]


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
          today: dt.date) -> list[Sentence]:
    """What compose lets through but the secretariat should look at before sending."""
    warnings = [w for item in ordered for w in _item_warnings(item, today)]
    warnings += _character_warnings(ordered, editions)
    limit = config.compose.html_size_limit_kb
    sample = placeholders.sample_values(config.mailmag.base_url)
    for edition in editions:
        size = len(placeholders.substitute(edition.html, sample, escape=True).encode("utf-8"))
        if size > limit * 1024:
            warnings.append(Clipped(
                f"the {edition.lang} HTML is {size / 1024:.0f} KB, over {limit} KB: Gmail clips it "
                "(\"[Message clipped]\"); shorten the items or move some to the web",
                f"{outbox.edition_ja(edition.lang)}の HTML が {size / 1024:.0f} KB あり、"
                f"{limit} KB を超えています。Gmail では途中で切られます。"
                "記事を短くするか、一部をウェブに移してください",
            ))
    return warnings


# A title longer than this takes three lines or more of the plain-text table of contents
# (helper-81: one of 297 characters took ten, without a word).
TITLE_LONG = 80


def _item_warnings(item: Item, today: dt.date) -> list[Sentence]:
    name, name_ja = f"item {item.id} 「{item.title}」", f"記事（ID {item.id}）「{item.title}」"
    needed = items_mod.required_fields(item.kind)
    kind = items_mod.KIND_LABELS[item.kind]
    warnings = [Sentence(f"{name} ({kind}) has no {attr}",
                         f"{name_ja}（{kind}）に{items_mod.FIELD_LABELS[attr]}がありません")
                for attr in ("date", "deadline") if attr in needed and getattr(item, attr) is None]
    warnings += [Sentence(f"{name} links to {url}, which is not https",
                          f"{name_ja}のリンク {url} は https ではありません")
                 for url in _insecure_links(item)]
    if len(item.title) > TITLE_LONG:
        short = f"item {item.id} 「{item.title[:30]}…」", f"記事（ID {item.id}）「{item.title[:30]}…」"
        warnings.append(Sentence(
            f"{short[0]}: its title is {len(item.title)} characters long, and takes several lines in the "
            f"table of contents and the mail; keep it under {TITLE_LONG} (the details go in the body)",
            f"{short[1]}のタイトルが {len(item.title)} 文字あり、目次とメールで何行にもなります。"
            f"{TITLE_LONG} 文字以内にして、詳しいことは本文に書いてください"))
    last_day = item.end_date or item.date
    if item.kind == "event" and last_day is not None and last_day < today:
        day = text_ja.format_date_ja(last_day)
        warnings.append(Sentence(f"{name}: the event on {day} is already past",
                                 f"{name_ja}：{day}のイベントはすでに終わっています"))
    if item.kind in ("event", "exhibitors") and item.deadline is not None and item.deadline < today:
        day = text_ja.format_date_ja(item.deadline)
        warnings.append(Sentence(f"{name}: the deadline {day} has passed",
                                 f"{name_ja}：締切日 {day} を過ぎています"))
    return warnings


# Item fields that reach the mail, and whether a warning quotes the whole value as suggested.
_TEXT_FIELDS = {"title": True, "event_name": True, "venue": True, "time_text": True, "fee": True,
                "body": False, "how_to_apply": False}


def _character_warnings(ordered: Sequence[Item], editions: Sequence[render.Edition]) -> list[Sentence]:
    """Characters that render poorly (①, ㈱, ㌔, ｶﾅ …), each with the form to use instead."""
    warnings: list[Sentence] = []
    seen: set[str] = set()
    for item in ordered:
        for attr, quote in _TEXT_FIELDS.items():
            value = getattr(item, attr) or ""
            pairs = text_ja.poor_characters(value)
            seen.update(chars for chars, _ in pairs)
            if pairs:
                where = (f"item {item.id} 「{item.title}」: the {attr.replace('_', ' ')}",
                         f"記事（ID {item.id}）「{item.title}」の{items_mod.FIELD_LABELS[attr]}")
                warnings.append(_poor_warning(where, value, pairs, quote))
    for edition in editions:
        pairs = [p for p in text_ja.poor_characters(edition.subject) if p[0] not in seen]
        if pairs:
            where = (f"the {edition.lang} subject", f"{outbox.edition_ja(edition.lang)}の件名")
            warnings.append(_poor_warning(where, edition.subject, pairs, True))
    return warnings


def _poor_warning(where: tuple[str, str], value: str, pairs: list[tuple[str, str]], quote: bool) -> Sentence:
    shown = ", ".join(f"{chars} → {better}" for chars, better in pairs)
    suggested = text_ja.suggest_display(value) if quote else ""
    return Sentence(
        f"{where[0]} has characters some mail clients show poorly ({shown})"
        + (f"; suggested: 「{suggested}」 (it goes as written until the item is edited)" if quote else ""),
        f"{where[1]}に、メールソフトによっては正しく表示されない文字があります（{shown}）"
        + (f"。直すと「{suggested}」" if quote else ""),
    )


def _insecure_links(item: Item) -> list[str]:
    found = [item.url] if item.url.startswith("http://") else []
    for source in (item.body, item.how_to_apply):
        hrefs = (html.unescape(h) for h in _HREF.findall(markup.to_html(source or "")))
        found += [h for h in hrefs if h.startswith("http://")]
        found += _HTTP.findall(source or "")
    return list(dict.fromkeys(url.rstrip(".,;:)") for url in found))
