"""Items that member orgs submit: validation per kind, normalization on the way in, and review.

Status flow: submitted → approved | rejected → published (when an issue holding it is sent).
Editing an approved or rejected item sends it back to submitted; a published item is frozen,
unless its issue is cancelled before reaching anyone (unpublish). Every write of Item.status is here.
Bodies and how_to_apply are Markdown; `markup.to_html` is the only way they become HTML.
"""

from __future__ import annotations

import datetime as dt
import errno
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import idna
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailmag import text_ja
from mailmag.content import dates, orgs
from mailmag.errors import Fix, InvalidInput, LimitExceeded, MailmagError, NotFound, StateError
from mailmag.models import ITEM_KINDS, ITEM_STATUSES, STATUS_JA, Item, Org, utcnow

KIND_LABELS = {"meeting": "会議報告", "event": "イベント案内", "exhibitors": "出展者募集", "news": "お知らせ"}
_KIND_ALIASES = {
    **{label: kind for kind, label in KIND_LABELS.items()},
    "トピックス": "news", "topics": "news", "イベント": "event", "出展募集": "exhibitors",
}

# Model attribute → its name in Japanese sentences (as the submission form labels it).
FIELD_LABELS = {
    "title": "タイトル", "body": "本文", "date": "日付", "end_date": "終了日", "time_text": "時間",
    "venue": "会場", "url": "URL", "deadline": "締切日", "fee": "参加費", "event_name": "出展先のイベント名",
    "how_to_apply": "申込方法",
}
# Model attribute → the name people type (CLI option without --, front-matter key).
FIELD_NAMES = {
    "title": "title", "body": "body", "date": "date", "end_date": "end_date", "time_text": "time",
    "venue": "venue", "url": "url", "deadline": "deadline", "fee": "fee", "event_name": "event",
    "how_to_apply": "how_to_apply",
}
_ALIASES = {
    **{typed: attr for attr, typed in FIELD_NAMES.items()},
    "place": "venue", "end-date": "end_date", "how-to-apply": "how_to_apply", "time_text": "time_text",
    "event_name": "event_name",
}
_ONE_LINE_LIMITS = {"title": 300, "venue": 300, "time_text": 100, "fee": 200, "event_name": 300}
_BLOCKS = ("body", "how_to_apply")
_DATES = ("date", "end_date", "deadline")

_REQUIRED = {
    "meeting": ("title", "date", "venue", "body"),
    "event": ("title", "date", "venue"),
    "exhibitors": ("title", "event_name", "deadline", "how_to_apply"),
    "news": ("title", "body"),
}
_OPTIONAL = {
    "meeting": ("end_date", "time_text", "url"),
    "event": ("end_date", "time_text", "url", "deadline", "fee", "body"),
    "exhibitors": ("date", "end_date", "venue", "fee", "url", "body"),  # fee: 出展料
    "news": ("date", "url"),
}
# [compose] item_size_limit_kb's default: a body (or how to apply) larger than this is refused, so
# an issue stays readable: Gmail clips HTML over 102 KB, hiding the footer (composing grows only
# linearly with the text, benchmarks/compose.py: ~3 s for 400 KB, so it is not the limit).
ITEM_SIZE_LIMIT_KB = 100
_LINE_BREAKS = ("\r", "\n", "\v", "\f", "\x85", "\u2028", "\u2029")
# Why a file cannot be read, for Japanese sentences (the English keeps the system's own words).
_OS_ERRORS_JA = {errno.ENOENT: "ファイルがありません", errno.EACCES: "読み取る権限がありません",
                 errno.EISDIR: "ファイルではなくフォルダです"}


def largest_form_bytes(limit_kb: int) -> int:
    """How large an item's form can be as a browser sends it: its text blocks (body, how to
    apply) at [compose] item_size_limit_kb, each UTF-8 byte percent-encoded as three, and 64 KB
    for the one-line fields. [web] max_request_body_size below this refuses long items with 413
    before their own sentence ("本文が長すぎます") can say how long they may be."""
    return len(_BLOCKS) * limit_kb * 1024 * 3 + 64 * 1024


def _about_characters(size: int) -> str:
    """A size in bytes as about how many Japanese characters it holds (3 bytes each in UTF-8),
    rounded to two digits: 102400 → '34,000'; for people who do not count in bytes."""
    count = size // 3
    unit = 10 ** max(len(str(count)) - 2, 0)
    return f"{count // unit * unit:,}"


