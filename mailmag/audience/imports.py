"""Subscriber lists in: CSV as Excel in Japan writes it (UTF-8 with or without BOM, or CP932)."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailmag import topics as topics_mod
from mailmag.audience import subscribers
from mailmag.audience.exports import unguard
from mailmag.audience.subscribers import Address, Consent
from mailmag.errors import InvalidInput, MailmagError, Sentence, StateError
from mailmag.models import STATUS_JA, SUBSCRIBER_STATUSES, ConsentEvent, Subscriber, Suppression, utcnow
from mailmag.topics import Topic

ENCODINGS = ("auto", "utf-8", "utf-8-sig", "cp932", "shift_jis")
BATCH = 1000
SAVE_AS_CSV = "save it from Excel as 'CSV UTF-8 (コンマ区切り)' and import that file"
SAVE_AS_CSV_JA = "Excel で「CSV UTF-8 (コンマ区切り)」として保存し、そのファイルを取り込んでください"

COLUMN_NAMES = {"email": "e-mail address", "name": "name", "organization": "organization",
                "lang": "language", "topics": "topics", "status": "status"}
# Column name (NFKC, case-insensitive, spaces and underscores ignored) → field.
HEADERS = {
    "email": "email", "e-mail": "email", "mail": "email", "emailaddress": "email",
    "e-mailaddress": "email", "メールアドレス": "email", "メール": "email", "アドレス": "email",
    "電子メール": "email", "eメール": "email",
    "name": "name", "fullname": "name", "氏名": "name", "名前": "name", "お名前": "name",
    "organization": "organization", "organisation": "organization", "org": "organization",
    "company": "organization", "affiliation": "organization", "所属": "organization",
    "会社名": "organization", "団体名": "organization", "所属機関": "organization",
    "機関名": "organization",
    "lang": "lang", "language": "lang", "言語": "lang",
    "topics": "topics", "topic": "topics", "categories": "topics", "配信カテゴリ": "topics",
    "カテゴリ": "topics", "カテゴリー": "topics", "テーマ": "topics", "配信テーマ": "topics",
    "status": "status", "状態": "status", "ステータス": "status",
}
# The status column, as `subscribers export` writes it (English) or as the console shows it.
_ALL_STATUSES = (*SUBSCRIBER_STATUSES, "erased")
STATUSES = {**{status: status for status in _ALL_STATUSES}, **{STATUS_JA[s]: s for s in _ALL_STATUSES},
            # the words an office's own list uses (helper-97: 配信停止 and 退会 were refused)
            **dict.fromkeys(("配信停止", "停止", "配信解除", "登録解除", "解除", "退会", "opted out",
                             "opt-out", "optout"), "unsubscribed"),
            **dict.fromkeys(("不達", "配信不能", "bounce"), "bounced"),
            **dict.fromkeys(("配信", "有効", "購読中"), "active")}
# A row whose status says the person is not (or not yet) a reader: never added as one (helper-85:
# an export imported into a new database made its unsubscribed and bounced readers active again).
NOT_READERS = ("pending", "unsubscribed", "bounced", "erased")
_OUT = ("unsubscribed", "bounced", "erased")  # the person's word (or the mailbox's) against mail


@dataclasses.dataclass(frozen=True)
class Row:
    line: int
    address: Address
    name: str
    organization: str
    lang: str  # "" when the cell is empty: keep what is stored, "ja" for a new subscriber
    topics: list[str]
    status: str = ""  # from a status column: "" or "active" add a reader; NOT_READERS do not


@dataclasses.dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: list[tuple[int, Sentence]] = dataclasses.field(default_factory=list)
    suppressed: list[tuple[int, Sentence]] = dataclasses.field(default_factory=list)
    # rows whose status column says they are no reader (_land_not_reader): counted as suppressed
    left_out: list[tuple[int, Sentence]] = dataclasses.field(default_factory=list)
    ignored_columns: list[str] = dataclasses.field(default_factory=list)
    needs_smtputf8: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    # rows whose language or topics were not applied: the subscriber chose their own
    kept_choices: list[tuple[int, Sentence]] = dataclasses.field(default_factory=list)

    @property
    def skipped(self) -> list[tuple[int, Sentence]]:
        """Every row that made no reader, in file order: the summary counts them as suppressed."""
        return sorted(self.suppressed + self.left_out, key=lambda pair: pair[0])

    def summary(self) -> str:
        kept = f", kept {len(self.kept_choices)} own choices" if self.kept_choices else ""
        return (
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
            f"invalid {len(self.invalid)}, suppressed {len(self.skipped)}{kept}"
        )

    def summary_ja(self) -> str:
        kept = f"、本人の選択を残した読者 {len(self.kept_choices)}" if self.kept_choices else ""
        return (f"追加 {self.added}、更新 {self.updated}、変更なし {self.unchanged}、"
                f"取り込めない行 {len(self.invalid)}、送信しないアドレス {len(self.skipped)}{kept}")


# --- reading --------------------------------------------------------------------------------


def decode(data: bytes, encoding: str = "auto") -> str:
    """Bytes of a CSV file as text; 'auto' tells UTF-8 (with or without BOM) from CP932."""
    # A file saved again by a second program can carry a second BOM: the first column's name
    # then began with it, and "no email column" named '\ufeffemail' (helper-70).
    return _decode(data, encoding).lstrip("\ufeff")


def _decode(data: bytes, encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise InvalidInput(f"unknown encoding {encoding!r} (use {', '.join(ENCODINGS)})",
                           ja=f"文字コード「{encoding}」には対応していません"
                              f"（{'、'.join(ENCODINGS)} のいずれかです）")
    _refuse_other_formats(data)
    if encoding == "auto":
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            _refuse_mixed(data, _line_of(data, exc.start))
        try:
            return data.decode("cp932")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"the file is neither UTF-8 nor CP932 (Shift_JIS): line {_line_of(data, exc.start)} "
                f"holds bytes neither can read; {SAVE_AS_CSV}",
                ja="このファイルは UTF-8 でも CP932（Shift_JIS）でもありません"
                   f"（{_line_of(data, exc.start)}行目）。{SAVE_AS_CSV_JA}",
            ) from exc
    try:
        return data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the file is not {encoding}: line {_line_of(data, exc.start)} holds bytes it cannot "
            "read; try --encoding auto",
            ja=f"このファイルは {encoding} ではありません"
               f"（{_line_of(data, exc.start)}行目に読めないバイトがあります）。"
               "文字コードを「自動」にしてお試しください",
        ) from exc


def _refuse_mixed(data: bytes, not_utf8: int) -> None:
    """Rows pasted together from a UTF-8 file and a CP932 one: read as CP932, the UTF-8 rows'
    Japanese would be stored as mojibake (山田 as 螻ｱ逕ｰ, helper-94), so the file is refused."""
    for number, line in enumerate(data.split(b"\n"), 1):
        if number != not_utf8 and not line.isascii() and _utf8(line.lstrip(b"\xef\xbb\xbf")):
            raise InvalidInput(
                f"the file mixes encodings: line {number} is UTF-8 and line {not_utf8} is not (CP932?); "
                f"{SAVE_AS_CSV} (if every line is CP932, choose that encoding)",
                ja=f"このファイルには文字コードが混在しています（{number}行目は UTF-8、{not_utf8}行目は"
                   f"それ以外）。{SAVE_AS_CSV_JA}（すべての行が CP932 なら、その文字コードを選んでください）")


def _utf8(line: bytes) -> bool:
    """Japanese written in UTF-8: its kana and kanji take three bytes each. (Two CP932 bytes of
    half-width katakana may read as one two-byte UTF-8 character: ﾕｳ as Õ³, helper-99.)"""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return any(ord(char) >= 0x800 for char in text)


def _refuse_other_formats(data: bytes) -> None:
    """What people pick by mistake instead of CSV gets its own message naming the fix."""
    if data.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        raise InvalidInput(f"the file is an Excel workbook, not CSV: {SAVE_AS_CSV}",
                           ja=f"このファイルは CSV ではなく Excel のブックです。{SAVE_AS_CSV_JA}")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(data[:4096]):
        raise InvalidInput(f"the file is UTF-16 (Excel's 'Unicode テキスト'), not CSV: {SAVE_AS_CSV}",
                           ja="このファイルは CSV ではなく UTF-16（Excel の「Unicode テキスト」）です。"
                              f"{SAVE_AS_CSV_JA}")


def _looks_utf16(head: bytes) -> bool:
    """UTF-16 without a BOM: every other byte of its ASCII is NUL (a stray NUL in a cell is not)."""
    return len(head) >= 8 and head.count(b"\x00") * 4 >= len(head)


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def parse_rows(text: str, report: ImportReport, topics: Sequence[Topic]) -> Iterator[Row]:
    """Valid rows; invalid ones go to `report.invalid` as (line, reason).

    `topics`: the configured ones, which the topic column must name (by code or by name). Every
    front passes them: the console's import once did not, and stored topics nobody is sent.
    """
    first_line = text.lstrip("\r\n").split("\n", 1)[0]
    delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next((r for r in reader if any(v.strip() for v in r)), None)
    except csv.Error as exc:
        raise _unreadable(reader.line_num or 1, exc) from exc
    if header is None:
        raise InvalidInput("the file is empty: the first row must name the columns, e.g. メールアドレス,氏名",
                           ja="ファイルが空です。1行目に列名（例：メールアドレス,氏名）を書いてください")
    columns = _map_header(header, report)
    # One row speaks for an address: the first, unless a later one opts it out (helper-94: a list
    # merged from two exports, active in one and unsubscribed in the other, made it active).
    speaking: dict[str, Row] = {}
    # An address one of whose rows could not be read: that row may have opted it out, so its
    # other rows wait until it is mended (helper-97: 退会, a status word not known, made it active).
    unread: dict[str, int] = {}
    for line, values in _records(reader):
        try:
            row = _parse_row(line, columns, values, topics)
        except MailmagError as exc:
            report.invalid.append((line, Sentence(str(exc), exc.text("ja"))))
            if key := _key_of(columns, values):
                unread.setdefault(key, line)
            continue
        kept = speaking.setdefault(row.address.key, row)
        if kept is not row:
            if row.status in _OUT and kept.status not in _OUT:
                kept, row = row, kept
                speaking[row.address.key] = kept
            report.invalid.append((row.line, _repeated(row, kept)))
    for key, line in unread.items():
        if (held := speaking.pop(key, None)) is not None:
            report.invalid.append((held.line, _held_back(held, line)))
    report.invalid.sort(key=lambda pair: pair[0])
    for row in speaking.values():
        if row.address.needs_smtputf8:
            report.needs_smtputf8.append((row.line, row.address.email))
        yield row


def _records(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """The CSV's non-blank records with the line each starts on; a broken file is one error."""
    while True:
        line = reader.line_num + 1  # type: ignore[attr-defined]
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _unreadable(line, exc) from exc
        if any(v.strip() for v in values):
            yield line, values


