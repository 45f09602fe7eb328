"""`mailmag subscribers add|list|remove` on SQLite and PostgreSQL: what the secretariat sees."""

from __future__ import annotations

import json

from dbstate import rows, snapshot, where_found
from sqlalchemy import text

from mailmag.audience.subscribers import email_hash
from mailmag.db import make_engine


def _statuses(mailmag) -> dict[str, str]:
    return {s["email"]: s["status"] for s in json.loads(mailmag.ok("subscribers", "list", "--json").stdout)}


def test_add_then_list_json(mailmag):
    result = mailmag.ok("subscribers", "add", "Taro.Yamada@Example.JP", "--name", "山田太郎",
                        "--org", "広島大学", "--topic", "events", "--topic", "news")
    assert result.stdout == "added Taro.Yamada@example.jp\n"
    listed = json.loads(mailmag.ok("subscribers", "list", "--json").stdout)
    assert listed == [
        {
            "email": "Taro.Yamada@example.jp", "name": "山田太郎", "organization": "広島大学",
            "status": "active", "status_reason": "", "lang": "ja", "topics": ["events", "news"],
            "created_at": listed[0]["created_at"],
        }
    ]
    assert listed[0]["created_at"].endswith("Z")  # JSON times: ISO 8601 in UTC


def test_duplicate_detected_case_insensitively_and_fullwidth_at_repaired(mailmag):
    mailmag.ok("subscribers", "add", "taro@example.jp")
    result = mailmag.ok("subscribers", "add", " TARO＠EXAMPLE.JP ")
    assert result.stdout == "unchanged taro@example.jp\n"
    assert len(json.loads(mailmag.ok("subscribers", "list", "--json").stdout)) == 1


def test_add_pending_and_english(mailmag):
    mailmag.ok("subscribers", "add", "john@example.com", "--lang", "en", "--pending")
    (john,) = json.loads(mailmag.ok("subscribers", "list", "--json", "--status", "pending").stdout)
    assert (john["lang"], john["status"]) == ("en", "pending")


def test_add_invalid_address_is_one_line_and_changes_nothing(mailmag, db_url):
    before = snapshot(db_url)
    result = mailmag("subscribers", "add", "taro@example")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: invalid e-mail address 'taro@example': ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert snapshot(db_url) == before


def test_add_of_an_unsubscribed_address_needs_resubscribe(mailmag, db_url):
    mailmag.ok("subscribers", "add", "taro@example.jp", "--name", "山田 太郎")
    mailmag.ok("subscribers", "remove", "taro@example.jp")
    before = snapshot(db_url)

    result = mailmag("subscribers", "add", "Taro@Example.jp", "--name", "別人")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: taro@example.jp is unsubscribed: nothing changed; pass --resubscribe only if they "
        "asked to be added again\n")
    assert snapshot(db_url) == before

    assert mailmag.ok("subscribers", "add", "taro@example.jp", "--resubscribe").stdout == (
        "updated taro@example.jp\n")
    assert _statuses(mailmag) == {"taro@example.jp": "active"}
    log = [(e["action"], e["channel"], e["source"]) for e in rows(db_url, "consent_events")]
    assert log == [("opt_in", "cli", "added by the secretariat"),
                   ("opt_out", "cli", "removed by the secretariat"),
                   ("opt_in", "cli", "added by the secretariat")]


def test_remove_unsubscribes_and_is_repeatable(mailmag, db_url):
    mailmag.ok("subscribers", "add", "taro@example.jp")
    assert mailmag.ok("subscribers", "remove", "TARO@example.jp").stdout == "unsubscribed taro@example.jp\n"
    assert mailmag.ok("subscribers", "remove", "taro@example.jp").stdout == (
        "taro@example.jp was already unsubscribed\n")
    assert _statuses(mailmag) == {"taro@example.jp": "unsubscribed"}
    # said twice, logged twice: the latest word, which an undo in the reader's browser must not overturn
    assert [e["action"] for e in rows(db_url, "consent_events")] == ["opt_in", "opt_out", "opt_out"]