def parse_kind(raw: str) -> str:
    """meeting | event | exhibitors | news, also from the Japanese labels (会議報告 …)."""
    value = (raw or "").strip()
    kind = _KIND_ALIASES.get(value, value.lower())
    if kind not in ITEM_KINDS:
        raise InvalidInput(f"unknown kind {raw!r}: use meeting, event, exhibitors or news",
                           ja=f"種類「{raw}」はありません。{'・'.join(KIND_LABELS.values())}のいずれかを選んでください")
    return kind


def required_fields(kind: str) -> tuple[str, ...]:
    """The model attributes an item of this kind must have."""
    return _REQUIRED[parse_kind(kind)]


def allowed_fields(kind: str) -> tuple[str, ...]:
    kind = parse_kind(kind)
    return _REQUIRED[kind] + _OPTIONAL[kind]


def _names(attrs: Iterable[str]) -> str:
    return ", ".join(FIELD_NAMES[a] for a in attrs)


def _labels(attrs: Iterable[str]) -> str:
    return "、".join(FIELD_LABELS[a] for a in attrs)


def _resolve(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Typed names and aliases → model attributes; None means not given."""
    resolved: dict[str, Any] = {}
    for key, value in fields.items():
        attr = _ALIASES.get(key)
        if attr is None:
            raise InvalidInput(f"unknown field {key!r}; the fields are: {', '.join(FIELD_NAMES.values())}",
                               ja=f"項目「{key}」はありません（使える項目：{_labels(FIELD_NAMES)}）")
        if value is not None:
            resolved[attr] = value
    return resolved


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(attr: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidInput(f"{FIELD_NAMES[attr]} must be text, not {type(value).__name__}",
                           ja=f"{FIELD_LABELS[attr]}は文字で入力してください")
    return str(value)


def _one_line(attr: str, raw: Any) -> str:
    raw = _text(attr, raw)
    if attr == "title" and any(mark in raw for mark in _LINE_BREAKS):
        raise InvalidInput("the title must be one line (it becomes the mail subject)",
                           ja="タイトルは1行で入力してください（メールの件名になります）")
    value = text_ja.normalize_line(raw)
    if len(value) > _ONE_LINE_LIMITS[attr]:
        raise InvalidInput(f"{FIELD_NAMES[attr]} is longer than {_ONE_LINE_LIMITS[attr]} characters",
                           ja=f"{FIELD_LABELS[attr]}が長すぎます。{_ONE_LINE_LIMITS[attr]}文字以内で"
                              f"入力してください（現在{len(value):,}文字）")
    return value


def _block(attr: str, raw: Any, limit_kb: int) -> str:
    text = _text(attr, raw)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit_kb * 1024:
        raise InvalidInput(
            f"{FIELD_NAMES[attr]} is {size / 1024:,.0f} KB; an item may hold at most {limit_kb} KB "
            "([compose] item_size_limit_kb): shorten it, or link to the full text",
            ja=f"{FIELD_LABELS[attr]}が長すぎます（{size / 1024:,.1f} KB）。{FIELD_LABELS[attr]}は "
               f"{limit_kb} KB（日本語でおよそ{_about_characters(limit_kb * 1024)}文字）までです。"
               "文章を短くするか、全文をウェブページに載せて、そのURLを入れてください",
        )
    lines = text_ja.normalize(text).split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def parse_url(raw: Any) -> str:
    """An http(s) link as pasted; anything else would be a dead or dangerous link in the mail."""
    value = text_ja.normalize_line(_text("url", raw))
    spaced = any(c.isspace() for c in value)
    try:
        parts = urlsplit(value)
    except ValueError:  # a full-width ／ or ＠ in the site name, a broken [ ]: no browser opens it
        raise InvalidInput(f"url {value!r}: its site name cannot be read (a full-width sign such as ／ or "
                           "＠, or a broken [ ]): type it as the browser's address bar shows it",
                           ja=f"URL「{value}」のサイト名が読めません（全角の「／」「＠」や、閉じていない"
                              "「[ ]」など）。ブラウザのアドレス欄のとおりに入力してください") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or spaced:
        why_ja = (f"URL「{value}」の途中に空白が入っています。空白を除いて入力してください" if spaced
                  else f"URL「{value}」は http:// または https:// で始まるアドレスではありません。"
                       "ウェブページのアドレスをそのまま貼り付けてください")
        raise InvalidInput(f"url {value!r} is not an http:// or https:// address", ja=why_ja)
    site = parts.netloc.translate(_IDEOGRAPHIC_DOTS)  # as browsers read them, shown so
    if site != parts.netloc:
        value = value.replace(parts.netloc, site, 1)  # the rest as typed
        parts = urlsplit(value)
    _check_site(value, parts)
    if len(value) > 2000:
        raise InvalidInput("url is longer than 2000 characters",
                           ja=f"URLが長すぎます。2000文字以内にしてください（現在{len(value):,}文字）")
    return value


# 。．｡ in a site name are dots to a browser (例え。jp as an IME types it); kept, the reviewer
# would read www.meti.go.jp。evil.com as a sentence ending at meti.go.jp (helper-76).
_IDEOGRAPHIC_DOTS = str.maketrans(dict.fromkeys("。．｡", "."))
# A site name as browsers and mailmag's links.as_uri read it alike: a name (checked by _opens),
# or an IPv6 literal; then an optional port.
_SITE = re.compile(r"(?:[^\x00-\x20/?#@:\[\]\\%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")
# An ASCII name: letters, digits, '-', '_' and dots (no other sign a browser would refuse).
_ASCII_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+")  # (urlsplit's hostname drops [ ])


def _check_site(value: str, parts: SplitResult) -> None:
    """helper-72: the reviewer reads a link's site from its text, the reader's browser opens
    the site it parses. Where the two could differ, the link is refused, not guessed at."""
    if "\\" in value:  # browsers read it as '/': 'https://a.jp\\@b.com/' opens a.jp, urlsplit b.com
        raise InvalidInput(f"url {value!r} holds a backslash: type '/' instead",
                           ja=f"URL「{value}」に「\\」が入っています。ブラウザは「/」として読むため、"
                              "見えているのと違うページが開きます。「/」に直してください")
    netloc = parts.netloc
    if "@" in netloc:  # 'https://www.meti.go.jp@evil.com/' opens evil.com
        site = netloc.rpartition("@")[2]
        raise InvalidInput(f"url {value!r} has a name before '@': the link would open {site}",
                           ja=f"URL「{value}」の「@」より前は、開くサイトの名前ではありません"
                              f"（開くのは {site}）。サイトのアドレスをそのまま貼り付けてください")
    if not _SITE.fullmatch(netloc) or not _opens(parts):
        raise InvalidInput(f"url {value!r}: {netloc!r} is not a site name (a host, then ':port' if any)",
                           ja=f"URL「{value}」のサイト名「{netloc}」が正しくありません。"
                              "ウェブページのアドレスをそのまま貼り付けてください")


def _opens(parts: SplitResult) -> bool:
    """A port browsers accept, and a name they resolve: a non-ASCII one that IDNA takes (as
    links.as_uri sends it: ザ・セール.jp), an ASCII one whose xn-- labels decode."""
    try:
        host = parts.hostname or ""
        if parts.port == 0 or not all(host.removesuffix(".").split(".")):  # no empty label: a..jp
            return False
        if not host.isascii():
            return bool(idna.encode(host, uts46=True))
        if "xn--" in host:
            idna.decode(host)
        return bool(_ASCII_HOST.fullmatch(host))
    except (ValueError, idna.IDNAError, UnicodeError):  # a port beyond 65535; a name no browser resolves
        return False


def _date(attr: str, raw: Any, today: dt.date | None) -> dt.date:
    if not isinstance(raw, str | dt.date):
        raise InvalidInput(f"{FIELD_NAMES[attr]} must be a date, not {type(raw).__name__}",
                           ja=f"{FIELD_LABELS[attr]}は日付で入力してください")
    try:
        return dates.parse_date(raw, today)
    except InvalidInput as exc:
        raise InvalidInput(f"{FIELD_NAMES[attr]}: {exc}",
                           ja=f"{FIELD_LABELS[attr]}：{exc.ja or exc.message}") from None


def _dates(given: dict[str, Any], today: dt.date | None) -> dict[str, dt.date | None]:
    """date (possibly a range '11/22〜23'), end_date and deadline as dates."""
    out: dict[str, dt.date | None] = {}
    if "date" in given and isinstance(given["date"], str) and dates.is_range(given["date"]):
        if "end_date" in given:
            raise InvalidInput("date is a range and end_date is given too: give the end only once",
                               ja="日付が期間（〜）になっていて、終了日も入力されています。"
                                  "終わりの日は、どちらか一方にだけ入力してください")
        try:
            out["date"], out["end_date"] = dates.parse_range(given["date"], today)
        except InvalidInput as exc:
            raise InvalidInput(f"date: {exc}", ja=f"日付：{exc.ja or exc.message}") from None
    for attr in _DATES:
        if attr in given and attr not in out:
            out[attr] = _date(attr, given[attr], today)
    start, end = out.get("date"), out.get("end_date")
    if end is not None and start is not None and end < start:
        raise InvalidInput(f"end_date {end.isoformat()} is before date {start.isoformat()}",
                           ja=f"終了日（{dates.shown_ja(end)}）が日付（{dates.shown_ja(start)}）"
                              "より前になっています")
    if end is not None and start is None:
        raise InvalidInput("end_date is given without date", ja="終了日だけが入力されています。"
                           "日付も入力してください")
    return out


def _require(kind: str, missing: list[str]) -> None:
    if missing:
        raise InvalidInput(
            f"missing {_names(missing)}: {kind} items ({KIND_LABELS[kind]}) need {_names(_REQUIRED[kind])}",
            ja=f"{_labels(missing)}を入力してください"
               f"（{KIND_LABELS[kind]}には{_labels(_REQUIRED[kind])}が必要です）",
        )


def clean(kind: str, fields: Mapping[str, Any], today: dt.date | None = None, *,
          limit_kb: int = ITEM_SIZE_LIMIT_KB) -> dict[str, Any]:
    """Every model field of an item of `kind`, validated and normalized; InvalidInput names the problem."""
    kind = parse_kind(kind)
    given = {a: v for a, v in _resolve(fields).items() if not _is_empty(v)}
    stray = [a for a in given if a not in allowed_fields(kind)]
    if stray:
        raise InvalidInput(
            f"{_names(stray)} does not apply to {kind} items ({KIND_LABELS[kind]}); "
            f"they take: {_names(allowed_fields(kind))}",
            ja=f"{_labels(stray)}は{KIND_LABELS[kind]}では使えません（使える項目：{_labels(allowed_fields(kind))}）",
        )
    _require(kind, [a for a in _REQUIRED[kind] if a not in given])
    values: dict[str, Any] = {attr: "" for attr in FIELD_NAMES}
    values.update({attr: None for attr in _DATES})
    for attr, raw in given.items():
        if attr in _ONE_LINE_LIMITS:
            values[attr] = _one_line(attr, raw)
        elif attr in _BLOCKS:
            values[attr] = _block(attr, raw, limit_kb)
        elif attr == "url":
            values[attr] = parse_url(raw)
    values.update(_dates(given, today))
    # Normalization can empty a value (a title of zero-width spaces): that is still missing.
    _require(kind, [a for a in _REQUIRED[kind] if values[a] in ("", None)])
    return values


def submit(session: Session, org: Org | str, kind: str, fields: Mapping[str, Any],
           channel: str = "cli", today: dt.date | None = None, *, limit_kb: int = ITEM_SIZE_LIMIT_KB) -> Item:
    """Store a new item as submitted; nothing is stored if any field is not acceptable."""
    if not isinstance(org, Org):
        org = orgs.get(session, org)
    kind = parse_kind(kind)
    item = Item(org=org, kind=kind, status="submitted", channel=channel,
                **clean(kind, fields, today, limit_kb=limit_kb))
    session.add(item)
    session.flush()
    return item


TWIN_WINDOW = dt.timedelta(minutes=10)


def recent_twin(session: Session, org: Org, kind: str, fields: Mapping[str, Any], *, limit_kb: int,
                now: dt.datetime | None = None) -> Item | None:
    """The item `org` submitted within TWIN_WINDOW with exactly these contents, still waiting for
    review: a form sent twice (a reload, a double click) is one submission, not two items that
    could both land in an issue."""
    now = now or utcnow()
    cleaned = clean(parse_kind(kind), fields, None, limit_kb=limit_kb)
    same = [getattr(Item, attr) == value for attr, value in cleaned.items()]
    return session.scalars(
        select(Item).where(Item.org_id == org.id, Item.kind == kind, Item.status == "submitted",
                           Item.created_at > now - TWIN_WINDOW, *same).order_by(Item.id.desc()).limit(1)
    ).first()


def check_link_limits(session: Session, org: Org, fields: Mapping[str, Any], *, per_hour: int,
                      bytes_per_day: int, now: dt.datetime | None = None) -> None:
    """An org's submission link is a credential anyone holding it can use: at most `per_hour`
    items an hour and `bytes_per_day` bytes of text a day through it; LimitExceeded if over."""
    now = now or utcnow()
    web = (Item.org_id == org.id, Item.channel == "web")
    last_hour = session.scalar(select(func.count()).select_from(Item)
                               .where(*web, Item.created_at > now - dt.timedelta(hours=1))) or 0
    if last_hour >= per_hour:
        raise LimitExceeded(f"this link has sent {last_hour} items in the last hour (at most {per_hour}): "
                            "please try again later or ask the secretariat",
                            ja=f"このリンクからの投稿は1時間に {per_hour} 件までです"
                               f"（この1時間にすでに {last_hour} 件投稿されています）。"
                               "しばらく時間をおいてからもう一度お試しいただくか、事務局にご連絡ください")
    columns = [getattr(Item, attr) for attr in FIELD_NAMES if attr not in _DATES]
    today = session.execute(select(*columns).where(*web, Item.created_at > now - dt.timedelta(days=1)))
    used = sum(len((value or "").encode()) for row in today for value in row)
    size = sum(len(str(value).encode()) for value in fields.values())
    if used + size > bytes_per_day:
        raise LimitExceeded(f"this link may send {bytes_per_day} bytes of text a day and has {used} sent: "
                            "please shorten the text, try again tomorrow or ask the secretariat",
                            ja=f"このリンクから送れる文章の量は1日 {bytes_per_day:,} バイト"
                               f"（日本語でおよそ{_about_characters(bytes_per_day)}文字）までです。"
                               f"この24時間にすでに {used:,} バイト送られていて、今回の {size:,} バイトを"
                               "加えると上限を超えます。文章を短くするか、明日もう一度お試しいただくか、"
                               "事務局にご連絡ください")


def get(session: Session, item_id: int) -> Item:
    item = session.get(Item, item_id)
    if item is None:
        raise NotFound(f"no item with the id {item_id}", fixes=[Fix("list_items")],
                       ja=f"記事（ID {item_id}）はありません")
    return item


def listing(session: Session, status: str | None = None, org: str | None = None,
            kind: str | None = None) -> list[Item]:
    """Items oldest first, optionally of one status, org (code) and kind."""
    query = select(Item).order_by(Item.id)
    if status is not None:
        if status not in ITEM_STATUSES:
            raise InvalidInput(f"unknown status {status!r}: use {', '.join(ITEM_STATUSES)}",
                               ja=f"状態「{status}」はありません（指定できる状態："
                                  f"{'、'.join(f'{s}＝{STATUS_JA[s]}' for s in ITEM_STATUSES)}）")
        query = query.where(Item.status == status)
    if org is not None:
        query = query.where(Item.org_id == orgs.get(session, org).id)
    if kind is not None:
        query = query.where(Item.kind == parse_kind(kind))
    return list(session.scalars(query))


def _stored(item: Item) -> dict[str, Any]:
    return {attr: getattr(item, attr) for attr in FIELD_NAMES}


def update(session: Session, item: Item, fields: Mapping[str, Any], today: dt.date | None = None, *,
           limit_kb: int = ITEM_SIZE_LIMIT_KB) -> Item:
    """Change fields ('' clears one); an approved or rejected item goes back to submitted."""
    if item.status == "published":
        raise StateError(f"item {item.id} was published in an issue and can no longer be edited",
                         ja=f"記事（ID {item.id}）は号に掲載済みのため、もう編集できません")
    new = _resolve(fields)
    merged = {**_stored(item), **new}
    if isinstance(new.get("date"), str) and dates.is_range(new["date"]) and "end_date" not in new:
        merged.pop("end_date")  # the range given now replaces the stored end
    for attr, value in clean(item.kind, merged, today, limit_kb=limit_kb).items():
        setattr(item, attr, value)
    if item.status in ("approved", "rejected"):
        item.status, item.reject_reason = "submitted", ""
    session.flush()
    return item


def _fetch_all(session: Session, ids: Sequence[int]) -> list[Item]:
    """All the items, or NotFound before anything changes."""
    found = [session.get(Item, i) for i in dict.fromkeys(ids)]
    missing = [str(i) for i, item in zip(dict.fromkeys(ids), found, strict=True) if item is None]
    if missing:
        raise NotFound(f"no item with the id {', '.join(missing)}; nothing changed",
                       fixes=[Fix("list_items")], ja=f"記事（ID {'、'.join(missing)}）はありません。"
                                  "何も変更していません")
    return [item for item in found if item is not None]


def version(item: Item) -> str:
    """The item as a page showed it, for its forms to carry back: when it last changed."""
    return item.updated_at.isoformat()


def check_version(item: Item, seen: str) -> None:
    """Refuse to act on an item that changed since the page acting on it was opened: whoever
    approves must have seen what is approved, and an edit must not overwrite another's."""
    if seen != version(item):
        raise StateError(f"item {item.id} 「{item.title}」 changed after this page was opened (someone "
                         "else's change): look at it again; nothing was changed",
                         fixes=[Fix("review_item", item.id)],
                         ja=f"記事（ID {item.id}）「{item.title}」はこのページを開いた後に変更されました"
                            "（ほかの人の操作）。内容を確かめてから、もう一度操作してください。何も変更していません")


def approve(session: Session, ids: Sequence[int]) -> list[Item]:
    """Approve submitted (or earlier rejected) items; all or none. Already approved ones stay so."""
    items = _fetch_all(session, ids)
    published = [str(i.id) for i in items if i.status == "published"]
    if published:
        raise StateError(f"item {', '.join(published)} is already published; nothing changed",
                         ja=f"記事（ID {'、'.join(published)}）はすでに掲載済みです。何も変更していません")
    for item in items:
        item.status, item.reject_reason = "approved", ""
    session.flush()
    return items


def reject(session: Session, item_id: int, reason: str) -> Item:
    """Reject an item with a reason the submitting org will read."""
    reason = text_ja.normalize(reason or "").strip()
    if not reason:
        raise InvalidInput("give a reason for the rejection: the org sees it",
                           ja="差し戻しの理由を入力してください（投稿した団体に伝わります）")
    item = get(session, item_id)
    if item.status == "published":
        raise StateError(f"item {item.id} is already published and cannot be rejected",
                         ja=f"記事（ID {item.id}）はすでに掲載済みのため、差し戻せません")
    item.status, item.reject_reason = "rejected", reason
    session.flush()
    return item


def mark_published(session: Session, items: Iterable[Item]) -> None:
    """Called when an issue holding these items is sent."""
    for item in items:
        if item.status not in ("approved", "published"):
            raise StateError(f"item {item.id} is {item.status}, not approved: it cannot be published",
                             ja=f"記事（ID {item.id}）は{STATUS_JA.get(item.status, item.status)}で、"
                                "承認されていないため掲載できません")
        item.status = "published"
    session.flush()


def unpublish(item: Item) -> None:
    """A published item whose issue was cancelled before it reached anyone is approved again,
    for the next issue (content.issues.cancel decides that no other issue went out with it)."""
    if item.status != "published":
        raise StateError(f"item {item.id} is {item.status}, not published: it cannot be unpublished",
                         ja=f"記事（ID {item.id}）は{STATUS_JA.get(item.status, item.status)}で、"
                            "掲載済みではないため掲載を取り消せません")
    item.status = "approved"


# --- files: Markdown with TOML front matter between +++ lines ------------------------------


def read_text(path: str | Path) -> str:
    """A text file as UTF-8 (BOM allowed), else CP932 as Windows editors save it."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        why_ja = _OS_ERRORS_JA.get(exc.errno or 0, exc.strerror or str(exc))
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}",
                           ja=f"「{path}」を読めません（{why_ja}）") from None
    for encoding in ("utf-8-sig", "cp932"):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        if "\x00" not in text:
            return text
    raise InvalidInput(f"cannot read {path}: it is not UTF-8 or Shift_JIS text",
                       ja=f"「{path}」を読めません（文字コードが UTF-8 でも Shift_JIS でもありません）")


def _split_front_matter(path: str | Path, text: str) -> tuple[str, str]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip()), None)
    if start is None or lines[start].strip() != "+++":
        yaml = start is not None and lines[start].strip() == "---"
        found = "YAML (---)" if yaml else "no front matter"
        found_ja = "前書きが --- で挟んだ YAML になっています" if yaml else "前書きがありません"
        raise InvalidInput(f"{path}: expected TOML front matter between +++ lines at the top, found {found}",
                           ja=f"「{path}」：{found_ja}。先頭に +++ の行で挟んだ TOML の前書きを"
                              "書いてください")
    for end in range(start + 1, len(lines)):
        if lines[end].strip() == "+++":
            return "\n".join(lines[start + 1:end]), "\n".join(lines[end + 1:])
    raise InvalidInput(f"{path}: the front matter has no closing +++ line",
                       ja=f"「{path}」：前書きを閉じる +++ の行がありません")


def _from_toml(value: Any) -> Any:
    """TOML types → what clean() takes: a datetime is a date plus a start time."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.time):
        return value.strftime("%H:%M")
    return value


def parse_file(path: str | Path) -> dict[str, Any]:
    """The front-matter keys of a Markdown item file plus 'body' (the Markdown after it)."""
    front, body = _split_front_matter(path, read_text(path))
    try:
        data = tomllib.loads(front)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: the front matter is not valid TOML ({exc})",
                           ja=f"「{path}」：前書きを TOML として読めません（{exc}）") from None
    if "body" in data:
        raise InvalidInput(f"{path}: write the body below the closing +++, not as a body key",
                           ja=f"「{path}」：本文は body の項目ではなく、閉じる +++ の行の下に書いてください")
    fields = {key: _from_toml(value) for key, value in data.items()}
    if isinstance(data.get("date"), dt.datetime) and "time" not in data:
        fields["time"] = data["date"].strftime("%H:%M")
    fields["body"] = body
    return fields