def _key_of(columns: dict[str, int], values: list[str]) -> str | None:
    """The address of a row that could not be read, if an address can be read in its cell (an
    office writes x@example.jp（退会）, x@example.jp 退会, mailto:x@…: helper-99)."""
    index = columns["email"]
    cell = unguard(values[index]).strip() if index < len(values) else ""
    for candidate in (cell, *_ADDRESS_IN_CELL.findall(cell)):
        try:
            return subscribers.parse_address(candidate).key
        except MailmagError:
            continue
    return None


_ADDRESS_IN_CELL = re.compile(r"[\w.+\-]+[@＠][\w\-]+(?:[.．][\w\-]+)+")


def _held_back(row: Row, unread: int) -> Sentence:
    email = row.address.email
    return Sentence(f"{email} is not imported: line {unread}, the same address, could not be read; "
                    "mend it and import the file again",
                    f"{email} は取り込みませんでした。同じアドレスの{unread}行目が読み取れないためです。"
                    "その行を直して、もう一度取り込んでください")


def _repeated(row: Row, kept: Row) -> Sentence:
    email, line = row.address.email, kept.line
    if kept.status in _OUT and row.status not in _OUT:
        status = kept.status
        return Sentence(f"{email} repeats line {line}, which says {status}: line {line} is kept",
                        f"{email} は{line}行目と重複しています。"
                        f"{line}行目の「{STATUS_JA[status]}」を採用しました")
    return Sentence(f"{email} repeats line {line}", f"{email} は{line}行目と重複しています")


