"""Subscriber lists in and out: CSV as Excel in Japan writes it (UTF-8 with BOM, or CP932)."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from mailmag.audience import subscribers
from mailmag.audience.subscribers import Address, Consent
from mailmag.errors import InvalidInput, MailmagError
from mailmag.models import ConsentEvent, Subscriber, Suppression, utcnow

ENCODINGS = ("auto", "utf-8", "utf-8-sig", "cp932", "shift_jis")

# Column name (case-insensitive, spaces ignored) → field. Japanese and English both work.
HEADERS = {
    "email": "email", "e-mail": "email", "mail": "email", "emailaddress": "email",
    "メールアドレス": "email", "メール": "email", "アドレス": "email", "電子メール": "email",
    "name": "name", "氏名": "name", "名前": "name", "お名前": "name",
    "organization": "organization", "organisation": "organization", "org": "organization",
    "company": "organization", "所属": "organization", "会社名": "organization",
    "団体名": "organization", "所属機関": "organization", "機関名": "organization",
    "lang": "lang", "language": "lang", "言語": "lang",
    "topics": "topics", "topic": "topics", "categories": "topics", "配信カテゴリ": "topics",
    "カテゴリ": "topics", "カテゴリー": "topics",
}
EXPORT_HEADERS = {
    "ja": ("メールアドレス", "氏名", "所属", "言語", "配信カテゴリ", "状態", "登録日時"),
    "en": ("email", "name", "organization", "lang", "topics", "status", "created_at"),
}


@dataclasses.dataclass(frozen=True)
class Row:
    line: int
    address: Address
    name: str
    organization: str
    lang: str
    topics: list[str]


@dataclasses.dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    suppressed: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    ignored_columns: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
            f"invalid {len(self.invalid)}, suppressed {len(self.suppressed)}"
        )


def decode(data: bytes, encoding: str = "auto") -> str:
    """Bytes of a CSV file as text; 'auto' tells UTF-8 (with or without BOM) from CP932."""
    if encoding not in ENCODINGS:
        raise InvalidInput(f"unknown encoding {encoding!r} (use {', '.join(ENCODINGS)})")
    if encoding == "auto":
        if data.startswith(b"\xef\xbb\xbf"):
            return data.decode("utf-8-sig")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "cp932"
    try:
        return data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the file is not valid {encoding} (byte {exc.start}); try --encoding auto, utf-8 or cp932"
        ) from exc


def parse_rows(text: str, report: ImportReport) -> Iterator[Row]:
    """Valid rows; invalid ones go to `report.invalid` as (line, reason)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise InvalidInput("the file is empty: expected a header row with an email column")
    columns = _map_header(header, report)
    seen: dict[str, int] = {}
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        try:
            row = _parse_row(line, columns, values)
        except MailmagError as exc:
            report.invalid.append((line, str(exc)))
            continue
        if row.address.key in seen:
            report.invalid.append((line, f"{row.address.email} repeats line {seen[row.address.key]}"))
            continue
        seen[row.address.key] = line
        yield row


def _map_header(header: list[str], report: ImportReport) -> dict[str, int]:
    columns: dict[str, int] = {}
    for index, raw in enumerate(header):
        name = raw.strip().lower().replace(" ", "").replace("　", "").replace("_", "")
        field = HEADERS.get(name)
        if field is None or field in columns:
            if raw.strip():
                report.ignored_columns.append(raw.strip())
            continue
        columns[field] = index
    if "email" not in columns:
        raise InvalidInput(
            f"no email column in the header {header!r}: name one 'email' or 'メールアドレス'"
        )
    return columns


def _parse_row(line: int, columns: dict[str, int], values: list[str]) -> Row:
    def cell(field: str) -> str:
        index = columns.get(field)
        return values[index].strip() if index is not None and index < len(values) else ""

    return Row(
        line=line,
        address=subscribers.parse_address(cell("email")),
        name=cell("name"),
        organization=cell("organization"),
        lang=subscribers.parse_lang(cell("lang")) if cell("lang") else "",
        topics=subscribers.parse_topics(cell("topics")),
    )


def import_rows(
    session: Session,
    rows: Iterable[Row],
    report: ImportReport,
    consent: Consent,
    *,
    resubscribe: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Land valid rows in batches. Re-importing the same rows changes nothing."""
    existing = {s.email_key: s for s in session.scalars(select(Subscriber))}
    suppressed = set(session.scalars(select(Suppression.email_hash)))
    batch: list[Row] = []
    for row in rows:
        current = existing.get(row.address.key)
        if current is None and row.address.hash not in suppressed:
            batch.append(row)
        else:
            _apply_to_existing(session, row, report, consent, resubscribe)
        if len(batch) >= 1000:
            _insert_batch(session, batch, consent, report)
            batch.clear()
        if progress:
            progress(1)
    _insert_batch(session, batch, consent, report)
    return report


def _apply_to_existing(
    session: Session, row: Row, report: ImportReport, consent: Consent, resubscribe: bool
) -> None:
    outcome, subscriber = subscribers.add(
        session, row.address, consent, name=row.name, organization=row.organization,
        lang=row.lang, topics=row.topics, resubscribe=resubscribe,
    )
    if outcome == "suppressed":
        status = subscriber.status if subscriber else "forgotten"
        report.suppressed.append(
            (row.line, f"{row.address.email} is {status}; not reactivated (use --resubscribe)")
        )
    else:
        setattr(report, outcome, getattr(report, outcome) + 1)


def _insert_batch(session: Session, batch: list[Row], consent: Consent, report: ImportReport) -> None:
    """New subscribers and their opt-in records in two multi-row statements."""
    if not batch:
        return
    now = utcnow()
    ids = session.execute(
        insert(Subscriber).returning(Subscriber.id, sort_by_parameter_order=True),
        [
            dict(email=r.address.email, email_key=r.address.key, name=r.name,
                 organization=r.organization, lang=r.lang or "ja", topics=r.topics,
                 status="active", status_reason="", created_at=now, updated_at=now,
                 confirmed_at=now)
            for r in batch
        ],
    ).scalars().all()
    session.execute(
        insert(ConsentEvent),
        [
            dict(subscriber_id=sid, email_hash=r.address.hash, action="opt_in",
                 channel=consent.channel, source=consent.source, at=now)
            for sid, r in zip(ids, batch, strict=True)
        ],
    )
    report.added += len(batch)


def import_file(
    session: Session,
    path: Path,
    consent: Consent,
    *,
    encoding: str = "auto",
    resubscribe: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Read and land one CSV file (the caller decides whether to commit: --strict, --dry-run)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    report = ImportReport()
    rows = list(parse_rows(decode(data, encoding), report))
    return import_rows(session, rows, report, consent, resubscribe=resubscribe, progress=progress)


def export_csv(session: Session, out: io.TextIOBase, *, header: str = "ja") -> int:
    """Write every subscriber (any status) as CSV; returns the number of rows."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_HEADERS[header])
    count = 0
    for s in session.scalars(select(Subscriber).order_by(Subscriber.id)).yield_per(1000):
        writer.writerow(
            [s.email, s.name, s.organization, s.lang, ";".join(s.topics), s.status,
             s.created_at.isoformat(timespec="seconds")]
        )
        count += 1
    return count
