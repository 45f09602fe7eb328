"""`mailmag subscribers import`: Excel's CSV in Japan, every bad input, and what lands."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
from clocked import mailmag_command
from conftest import one_database
from dbstate import count, rows, snapshot
from sqlalchemy import select

from mailmag.audience.subscribers import email_hash

SAMPLES = Path(__file__).resolve().parents[1] / "subscribers"
JA_HEADER = "メールアドレス,氏名,所属,言語,配信カテゴリ"
EMPTY = "the file is empty: the first row must name the columns, e.g. メールアドレス,氏名"


def _csv(tmp_path: Path, text: str, encoding: str = "utf-8-sig", name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", "\r\n").encode(encoding))
    return path


def _listed(mailmag) -> dict[str, dict]:
    return {s["email"]: s for s in json.loads(mailmag.ok("subscribers", "list", "--json").stdout)}


# --- the sample files and the encodings ------------------------------------------------------


def test_sample_utf8_repairs_fullwidth_at_and_reports_the_bad_row(mailmag):
    result = mailmag.ok("subscribers", "import", str(SAMPLES / "sample-utf8.csv"))
    assert result.stdout.splitlines() == [
        "added 9, updated 0, unchanged 0, invalid 1, suppressed 0",
        "line 8: invalid e-mail address 'ito.makoto@example': The part after the @-sign is not valid. "
        "It should have a period.",
    ]
    listed = _listed(mailmag)
    assert listed["sato.hanako@example.jp"]["name"] == "佐藤 花子"  # written with ＠
    assert listed["suzuki.ichiro@example.co.jp"]["lang"] == "ja"  # 日本語, spaces around the address
    assert listed["nakamura.sakura@example.jp"]["lang"] == "en"  # 英語
    assert listed["kobayashi.sho@example.lg.jp"]["topics"] == ["events"]
    assert listed["john.smith@example.com"]["organization"] == "Example Corporation"


@pytest.mark.parametrize("encoding", ["auto", "cp932"])
def test_sample_cp932_with_other_japanese_headers(mailmag, encoding):
    result = mailmag.ok("subscribers", "import", str(SAMPLES / "sample-cp932.csv"), "--encoding", encoding)
    assert result.stdout == "added 5, updated 0, unchanged 0, invalid 0, suppressed 0\n"
    takahashi = _listed(mailmag)["takahashi.kazuo@example.jp"]
    # The headers here are 名前 and 会社名.
    assert (takahashi["name"], takahashi["organization"]) == ("髙橋 和夫", "株式会社サンプル工業")


def test_sample_en_with_english_headers(mailmag):
    result = mailmag.ok("subscribers", "import", str(SAMPLES / "sample-en.csv"))
    assert result.stdout == "added 3, updated 0, unchanged 0, invalid 0, suppressed 0\n"
    lee = _listed(mailmag)["lee.minji@example.com"]
    assert (lee["lang"], lee["topics"], lee["organization"]) == ("en", ["events", "news"],
                                                                 "Sample Institute of Technology")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
@one_database  # a rule of the input, not of the database
def test_auto_detects_each_encoding(mailmag, tmp_path, encoding):
    path = _csv(tmp_path, f"{JA_HEADER}\ntaro@example.jp,山田 太郎,広島大学,ja,\n", encoding)
    assert mailmag.ok("subscribers", "import", str(path)).stdout.startswith("added 1,")
    assert _listed(mailmag)["taro@example.jp"]["organization"] == "広島大学"


@one_database
@pytest.mark.parametrize("encoding", ["auto", "utf-8"])
def test_a_file_saved_twice_with_a_bom_each_time_imports(mailmag, tmp_path, encoding):
    """helper-70: a second program's BOM before the first made the email column '\\ufeffemail',
    and the import said there was no email column."""
    path = _csv(tmp_path, f"\ufeff{JA_HEADER}\ntaro@example.jp,山田 太郎,広島大学,ja,\n")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf\xef\xbb\xbf")
    result = mailmag.ok("subscribers", "import", str(path), "--encoding", encoding)
    assert result.stdout.startswith("added 1,")
    assert _listed(mailmag)["taro@example.jp"]["name"] == "山田 太郎"


def test_tab_separated_and_odd_header_spellings(mailmag, tmp_path):
    path = _csv(tmp_path, "E-Mail Address\tお名前\t会社名\tLanguage\n"
                " taro＠example.jp \t山田\t広島大学\tEN\n")
    assert mailmag.ok("subscribers", "import", str(path)).stdout.startswith("added 1,")
    assert _listed(mailmag)["taro@example.jp"]["lang"] == "en"


def test_unknown_columns_are_named_on_stderr(mailmag, tmp_path):
    path = _csv(tmp_path, "email,電話番号\ntaro@example.jp,082-000-0000\n")
    result = mailmag.ok("subscribers", "import", str(path))
    assert result.stdout.startswith("added 1,")
    assert result.stderr == "ignored columns: 電話番号\n"


# --- bad input: the message, and nothing else changed ---------------------------------------


def test_bad_rows_are_reported_and_skipped_the_rest_lands(mailmag, tmp_path, db_url):
    path = _csv(tmp_path, f"{JA_HEADER}\n"
                "taro@example.jp,山田 太郎,,ja,\n"
                "hanako.example.jp,佐藤 花子,,ja,\n"
                "john@example.com,John,,fr,\n"
                "\n"
                f"ichiro@example.jp,{'長' * 201},,ja,\n"
                "Taro@Example.JP,山田 太郎 (2),,ja,\n"
                "misaki@example.jp,田中 美咲,,en,\n")
    result = mailmag.ok("subscribers", "import", str(path))
    assert result.stdout.splitlines() == [
        "added 2, updated 0, unchanged 0, invalid 4, suppressed 0",
        "line 3: invalid e-mail address 'hanako.example.jp': An email address must have an @-sign.",
        "line 4: unknown language 'fr' (use ja or en)",
        "line 6: the name is 201 characters long (at most 200)",
        "line 7: Taro@example.jp repeats line 2",
    ]
    assert sorted(_listed(mailmag)) == ["misaki@example.jp", "taro@example.jp"]
    assert _listed(mailmag)["taro@example.jp"]["name"] == "山田 太郎"  # the first line wins
    assert count(db_url, "consent_events") == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("email,name\njose@example.com,José Müller\n".encode("cp1252"),
         "the file is neither UTF-8 nor CP932 (Shift_JIS): line 2 holds bytes neither can read; "
         "save it from Excel as 'CSV UTF-8 (コンマ区切り)' and import that file"),
        (f"{JA_HEADER}\ntaro@example.jp\n".encode("utf-16"),
         "the file is UTF-16 (Excel's 'Unicode テキスト'), not CSV: save it from Excel as "
         "'CSV UTF-8 (コンマ区切り)' and import that file"),
        (b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 40,
         "the file is an Excel workbook, not CSV: save it from Excel as 'CSV UTF-8 (コンマ区切り)' "
         "and import that file"),
        ("氏名,所属\n山田 太郎,広島大学\n".encode("utf-8-sig"),
         "no email column in the first row ('氏名', '所属'): the first row must name the columns, "
         "with one called メールアドレス or email"),
        (b"taro@example.jp\nhanako@example.jp\n",
         "no email column in the first row ('taro@example.jp'): the first row must name the columns, "
         "with one called メールアドレス or email"),
        (b"", EMPTY),
        (b"\xef\xbb\xbf\r\n\r\n", EMPTY),
        # helper-94: read as CP932, the UTF-8 row's 山田 was stored as 螻ｱ逕ｰ
        ("email,name\nm1@example.jp,山田\nm2@example.jp,x\n".encode()
         + "m3@example.jp,佐藤\n".encode("cp932"),
         "the file mixes encodings: line 2 is UTF-8 and line 4 is not (CP932?); save it from Excel as "
         "'CSV UTF-8 (コンマ区切り)' and import that file (if every line is CP932, choose that encoding)"),
    ],
    ids=["latin1", "utf16", "xlsx", "no-email-column", "no-header", "empty", "bom-and-blank-lines",
         "utf8-and-cp932"],
)
@one_database  # a rule of the input, not of the database
def test_unreadable_files_are_one_line_errors(mailmag, tmp_path, db_url, content, message):
    mailmag.ok("subscribers", "add", "keep@example.jp")
    before = snapshot(db_url)
    path = tmp_path / "list.csv"
    path.write_bytes(content)
    result = mailmag("subscribers", "import", str(path))
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")
    assert snapshot(db_url) == before


def test_explicit_wrong_encoding_names_the_line(mailmag, tmp_path, db_url):
    path = _csv(tmp_path, f"{JA_HEADER}\ntaro@example.jp,山田 太郎,,ja,\n", "cp932")
    before = snapshot(db_url)
    result = mailmag("subscribers", "import", str(path), "--encoding", "utf-8")
    assert result.stderr == ("Error: the file is not utf-8: line 1 holds bytes it cannot read; "
                             "try --encoding auto\n")
    assert snapshot(db_url) == before


def test_missing_file(mailmag, tmp_path, db_url):
    before = snapshot(db_url)
    result = mailmag("subscribers", "import", str(tmp_path / "nope.csv"))
    assert (result.exit_code, result.stderr) == (1, f"Error: cannot read {tmp_path / 'nope.csv'}: "
                                                    "No such file or directory\n")
    assert snapshot(db_url) == before


def test_strict_lands_nothing_when_one_row_is_bad(mailmag, tmp_path, db_url):
    mailmag.ok("subscribers", "add", "taro@example.jp", "--name", "旧姓")
    before = snapshot(db_url)
    path = _csv(tmp_path, f"{JA_HEADER}\ntaro@example.jp,山田 太郎,,,\nhanako@example.jp,,,,\nbad@,,,,\n")
    result = mailmag("subscribers", "import", str(path), "--strict")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "added 1, updated 1, unchanged 0, invalid 1, suppressed 0",
        "line 4: invalid e-mail address 'bad@': There must be something after the @-sign.",
    ]
    assert result.stderr == ("Error: 1 row is invalid and --strict is given: nothing was imported; "
                             "fix the rows above and import again\n")
    assert snapshot(db_url) == before


def test_dry_run_reports_the_same_and_writes_nothing(mailmag, tmp_path, db_url):
    mailmag.ok("subscribers", "add", "taro@example.jp")
    mailmag.ok("subscribers", "add", "gone@example.jp")
    mailmag.ok("subscribers", "remove", "gone@example.jp")
    before = snapshot(db_url)
    path = _csv(tmp_path, f"{JA_HEADER}\ntaro@example.jp,山田 太郎,,,\nhanako@example.jp,,,,\n"
                "gone@example.jp,,,,\nbad,,,,\n")
    dry = mailmag.ok("subscribers", "import", str(path), "--dry-run")
    assert dry.stderr == "dry run: nothing was written\n"
    assert snapshot(db_url) == before
    real = mailmag.ok("subscribers", "import", str(path))
    assert dry.stdout == real.stdout
    assert real.stdout.splitlines()[0] == "added 1, updated 1, unchanged 0, invalid 1, suppressed 1"
    assert snapshot(db_url) != before


@pytest.mark.parametrize("resubscribe", [(), ("--resubscribe",)])
def test_dry_run_reports_the_same_for_opted_out_and_suppressed_rows(mailmag, tmp_path, db_url, resubscribe):
    """A dry run works out what each row does without writing it (helper-100: it wrote and rolled
    back, holding SQLite's write lock); what comes back with --resubscribe is counted alike."""
    for email in ("gone@example.jp", "erased@example.jp"):
        mailmag.ok("subscribers", "add", email)
    mailmag.ok("subscribers", "remove", "gone@example.jp")
    mailmag.ok("subscribers", "remove", "erased@example.jp", "--forget")
    before = snapshot(db_url)
    path = _csv(tmp_path, "email,name,status\ngone@example.jp,戻る,\nerased@example.jp,,\n"
                "left@example.jp,,配信停止\nleft@example.jp,,\nnew@example.jp,新,\n")
    dry = mailmag.ok("subscribers", "import", str(path), "--dry-run", *resubscribe)
    assert snapshot(db_url) == before
    real = mailmag.ok("subscribers", "import", str(path), *resubscribe)
    assert dry.stdout == real.stdout
    assert real.stdout.splitlines()[0] == ("added 2, updated 1, unchanged 0, invalid 1, suppressed 1"
                                           if resubscribe else
                                           "added 1, updated 0, unchanged 0, invalid 1, suppressed 3")
    assert count(db_url, "subscribers") == (3 if resubscribe else 2)  # new@ (and erased@ back)


@one_database
def test_a_dry_run_waits_for_no_writer(mailmag, tmp_path, db_url):
    """A worker or the console holding SQLite's write lock does not hold up a dry run, and a dry
    run holds up none of them: it only reads. Nor a listing: every command checked the schema
    under the write lock, waiting busy_timeout_seconds and then saying "database is locked"."""
    import sqlite3

    path = _csv(tmp_path, "email,name\n" + "".join(f"r{i}@example.jp,読者{i}\n" for i in range(2500)))
    writer = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN IMMEDIATE")
        dry = mailmag.ok("subscribers", "import", str(path), "--dry-run")
        assert dry.stdout.startswith("added 2500, updated 0,")
        assert mailmag.ok("subscribers", "list").stdout == ""
        assert mailmag.ok("issues", "list").stdout == ""
        writer.execute("ROLLBACK")
    finally:
        writer.close()
    assert count(db_url, "subscribers") == 0


def test_an_import_reads_the_list_once_however_many_batches(mailmag, tmp_path, db_url):
    """The new rows' ids were read back by address after every batch of 1 000; PostgreSQL's
    planner, which cannot know the table grew inside the transaction, scanned every row added so
    far each time: 200 000 rows took 575 s instead of 40 (helper-100)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    path = _csv(tmp_path, "email,name\n" + "".join(f"r{i}@example.jp,読者{i}\n" for i in range(2500)))
    reads: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "FROM subscribers" in statement:
            reads.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        result = mailmag.ok("subscribers", "import", str(path))
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert result.stdout.startswith("added 2500, updated 0,")
    assert len(reads) == 1, reads
    assert count(db_url, "consent_events") == 2500


def test_importing_the_same_file_twice_changes_nothing_the_second_time(mailmag, db_url):
    first = mailmag.ok("subscribers", "import", str(SAMPLES / "sample-utf8.csv"))
    assert first.stdout.startswith("added 9, updated 0, unchanged 0, invalid 1,")
    before = snapshot(db_url)
    second = mailmag.ok("subscribers", "import", str(SAMPLES / "sample-utf8.csv"))
    assert second.stdout.startswith("added 0, updated 0, unchanged 9, invalid 1,")
    assert snapshot(db_url) == before


def test_changed_details_update_and_empty_cells_keep_what_is_stored(mailmag, tmp_path, db_url):
    mailmag.ok("subscribers", "add", "taro@example.jp", "--name", "山田 太郎", "--org", "広島大学",
               "--lang", "en", "--topic", "news")
    mailmag.ok("subscribers", "add", "hanako@example.jp", "--name", "佐藤 花子")
    mailmag.ok("subscribers", "add", "misaki@example.jp", "--name", "田中 美咲")
    path = _csv(tmp_path, f"{JA_HEADER}\nTARO@example.jp,,岡山大学,,\n"
                "hanako@example.jp,佐藤 花子,,英語,events、news\nmisaki@example.jp,田中 美咲,,,\n")
    result = mailmag.ok("subscribers", "import", str(path))
    assert result.stdout == "added 0, updated 2, unchanged 1, invalid 0, suppressed 0\n"
    listed = _listed(mailmag)
    taro, hanako = listed["taro@example.jp"], listed["hanako@example.jp"]
    assert (taro["name"], taro["organization"], taro["lang"], taro["topics"]) == (
        "山田 太郎", "岡山大学", "en", ["news"])
    assert (hanako["name"], hanako["lang"], hanako["topics"]) == ("佐藤 花子", "en", ["events", "news"])
    assert count(db_url, "consent_events") == 3  # an update is not a new opt-in


def test_unsubscribed_addresses_stay_unsubscribed_unless_resubscribe(mailmag, tmp_path, db_url):
    mailmag.ok("subscribers", "add", "gone@example.jp", "--name", "元会員")
    mailmag.ok("subscribers", "remove", "gone@example.jp")
    path = _csv(tmp_path, f"{JA_HEADER}\nnew@example.jp,,,,\nGone@example.jp,新しい名前,,,\n")
    before = rows(db_url, "subscribers")[0]
    result = mailmag.ok("subscribers", "import", str(path))
    assert result.stdout.splitlines() == [
        "added 1, updated 0, unchanged 0, invalid 0, suppressed 1",
        "line 3: skipped: Gone@example.jp is unsubscribed; left as it is (--resubscribe reactivates)",
    ]
    assert rows(db_url, "subscribers")[0] == before  # status, name: untouched

    again = mailmag.ok("subscribers", "import", str(path), "--resubscribe", "--source", "再登録の申込書")
    assert again.stdout == "added 0, updated 1, unchanged 1, invalid 0, suppressed 0\n"
    gone = _listed(mailmag)["gone@example.jp"]
    assert (gone["status"], gone["name"]) == ("active", "新しい名前")
    last = rows(db_url, "consent_events")[-1]
    assert (last["action"], last["channel"], last["source"], last["email_hash"]) == (
        "opt_in", "import", "再登録の申込書", email_hash("gone@example.jp"))


def test_consent_log_names_the_file_or_the_source(mailmag, tmp_path, db_url):
    mailmag.ok("subscribers", "import", str(SAMPLES / "sample-en.csv"))
    mailmag.ok("subscribers", "import", str(SAMPLES / "sample-cp932.csv"), "--source", "2026年度 名簿")
    log = {(e["action"], e["channel"], e["source"]) for e in rows(db_url, "consent_events")}
    assert log == {("opt_in", "import", "imported from sample-en.csv"),
                   ("opt_in", "import", "2026年度 名簿")}


def test_many_rows_land_in_batches_each_with_its_own_opt_in(mailmag, tmp_path, db_url):
    lines = [f"user{i}@example{i % 7}.jp,会員 {i},,{'en' if i % 3 == 0 else 'ja'},news" for i in range(2500)]
    path = _csv(tmp_path, "\n".join(["email,name,organization,lang,topics", *lines]) + "\n")
    assert mailmag.ok("subscribers", "import", str(path)).stdout.startswith("added 2500, updated 0,")
    subscribers = rows(db_url, "subscribers")
    events = rows(db_url, "consent_events")
    assert len(subscribers) == len(events) == 2500
    by_id = {s["id"]: s["email_key"] for s in subscribers}
    assert all(email_hash(by_id[e["subscriber_id"]]) == e["email_hash"] for e in events)
    assert subscribers[2499]["name"] == "会員 2499" and subscribers[2499]["lang"] == "en"
    again = mailmag.ok("subscribers", "import", str(path))
    assert again.stdout.startswith("added 0, updated 0, unchanged 2500,")


# --- the progress bar ------------------------------------------------------------------------


def test_no_progress_bar_when_not_on_a_terminal(mailmag):
    result = mailmag.ok("subscribers", "import", str(SAMPLES / "sample-en.csv"))
    assert "importing" not in result.output


def test_progress_bar_on_a_terminal(mailmag, config_file):
    """The real command under a pseudo-terminal: the bar goes to the terminal, the summary to stdout."""
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            mailmag_command("--config", str(config_file), "subscribers", "import",
            str(SAMPLES / "sample-en.csv")),
            stdin=terminal, stdout=subprocess.PIPE, stderr=terminal, timeout=60, check=True,
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert result.stdout == b"added 3, updated 0, unchanged 0, invalid 0, suppressed 0\n"
    assert b"importing" in shown and b"100%" in shown


def test_a_repeated_address_that_one_row_opts_out_is_not_made_a_reader(mailmag, tmp_path, db_url):
    """helper-94: a list merged from two exports, an address active in one and unsubscribed (or
    bounced) in the other: the first row won and the address was made active, the opt-out
    thrown away as a repeat. The opt-out row now speaks for the address, wherever it stands."""
    path = _csv(tmp_path, "email,status\nx@example.jp,active\nX@example.jp,unsubscribed\n"
                          "y@example.jp,bounced\nY@example.jp,\nz@example.jp,\nz@example.jp,active\n")
    result = mailmag.ok("subscribers", "import", str(path))
    assert result.stdout.splitlines()[:4] == [
        "added 1, updated 0, unchanged 0, invalid 3, suppressed 2",
        "line 2: x@example.jp repeats line 3, which says unsubscribed: line 3 is kept",
        "line 5: Y@example.jp repeats line 4, which says bounced: line 4 is kept",
        "line 7: z@example.jp repeats line 6",
    ]
    assert list(_listed(mailmag)) == ["z@example.jp"]
    assert sorted(r["email_hash"] for r in rows(db_url, "suppressions")) == sorted(
        email_hash(e) for e in ("x@example.jp", "y@example.jp"))


def test_an_address_whose_other_row_cannot_be_read_waits_for_it(mailmag, tmp_path, db_url):
    """helper-97: a row saying unsubscribed but with a topic not offered (or a status word the
    list did not know, 退会 or 配信停止) was invalid, and the address's other row made it active.
    Such an address now waits until the unread row is mended; the office's words are known."""
    path = _csv(tmp_path, "email,status,topics\na@example.jp,active,\nA@example.jp,unsubscribed,nosuch\n"
                          "c@example.jp,,\nc@example.jp,退会,\nh@example.jp,,\n H@EXAMPLE.JP ,配信停止,\n")
    result = mailmag.ok("subscribers", "import", str(path))
    lines = result.stdout.splitlines()
    assert lines[0] == "added 0, updated 0, unchanged 0, invalid 4, suppressed 2"
    assert lines[1] == ("line 2: a@example.jp is not imported: line 3, the same address, could not be "
                        "read; mend it and import the file again")
    assert lines[2].startswith("line 3: ")
    assert _listed(mailmag) == {}
    assert sorted(r["email_hash"] for r in rows(db_url, "suppressions")) == sorted(
        email_hash(e) for e in ("c@example.jp", "h@example.jp"))


def test_an_address_an_office_annotated_in_its_cell_still_holds_back_its_twin(mailmag, tmp_path):
    """helper-99: x@example.jp（退会） or x@example.jp 退会 could not be read as an address, so the
    row was reported as a bad address only and the address's active twin was imported."""
    path = _csv(tmp_path, "email,status\na1@example.jp,\na1@example.jp（退会）,退会\n"
                          "a4@example.jp,\na4@example.jp 退会,退会\nok@example.jp,\n")
    result = mailmag.ok("subscribers", "import", str(path))
    assert result.stdout.splitlines()[0] == "added 1, updated 0, unchanged 0, invalid 4, suppressed 0"
    assert list(_listed(mailmag)) == ["ok@example.jp"]


def test_a_cp932_list_with_half_width_katakana_is_read_as_cp932(mailmag, tmp_path):
    """helper-99: the CP932 bytes of ﾕｳ read as a UTF-8 character, and the file was refused as
    one mixing encodings."""
    path = tmp_path / "list.csv"
    path.write_bytes("email,氏名\nk1@example.jp,山田\nk2@example.jp,ﾕｳ\n".encode("cp932"))
    mailmag.ok("subscribers", "import", str(path))
    assert _listed(mailmag)["k2@example.jp"]["name"] == "ﾕｳ"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # (SQLite's import holds the write lock)
def test_an_address_added_while_the_import_runs_is_one_line_and_nothing_is_imported(services):
    """helper-99: the subscribe form added an address of the file while a PostgreSQL import ran,
    and the import ended in a psycopg traceback. Nothing landing, one sentence saying why."""
    from mailmag.audience import imports, subscribers
    from mailmag.audience.subscribers import Consent
    from mailmag.errors import StateError
    from mailmag.models import Subscriber

    report = imports.ImportReport()

    def racing():  # type: ignore[no-untyped-def]
        with services.session() as form:  # the subscribe form, meanwhile
            subscribers.add(form, subscribers.parse_address("race@example.jp"), Consent("web"), pending=True)
        yield from imports.parse_rows("email\nfine@example.jp\nrace@example.jp\n", report, [])

    with pytest.raises(StateError, match="added to the list while the import ran"), \
            services.session() as session:
        imports.import_rows(session, racing(), report, Consent("import"))
    with services.session() as session:
        assert sorted(session.scalars(select(Subscriber.email_key))) == ["race@example.jp"]
