"""Subscriber lists out: CSV that Excel opens (UTF-8 with BOM, or CP932), written whole."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailmag.errors import InvalidInput
from mailmag.models import Subscriber

ENCODINGS = ("utf-8-sig", "cp932")
EXPORT_HEADERS = {
    "ja": ("メールアドレス", "氏名", "所属", "言語", "配信カテゴリ", "状態", "登録日時"),
    "en": ("email", "name", "organization", "lang", "topics", "status", "created_at"),
}
# Characters that Windows writes under another code point than Python's cp932 codec maps:
# the "wave dash problem". Without this a name typed on a Mac with 〜 could not be exported.
CP932_EQUIVALENTS = str.maketrans({
    "\u301c": "\uff5e", "\u2016": "\u2225", "\u2212": "\uff0d", "\u00a2": "\uffe0",
    "\u00a3": "\uffe1", "\u00ac": "\uffe2", "\u2014": "\u2015",
})

# OWASP's CSV injection rule: a cell starting with one of these is a formula to Excel (or
# LibreOffice), so an export prefixes it with an apostrophe, which shows the value as text.
# A value that starts with an apostrophe already gets a second one, so `unguard` (applied
# by the import) gives back exactly what was stored.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
GUARD = "'"

_EXPORTED = (Subscriber.email, Subscriber.name, Subscriber.organization, Subscriber.lang,
             Subscriber.topics, Subscriber.status, Subscriber.created_at)


def export_bytes(
    session: Session, *, encoding: str = "utf-8-sig", header: str = "ja", zone: dt.tzinfo = dt.UTC
) -> tuple[bytes, int]:
    """Every subscriber (any status) as CSV bytes Excel opens; (bytes, number of subscribers).

    Built whole in memory so that a character the encoding lacks stops the export before
    anything is written, naming the subscriber.
    """
    if encoding not in ENCODINGS:
        raise InvalidInput(f"unknown export encoding {encoding!r} (use {', '.join(ENCODINGS)})",
                           ja=f"書き出しの文字コード「{encoding}」には対応していません"
                              f"（{'、'.join(ENCODINGS)} のいずれかです）")
    lines = [_subscriber_line(r, zone) for r in session.execute(select(*_EXPORTED).order_by(Subscriber.id))]
    text = _csv_line(EXPORT_HEADERS[header]) + "".join(lines)
    if encoding == "utf-8-sig":
        return text.encode("utf-8-sig"), len(lines)
    try:
        return text.translate(CP932_EQUIVALENTS).encode(encoding), len(lines)
    except UnicodeEncodeError:
        raise _unencodable(lines, encoding) from None


def _subscriber_line(values: Sequence[Any], zone: dt.tzinfo) -> str:
    """Topics as 'a;b', the time in the configured zone as Excel reads a date."""
    *front, topics, status, created = values
    return _csv_line([*front, ";".join(topics), status, created.astimezone(zone).strftime("%Y-%m-%d %H:%M")])


def _csv_line(values: Iterable[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(guard(v) for v in values)
    return out.getvalue()


def guard(value: str) -> str:
    """A cell Excel shows as text, never runs: '=SUM(…)' becomes "'=SUM(…)"."""
    return GUARD + value if value.startswith((*FORMULA_START, GUARD)) else value


def unguard(value: str) -> str:
    """What `guard` wrote, read back: one leading apostrophe before a formula start or another apostrophe."""
    return value[1:] if value.startswith(GUARD) and value[1:2] in (*FORMULA_START, GUARD) else value


def _unencodable(lines: list[str], codec: str) -> InvalidInput:
    """The error naming the first subscriber whose line the codec cannot write."""
    for number, line in enumerate(lines, 2):
        try:
            line.translate(CP932_EQUIVALENTS).encode(codec)
        except UnicodeEncodeError as exc:
            char, email = exc.object[exc.start], next(csv.reader([line]))[0]
            return InvalidInput(
                f"line {number} ({email}) holds {char!r} (U+{ord(char):04X}), which {codec} cannot "
                "write: export with --encoding utf-8-sig (Excel opens it too); nothing was written",
                ja=f"{number}行目（{email}）の「{char}」（U+{ord(char):04X}）は {codec} で書き出せません。"
                   "文字コード utf-8-sig で書き出してください（Excel でも開けます）。何も書き出していません",
            )
    return InvalidInput(f"the list cannot be written in {codec}: export with --encoding utf-8-sig",
                        ja=f"一覧を {codec} で書き出せません。文字コード utf-8-sig で書き出してください")


def write_export(path: Path, data: bytes) -> None:
    """Write the file whole or not at all: a temporary file beside it, renamed into place."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}",
                           ja=f"「{path}」に書き出せません：{exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {path}: {exc.strerror}",
                           ja=f"「{path}」に書き出せません：{exc.strerror}") from exc