def _prepare(session: Session, path: str | Path, today: dt.date | None,
             limit_kb: int) -> tuple[Org, str, dict[str, Any]]:
    fields = parse_file(path)
    org_code, kind = fields.pop("org", None), fields.pop("kind", None)
    if not isinstance(org_code, str) or not isinstance(kind, str):
        raise InvalidInput(f"{path}: the front matter needs org = \"CODE\" and kind = \"meeting|event|…\"",
                           ja=f"「{path}」：前書きに org = \"団体コード\" と "
                              'kind = "meeting|event|…" が必要です')
    kind = parse_kind(kind)
    return orgs.get(session, org_code), kind, clean(kind, fields, today, limit_kb=limit_kb)


@dataclass(frozen=True)
class FilesAdded:
    """What `items add` did: the new items, and the files whose item was already stored."""

    items: list[Item]
    already: list[tuple[str, Item]]


def add_files(session: Session, paths: Sequence[str | Path], today: dt.date | None = None, *,
              limit_kb: int = ITEM_SIZE_LIMIT_KB) -> FilesAdded:
    """Store one item per file; every file is checked first, and one bad file stores nothing.

    A file whose item is already stored (same org, kind and every field, in any status) adds
    nothing: adding the same file twice, or a folder again, stores each item once.
    """
    prepared = []
    for path in paths:
        try:
            prepared.append((str(path), *_prepare(session, path, today, limit_kb)))
        except MailmagError as exc:
            message = str(exc) if str(exc).startswith(f"{path}:") else f"{path}: {exc}"
            said_ja = exc.ja if not exc.ja or exc.ja.startswith(f"「{path}」") else f"「{path}」：{exc.ja}"
            raise type(exc)(message, ja=said_ja) from None
    added: list[Item] = []
    already: list[tuple[str, Item]] = []
    for path, org, kind, values in prepared:
        same = _same_item(session, org, kind, values)
        if same is not None:
            already.append((path, same))
            continue
        item = Item(org=org, kind=kind, status="submitted", channel="file", **values)
        session.add(item)
        session.flush()  # the next file's look-up sees it
        added.append(item)
    return FilesAdded(added, already)


def _same_item(session: Session, org: Org, kind: str, values: Mapping[str, Any]) -> Item | None:
    candidates = session.scalars(
        select(Item).where(Item.org_id == org.id, Item.kind == kind, Item.title == values["title"])
        .order_by(Item.id)
    )
    return next((item for item in candidates if all(getattr(item, k) == v for k, v in values.items())), None)