def _unreadable(line: int, exc: csv.Error) -> InvalidInput:
    """One line for a CSV the csv module gives up on: nothing is imported."""
    if "field larger than field limit" in str(exc):
        return InvalidInput(
            f"line {line}: a cell is longer than {csv.field_size_limit()} characters, so this is not a "
            f"subscriber list (a missing closing quote \" makes the rest of the file one cell); "
            f"{SAVE_AS_CSV}",
            ja=f"{line}行目：{csv.field_size_limit()}文字を超えるセルがあり、読者の一覧として読めません"
               "（閉じる「\"」が抜けていると、残り全体が1つのセルになります）。"
               f"{SAVE_AS_CSV_JA}",
        )
    return InvalidInput(f"line {line}: the CSV cannot be read ({exc}); {SAVE_AS_CSV}",
                        ja=f"{line}行目：CSV として読み取れません（{exc}）。{SAVE_AS_CSV_JA}")


def _map_header(header: list[str], report: ImportReport) -> dict[str, int]:
    columns: dict[str, int] = {}
    for index, raw in enumerate(header):
        name = unicodedata.normalize("NFKC", raw).lower()
        field = HEADERS.get("".join(name.split()).replace("_", ""))
        if field is None or field in columns:
            if raw.strip():
                report.ignored_columns.append(raw.strip())
            continue
        columns[field] = index
    if "email" not in columns:
        found = ", ".join(repr(h.strip()) for h in header[:6])
        found_ja = "".join(f"「{h.strip()}」" for h in header[:6])
        raise InvalidInput(
            f"no email column in the first row ({found}): the first row must name the columns, "
            "with one called メールアドレス or email",
            ja=f"1行目にメールアドレスの列がありません（{found_ja}）。"
               "1行目に列名を書き、そのうち1つを「メールアドレス」か「email」にしてください",
        )
    return columns


