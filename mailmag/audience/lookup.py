"""For the console: find subscribers, one with its consent history, bounces, an import previewed."""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailmag import text_ja
from mailmag.audience import imports
from mailmag.audience.subscribers import Consent
from mailmag.errors import Fix, NotFound
from mailmag.models import BounceEvent, ConsentEvent, Subscriber, Suppression
from mailmag.topics import Topic


def search(session: Session, text: str = "", limit: int = 200) -> list[Subscriber]:
    """Subscribers whose address, name or organization contains `text` (newest first).

    An IME left in full-width mode types ｙａｍａｄａ: addresses are stored NFKC-folded, so the
    text is folded too; names and organizations are stored as written, so each is matched as
    typed, folded, and with its ASCII made full-width (helper-70)."""
    query = select(Subscriber).order_by(Subscriber.id.desc()).limit(limit)
    text = text_ja.normalize_line(text)  # a NUL reached PostgreSQL as an error (helper-72)
    if text:
        folded = unicodedata.normalize("NFKC", text)
        # (SQLite's ILIKE folds ASCII letters only: full-width ones are tried in three cases,
        # Ｙａｍａｄａ as a name is written among them)
        cases = (folded, folded.upper(), folded.lower(), folded.title())
        forms = {text, folded, folded.translate(_HALF_WIDTH_KANA),
                 *(f.translate(table) for f in cases for table in _FULL_WIDTH)}
        written = (Subscriber.name, Subscriber.organization)
        query = query.where(or_(Subscriber.email_key.like(_containing(folded.lower()), escape="\\"),
                                *(column.ilike(_containing(form), escape="\\")
                                  for column in written for form in forms)))
    return list(session.scalars(query))


# Printable ASCII to its full-width form (！ to ～), the space kept or made the ideographic one
# (Ｔａｎａｋａ Ｉｃｈｉｒｏ is typed both ways).
_FULL_WIDTH_KEEPING_SPACE = {code: code + 0xFEE0 for code in range(0x21, 0x7F)}
_FULL_WIDTH = (_FULL_WIDTH_KEEPING_SPACE, _FULL_WIDTH_KEEPING_SPACE | {0x20: 0x3000})


def _half_width_kana() -> dict[int, str]:
    """Katakana to its half-width form (タナカ → ﾀﾅｶ, ダ → ﾀﾞ): names copied from old systems
    are stored so (helper-75), and NFKC folds only the other way."""
    table: dict[int, str] = {}
    for code in range(0xFF66, 0xFF9E):
        for half in (chr(code), chr(code) + "\uff9e", chr(code) + "\uff9f"):
            full = unicodedata.normalize("NFKC", half)
            if len(full) == 1 and ord(full) not in table:
                table[ord(full)] = half
    return table | {ord("ー"): "ｰ", ord("・"): "･"}


_HALF_WIDTH_KANA = _half_width_kana()


def _containing(text: str) -> str:
    """A LIKE pattern for `text` anywhere, its wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def by_id(session: Session, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise NotFound(f"no subscriber with the id {subscriber_id}", fixes=[Fix("list_subscribers")],
                       ja=f"読者（ID {subscriber_id}）はいません")
    return subscriber


def history(session: Session, subscriber_id: int) -> list[ConsentEvent]:
    """Every opt-in, confirmation and opt-out of the subscriber, oldest first."""
    return list(session.scalars(
        select(ConsentEvent).where(ConsentEvent.subscriber_id == subscriber_id).order_by(ConsentEvent.id)
    ))


def recent_bounces(session: Session, limit: int = 200) -> list[tuple[BounceEvent, str]]:
    """The latest bounces, complaints and mailto opt-outs, each with the subscriber's address."""
    rows = session.execute(
        select(BounceEvent, Subscriber.email)
        .outerjoin(Subscriber, Subscriber.id == BounceEvent.subscriber_id)
        .order_by(BounceEvent.at.desc(), BounceEvent.id.desc()).limit(limit)
    )
    return [(event, email or "") for event, email in rows]


def suppressions(session: Session, limit: int = 200) -> list[Suppression]:
    """Addresses never mailed again (kept as hashes), newest first."""
    return list(session.scalars(select(Suppression).order_by(Suppression.id.desc()).limit(limit)))


@dataclasses.dataclass
class ImportPreview:
    """What an import would do, found without keeping anything: the first rows and every refusal."""

    first_rows: list[imports.Row]
    report: imports.ImportReport


def preview_import(session: Session, data: bytes, consent: Consent, *, topics: Sequence[Topic],
                   encoding: str = "auto", shown: int = 10, write: bool = False) -> ImportPreview:
    """What importing `data` does; `write`: do it inside `session` (the caller commits), else
    nothing is written (a read session will do: the preview waits for no writer and holds none up).

    The file is read whole before the first statement: on SQLite an import holds the write lock
    from there, and reading the rows is half its time (the console takes 8 MB at most)."""
    report = imports.ImportReport()
    rows = list(imports.parse_rows(imports.decode(data, encoding), report, topics))
    imports.import_rows(session, rows, report, consent, write=write)
    return ImportPreview(rows[:shown], report)