def test_remove_of_an_unknown_address_changes_nothing(mailmag, db_url):
    mailmag.ok("subscribers", "add", "taro@example.jp")
    before = snapshot(db_url)
    result = mailmag("subscribers", "remove", "hanako@example.jp")
    assert result.exit_code == 1
    assert result.stderr == "Error: no subscriber with the address hanako@example.jp\n"
    assert mailmag("subscribers", "remove", "hanako@example.jp", "--forget").exit_code == 1
    assert snapshot(db_url) == before


def test_remove_forget_erases_and_keeps_the_address_suppressed(mailmag, db_url, tmp_path):
    mailmag.ok("subscribers", "add", "Taro.Yamada@example.jp", "--name", "山田 太郎", "--org", "広島大学")
    mailmag.ok("subscribers", "add", "hanako@example.jp")
    result = mailmag.ok("subscribers", "remove", "taro.yamada@example.jp", "--forget")
    assert result.stdout == "erased Taro.Yamada@example.jp (a hashed suppression remains)\n"
    assert where_found(db_url, "taro.yamada@example.jp") == []
    assert where_found(db_url, "山田 太郎") == []
    digest = email_hash("taro.yamada@example.jp")
    assert [(e["action"], e["subscriber_id"]) for e in rows(db_url, "consent_events")
            if e["email_hash"] == digest] == [("opt_in", None), ("opt_out", None), ("forget", None)]
    assert [s["email_hash"] for s in rows(db_url, "suppressions")] == [digest]

    before = snapshot(db_url)
    again = mailmag("subscribers", "add", "taro.yamada@example.jp")
    assert again.exit_code == 1
    assert again.stderr.startswith("Error: taro.yamada@example.jp is suppressed (erased with remove --forget")
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("email\nTARO.YAMADA@example.jp\n", encoding="utf-8")
    imported = mailmag.ok("subscribers", "import", str(csv_file))
    assert imported.stdout.splitlines() == [
        "added 0, updated 0, unchanged 0, invalid 0, suppressed 1",
        "line 2: skipped: TARO.YAMADA@example.jp is erased; left as it is "
        "(--resubscribe reactivates)",
    ]
    assert snapshot(db_url) == before


def test_list_bounced_shows_why(mailmag, db_url):
    mailmag.ok("subscribers", "add", "taro@example.jp", "--name", "山田 太郎")
    mailmag.ok("subscribers", "add", "hanako@example.jp")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:  # what the bounce processor leaves behind
            conn.execute(text("UPDATE subscribers SET status = 'bounced', status_reason = "
                              "'550 5.1.1 user unknown (3 hard bounces)' WHERE email = 'taro@example.jp'"))
    finally:
        engine.dispose()
    result = mailmag.ok("subscribers", "list", "--status", "bounced")
    (line,) = result.stdout.splitlines()
    assert line.startswith(
        "taro@example.jp\t山田 太郎\tja\tall\tbounced (550 5.1.1 user unknown (3 hard bounces))\t")
    assert line.endswith(" JST")
    assert result.stderr == "1 subscriber\n"
    (listed,) = json.loads(mailmag.ok("subscribers", "list", "--status", "bounced", "--json").stdout)
    assert listed["status_reason"] == "550 5.1.1 user unknown (3 hard bounces)"


def test_list_json_is_one_document_even_when_empty(mailmag):
    result = mailmag.ok("subscribers", "list", "--json")
    assert json.loads(result.stdout) == []


def test_a_command_that_meets_a_locked_database_says_so_in_one_line(mailmag, db_url):
    """Another process holds the subscribers locked longer than [database] busy_timeout_seconds
    (SQLite: its write lock; PostgreSQL: LOCK TABLE, met through lock_timeout): one error line,
    no traceback, and nothing added (found by an outside attack: ~116 lines of SQLAlchemy)."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as holder:
            if holder.dialect.name == "postgresql":
                holder.execute(text("LOCK TABLE subscribers IN EXCLUSIVE MODE"))
            else:
                holder.connection.dbapi_connection.execute("BEGIN IMMEDIATE")
            result = mailmag("subscribers", "add", "late@example.jp",
                             env={"MAILMAG_DATABASE_BUSY_TIMEOUT_SECONDS": "0.5"})
            holder.rollback()
    finally:
        engine.dispose()
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "locked" in lines[0]
    assert "late@example.jp" not in _statuses(mailmag)