def _parse_row(line: int, columns: dict[str, int], values: list[str], offered: Sequence[Topic]) -> Row:
    def cell(field: str) -> str:
        index = columns.get(field)
        value = values[index] if index is not None and index < len(values) else ""
        subscribers.refuse_controls(COLUMN_NAMES[field], value)
        return unguard(value).strip()

    return Row(
        line=line,
        address=subscribers.parse_address(cell("email")),
        name=subscribers.check_text("name", cell("name")),
        organization=subscribers.check_text("organization", cell("organization")),
        lang=subscribers.parse_lang(cell("lang")) if cell("lang") else "",
        topics=_topics(cell("topics"), offered),
        status=_status(cell("status")),
    )


def _status(raw: str) -> str:
    status = STATUSES.get(raw.strip().lower(), STATUSES.get(raw.strip()))
    if raw.strip() and status is None:
        shown, shown_ja = ", ".join(_ALL_STATUSES), "、".join(STATUS_JA[s] for s in _ALL_STATUSES)
        raise InvalidInput(f"unknown status {raw.strip()!r} (one of {shown}, or empty for active)",
                           ja=f"状態「{raw.strip()}」が分かりません（{shown_ja}のいずれか。空欄は配信中）")
    return status or ""


def _topics(raw: str, offered: Sequence[Topic]) -> list[str]:
    return topics_mod.codes_of(subscribers.parse_topics(raw), offered)


# --- landing --------------------------------------------------------------------------------

_KNOWN = (Subscriber.id, Subscriber.email_key, Subscriber.name, Subscriber.organization,
          Subscriber.lang, Subscriber.topics, Subscriber.status)


