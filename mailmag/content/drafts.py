"""Changing a draft issue after it was composed: order, items, title; what to look at before sending.

Each change renders the issue again (the stored renderings are what is previewed and sent),
through `issues.rerender`, so the console and `issues render` give the same result. Issues
are addressed by their database id here (the console's URLs), numbers being for the public.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailmag import placeholders, text_ja
from mailmag.config import Config
from mailmag.content import issues, render
from mailmag.errors import Fix, InvalidInput, NotFound, Sentence, StateError
from mailmag.models import STATUS_JA, Issue, Item, utcnow


def by_id(session: Session, issue_id: int) -> Issue:
    return issues.get(session, issue_id)


def version(session: Session, issue: Issue) -> str:
    """What a confirmation page showed of an issue (title, topic, items, its rendering, its
    state, and the 第N号 it would be sent as), as a token its form carries back."""
    shown = [issue.title, issue.topic or "", issue.status, str(issue.scheduled_at), str(issue.rendered_at),
             str(issues.next_number(session)), *(str(entry.item_id) for entry in issue.entries)]
    return hashlib.sha256("\x1f".join(shown).encode()).hexdigest()[:16]


def check_version(session: Session, issue: Issue, seen: str) -> None:
    """Send only what the sender confirmed: another's change since (a title, the topic, an item
    taken out, another issue sent with the number it showed: helper-75) makes them look again."""
    if seen != version(session, issue):
        raise StateError(f"{issues.label(issue)} changed after its confirmation page was opened (its "
                         "title, topic or items, or the number it would be sent as): look at it again; "
                         "nothing was sent",
                         fixes=[Fix("preview_issue", issue.id)],
                         ja=f"{issues.label_ja(issue)}は確認画面を開いた後に変更されました（タイトル・テーマ・"
                            "記事・号数のいずれか）。もう一度確かめてください。何も送っていません")


def _draft(session: Session, issue_id: int) -> Issue:
    issue = by_id(session, issue_id)
    if issue.status != "draft":
        raise StateError(f"{issues.label(issue)} is {issue.status}: only a draft can be changed "
                         "(cancel the schedule first)",
                         ja=f"{issues.label_ja(issue)}は{STATUS_JA[issue.status]}です。変更できるのは下書きだけです（予約済みなら先に予約を取り消してください）")
    return issue


def move(session: Session, config: Config, issue_id: int, item_id: int, delta: int) -> issues.Composed:
    """Move one item up (delta -1) or down (+1) in the issue, and render it again."""
    issue = _draft(session, issue_id)
    entries = list(issue.entries)
    index = next((i for i, e in enumerate(entries) if e.item_id == item_id), None)
    if index is None:
        raise NotFound(f"item {item_id} is not in {issues.label(issue)}",
                       ja=f"記事（ID {item_id}）は{issues.label_ja(issue)}に入っていません")
    target = max(0, min(len(entries) - 1, index + delta))
    entries.insert(target, entries.pop(index))
    for position, entry in enumerate(entries):
        entry.position = position
    session.flush()
    session.expire(issue, ["entries"])
    return issues.rerender(session, config, issue.id)


def drop(session: Session, config: Config, issue_id: int, item_id: int) -> issues.Composed:
    """Take one item out of the issue (it stays approved for a later one), and render it again."""
    issue = _draft(session, issue_id)
    entry = next((e for e in issue.entries if e.item_id == item_id), None)
    if entry is None:
        raise NotFound(f"item {item_id} is not in {issues.label(issue)}",
                       ja=f"記事（ID {item_id}）は{issues.label_ja(issue)}に入っていません")
    if len(issue.entries) == 1:
        raise StateError(f"item {item_id} is the last one in {issues.label(issue)}: an issue needs an item",
                         ja=f"記事（ID {item_id}）は{issues.label_ja(issue)}に残る最後の記事です。"
                            "号には記事が1件以上必要です")
    issue.entries.remove(entry)
    session.flush()
    return issues.rerender(session, config, issue.id)


def retitle(session: Session, config: Config, issue_id: int, title: str) -> issues.Composed:
    """A title of the secretariat's own for the issue, and render it again."""
    issue = _draft(session, issue_id)
    cleaned = text_ja.normalize_line(title)
    if not cleaned:
        raise InvalidInput("the title is empty: type a title",
                           ja="タイトルが空です。タイトルを入力してください")
    issue.title = cleaned[:300]
    session.flush()
    return issues.rerender(session, config, issue.id)


def warnings(session: Session, config: Config, issue: Issue, today: dt.date | None = None) -> list[Sentence]:
    """The composer's warnings for the issue as stored now (what `issues new` printed)."""
    today = today or utcnow().astimezone(config.zone).date()
    ordered = [entry.item for entry in issue.entries]
    stale = [Sentence(f"item {i.id} 「{i.title}」 changed after the issue was rendered: the preview and "
                      "test mail show its old text; render the issue again",
                      f"記事（ID {i.id}）「{i.title}」は号を作った後に変更されています。"
                      "プレビューとテスト送信は古い内容のままです。号を作り直してください")
             for i in issues.changed_since_rendering(issue)]
    checked = issues.check(config, ordered, issue.renderings, today)  # type: ignore[arg-type]
    number = issues.number_warning(session, issue)
    return issues.unapproved_warnings(ordered) + stale + ([number] if number else []) + checked


def item_preview(config: Config, item: Item, today: dt.date | None = None) -> str:
    """One item as subscribers will see it: a one-item issue rendered, a sample reader's links in it."""
    today = today or utcnow().astimezone(config.zone).date()
    env = render.make_environment(config.templates_path)
    edition = render.render_edition(env, config, render.IssueSpec(0, None, today, [item]), "ja")
    sample = placeholders.sample_values(config.mailmag.base_url)
    return placeholders.substitute(edition.html, sample, escape=True)


def in_review(session: Session) -> list[Item]:
    """Items waiting for the secretariat, oldest first."""
    return list(session.scalars(select(Item).where(Item.status == "submitted").order_by(Item.id)))


def approved_free(session: Session) -> list[Item]:
    """Approved items in no live issue: what a new draft is composed from."""
    return list(session.scalars(
        select(Item).where(Item.status == "approved", Item.id.not_in(issues.items_in_live_issues()))
        .order_by(Item.id)
    ))


def set_topic(session: Session, issue_id: int, topic: str | None, offered: Sequence[str]) -> Issue:
    """Send the draft only to subscribers of `topic` (and those who chose no topic); None: everyone."""
    issue = _draft(session, issue_id)
    if topic is not None and topic not in offered:
        raise InvalidInput(f"unknown topic {topic!r}: use one of {', '.join(offered)} ([web] topics)",
                           ja=f"テーマ「{topic}」はありません（{'、'.join(offered)} のいずれかです）")
    issue.topic = topic
    session.flush()
    return issue
