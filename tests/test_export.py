"""`mailmag subscribers export`: CSV that Excel opens, written whole or not at all."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from conftest import Mailmag, one_database
from dbstate import snapshot

SAMPLES = Path(__file__).resolve().parents[1] / "subscribers"


def _parse(data: bytes, encoding: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(encoding), newline="")))


def _fill(mailmag) -> None:
    mailmag.ok("subscribers", "add", "taro@example.jp", "--name", "山田 太郎", "--org", "広島大学",
               "--topic", "events", "--topic", "news")
    mailmag.ok("subscribers", "add", "john@example.com", "--name", "John, Jr.", "--lang", "en")
    mailmag.ok("subscribers", "add", "gone@example.jp")
    mailmag.ok("subscribers", "remove", "gone@example.jp")


def test_default_is_utf8_with_bom_japanese_headers_crlf_on_stdout(mailmag):
    _fill(mailmag)
    data = mailmag.ok("subscribers", "export").stdout_bytes
    assert data.startswith(b"\xef\xbb\xbf\xe3\x83\xa1")  # BOM, then メ: Excel reads it as UTF-8
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    table = _parse(data, "utf-8-sig")
    assert table[0] == ["メールアドレス", "氏名", "所属", "言語", "配信カテゴリ", "状態", "登録日時"]
    assert [r[:6] for r in table[1:]] == [
        ["taro@example.jp", "山田 太郎", "広島大学", "ja", "events;news", "active"],
        ["john@example.com", "John, Jr.", "", "en", "", "active"],
        ["gone@example.jp", "", "", "ja", "", "unsubscribed"],
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", table[1][6])  # local time, as Excel reads dates


def test_to_a_file_in_cp932_with_english_headers(mailmag, tmp_path):
    _fill(mailmag)
    mailmag.ok("subscribers", "add", "mori@example.jp", "--name", "森〜髙橋")  # wave dash typed on a Mac
    out = tmp_path / "名簿.csv"
    result = mailmag.ok("subscribers", "export", "-o", str(out), "--encoding", "cp932", "--header", "en")
    assert result.stderr == f"exported 4 subscribers to {out}\n"
    assert out.stat().st_mode & 0o777 == 0o600  # personal data: the owner's eyes only
    table = _parse(out.read_bytes(), "cp932")
    assert table[0] == ["email", "name", "organization", "lang", "topics", "status", "created_at"]
    assert table[1][:3] == ["taro@example.jp", "山田 太郎", "広島大学"]
    assert table[4][1] == "森～髙橋"  # what Excel shows for 0x8160


def test_a_character_cp932_lacks_stops_the_export_and_leaves_the_old_file(mailmag, tmp_path, db_url):
    _fill(mailmag)
    mailmag.ok("subscribers", "add", "yoshida@example.jp", "--name", "𠮷田 花子")
    out = tmp_path / "list.csv"
    out.write_bytes(b"last week's export")
    before = snapshot(db_url)
    result = mailmag("subscribers", "export", "-o", str(out), "--encoding", "cp932")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: line 5 (yoshida@example.jp) holds '𠮷' (U+20BB7), which cp932 cannot write: export "
        "with --encoding utf-8-sig (Excel opens it too); nothing was written\n")
    assert out.read_bytes() == b"last week's export"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert snapshot(db_url) == before
    mailmag.ok("subscribers", "export", "-o", str(out))  # the default encoding holds everything
    assert _parse(out.read_bytes(), "utf-8-sig")[4][1] == "𠮷田 花子"


def test_an_unwritable_destination_is_one_line(mailmag, tmp_path):
    result = mailmag("subscribers", "export", "-o", str(tmp_path / "no-such-dir" / "list.csv"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot write {tmp_path / 'no-such-dir' / 'list.csv'}: ")


def test_an_export_imports_back_unchanged(mailmag, tmp_path, db_url):
    mailmag.ok("subscribers", "import", str(SAMPLES / "sample-utf8.csv"))
    mailmag.ok("subscribers", "remove", "john.smith@example.com")
    out = tmp_path / "export.csv"
    mailmag.ok("subscribers", "export", "-o", str(out))
    before = snapshot(db_url)
    result = mailmag.ok("subscribers", "import", str(out))
    assert result.stdout.splitlines() == [
        "added 0, updated 0, unchanged 8, invalid 0, suppressed 1",
        "line 6: skipped: john.smith@example.com is unsubscribed; left as it is",
    ]
    assert result.stderr == "ignored columns: 登録日時\n"
    assert snapshot(db_url) == before


@one_database  # the move's other end is a second SQLite file here
def test_an_export_imported_into_a_new_database_keeps_every_opt_out(mailmag, tmp_path, config_file):
    """helper-85: moving to a new database (SQLite to PostgreSQL) by export and import made the
    unsubscribed and bounced readers active again: the 状態 column was ignored."""
    _fill(mailmag)  # gone@example.jp unsubscribed
    mailmag.ok("subscribers", "add", "pending@example.jp", "--pending")
    out = tmp_path / "export.csv"
    mailmag.ok("subscribers", "export", "-o", str(out))
    other = tmp_path / "other"
    other.mkdir()
    moved = config_file.read_text().replace(str(config_file.parent), str(other))
    new_config = other / "mailmag.toml"
    new_config.write_text(moved)
    fresh = Mailmag(new_config)
    fresh.ok("init")
    result = fresh.ok("subscribers", "import", str(out))
    assert result.stdout.splitlines()[0] == "added 2, updated 0, unchanged 0, invalid 0, suppressed 2"
    listed = {s["email"]: s["status"] for s in json.loads(fresh.ok("subscribers", "list", "--json").stdout)}
    assert listed == {"taro@example.jp": "active", "john@example.com": "active"}
    again = fresh("subscribers", "add", "gone@example.jp")  # as before the move: needs --resubscribe
    assert "gone@example.jp" not in {s["email"] for s in json.loads(
        fresh.ok("subscribers", "list", "--json").stdout) if s["status"] == "active"}, again.output
    assert fresh.ok("subscribers", "import", str(out)).stdout.splitlines()[0] == (
        "added 0, updated 0, unchanged 2, invalid 0, suppressed 2")  # and again: nothing changes


def test_an_empty_list_exports_the_header_only(mailmag):
    table = _parse(mailmag.ok("subscribers", "export").stdout_bytes, "utf-8-sig")
    assert table == [["メールアドレス", "氏名", "所属", "言語", "配信カテゴリ", "状態", "登録日時"]]