def import_rows(
    session: Session,
    rows: Iterable[Row],
    report: ImportReport,
    consent: Consent,
    *,
    resubscribe: bool = False,
    progress: Callable[[int], None] | None = None,
    write: bool = True,
) -> ImportReport:
    """Land valid rows in batches; re-importing the same rows changes nothing.

    New addresses and changed details go in as executemany batches, compared in memory
    against one read of the table: no query per row (100 000 rows land in seconds).
    `write=False` (a dry run, the console's preview) reports the same and writes nothing: on
    SQLite it then holds no write lock, which a preview held, stopping every worker's results
    and every console save, for the 20 s a 200 000-row file took (helper-100).
    """
    known = {r.email_key: r._mapping for r in session.execute(select(*_KNOWN))}
    # whoever chose their language or topics on the preferences page keeps that choice
    chose = set(session.scalars(select(ConsentEvent.subscriber_id).where(
        ConsentEvent.action == subscribers.CHOSE).distinct()))
    suppressed = set(session.scalars(select(Suppression.email_hash)))
    new: list[Row] = []
    changes: list[dict[str, Any]] = []
    count = 0
    for count, row in enumerate(rows, 1):
        stored = known.get(row.address.key)
        if row.status in NOT_READERS:
            _land_not_reader(session, row, stored, suppressed, report, write=write)
        elif stored is None and row.address.hash not in suppressed:
            new.append(row)
        elif stored is not None and stored["status"] not in subscribers.OPTED_OUT:
            _compare(row, stored, changes, report, own_choice=stored["id"] in chose)
        elif write:
            _land_opted_out(session, row, report, consent, resubscribe)
        else:
            _opted_out_unwritten(row, stored, report, resubscribe)
        if len(new) >= BATCH or len(changes) >= BATCH:
            _flush(session, new, changes, consent, report, write=write)
        if progress and count % BATCH == 0:
            progress(BATCH)
    _flush(session, new, changes, consent, report, write=write)
    if progress:
        progress(count % BATCH)
    return report


def _compare(row: Row, stored: Any, changes: list[dict[str, Any]], report: ImportReport, *,
             own_choice: bool) -> None:
    changed = subscribers.field_changes(
        stored, name=row.name, organization=row.organization, lang=row.lang, topics=row.topics
    )
    if own_choice and ("lang" in changed or "topics" in changed):
        changed.pop("lang", None)
        changed.pop("topics", None)
        report.kept_choices.append((row.line, Sentence(
            f"{row.address.email} chose their language and topics on the preferences page: kept",
            f"{row.address.email} は配信設定のページで言語とテーマを選んでいるため、その選択を残しました")))
    if changed:
        changes.append({"id": stored["id"], **changed, "updated_at": utcnow()})
        report.updated += 1
    else:
        report.unchanged += 1


def _land_opted_out(
    session: Session, row: Row, report: ImportReport, consent: Consent, resubscribe: bool
) -> None:
    """Unsubscribed, bounced or forgotten: the rare row that goes through `subscribers.add`."""
    outcome, subscriber = subscribers.add(
        session, row.address, consent, name=row.name, organization=row.organization,
        lang=row.lang, topics=row.topics, resubscribe=resubscribe,
    )
    _report_out(report, row, outcome, subscriber.status if subscriber else "erased")


def _opted_out_unwritten(row: Row, stored: Any, report: ImportReport, resubscribe: bool) -> None:
    """What `_land_opted_out` reports for the row, from subscribers.add's own rule, without its writes."""
    outcome = subscribers.answer_for_out(known=stored is not None, resubscribe=resubscribe)
    _report_out(report, row, outcome, stored["status"] if stored is not None else "erased")


def _report_out(report: ImportReport, row: Row, outcome: str, status: str) -> None:
    """An out row's outcome counted: left as it is (`status`), or back (added, updated)."""
    if outcome == "suppressed":
        report.suppressed.append((row.line, _left_as_it_is(row.address.email, status)))
    else:
        setattr(report, outcome, getattr(report, outcome) + 1)


def _land_not_reader(session: Session, row: Row, stored: Any, suppressed: set[str],
                     report: ImportReport, *, write: bool) -> None:
    """A row the file says is no reader. Out (unsubscribed, bounced, erased) and unknown here: its
    address is suppressed, so no later import or command adds it without a new opt-in. Pending
    (never confirmed) is not imported: only the person's own confirmation makes a reader. A stored
    subscriber is left as the list has it: which word is newer, the file cannot say."""
    status, email = row.status, row.address.email
    if stored is not None and stored["status"] == status:
        report.left_out.append((row.line, _left_as_it_is(email, status)))
        return
    if stored is not None:
        said = (f"{email} is {status} in the file and {stored['status']} in the list; left as it is",
                f"{email} はファイルでは{STATUS_JA[status]}、名簿では{STATUS_JA[stored['status']]}"
                "のため、名簿のままにしました")
    elif status == "pending":
        said = (f"{email} never confirmed its subscription (pending): not imported; it may subscribe again",
                f"{email} は登録確認待ち（未確認）のため取り込みませんでした。本人が改めて申し込めます")
    else:
        if row.address.hash not in suppressed:
            if write:
                session.add(Suppression(email_hash=row.address.hash, reason=f"imported as {status}"))
            suppressed.add(row.address.hash)
        said = (f"{email} is {status} in the file: kept as an address nothing is sent to",
                f"{email} はファイルで{STATUS_JA[status]}のため、送信しないアドレスとして扱います")
    report.left_out.append((row.line, Sentence(*said)))


def _left_as_it_is(email: str, status: str) -> Sentence:
    return Sentence(f"{email} is {status}; left as it is",
                    f"{email} は{STATUS_JA.get(status, status)}のため、そのままにしました")


def _flush(session: Session, new: list[Row], changes: list[dict[str, Any]], consent: Consent,
           report: ImportReport, *, write: bool) -> None:
    if changes:
        if write:
            session.execute(update(Subscriber), changes)  # ORM bulk UPDATE by primary key
        changes.clear()
    if new:
        if write:
            _insert(session, new, consent)
        report.added += len(new)
        new.clear()


def _insert(session: Session, batch: list[Row], consent: Consent) -> None:
    """New subscribers, then their opt-in records: two executemany statements.

    The new rows' ids come back from the INSERT itself: read back by address after it, they
    took PostgreSQL a scan of every row the import had added so far (its planner cannot know
    the table grew inside the transaction), so 200 000 rows took 10 minutes, not 40 seconds."""
    now = utcnow()
    table = cast(Table, Subscriber.__table__)
    try:
        added = session.execute(insert(table).returning(table.c.email_key, table.c.id), [
            dict(email=r.address.email, email_key=r.address.key, name=r.name, organization=r.organization,
                 lang=r.lang or "ja", topics=r.topics, status="active", status_reason="",
                 created_at=now, updated_at=now, confirmed_at=now)
            for r in batch
        ])
        ids = {key: id_ for key, id_ in added}
    except IntegrityError as exc:  # the list was read when the import began (helper-99: PostgreSQL)
        raise StateError(
            "an address in the file was added to the list while the import ran (by the subscribe form, "
            "or another command): nothing was imported; import the file again",
            ja="取り込みの間に、ファイルにあるアドレスが名簿に加わりました（申し込みフォームや別の操作による）。"
               "何も取り込んでいません。もう一度取り込んでください") from exc
    session.execute(insert(cast(Table, ConsentEvent.__table__)), [
        dict(subscriber_id=ids[r.address.key], email_hash=r.address.hash, action="opt_in",
             channel=consent.channel, source=consent.source, ip=consent.ip, at=now)
        for r in batch
    ])


def import_file(
    session: Session,
    path: Path,
    consent: Consent,
    *,
    encoding: str = "auto",
    resubscribe: bool = False,
    progress: Callable[[int], None] | None = None,
    topics: Sequence[Topic],
    write: bool = True,
) -> ImportReport:
    """Read and land one CSV file (the caller decides whether to commit: --strict; `write=False`
    for --dry-run, see import_rows).

    `topics`: the configured ones; a row naming another is invalid (line L: unknown topic …).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}",
                           ja=f"「{path}」を読めません：{exc.strerror}") from exc
    report = ImportReport()
    rows = parse_rows(decode(data, encoding), report, topics)
    return import_rows(session, rows, report, consent, resubscribe=resubscribe, progress=progress,
                       write=write)
