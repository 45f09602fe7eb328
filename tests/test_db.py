"""`mailmag init` and the migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import SECRET, SENDER_TOML, Mailmag
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from mailmag import db
from mailmag.models import Base


def test_init_creates_the_schema_stamped_at_head(config_file, db_url):
    result = Mailmag(config_file).ok("init")
    assert result.stdout.startswith("database created: ")
    engine = db.make_engine(db_url)
    try:
        assert db.current_revision(engine) == db.head_revision()
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_init_twice_says_up_to_date_and_keeps_the_data(mailmag):
    mailmag.ok("subscribers", "add", "taro@example.jp")
    result = mailmag.ok("init")
    assert result.stdout.startswith("database up to date: ")
    assert "taro@example.jp" in mailmag.ok("subscribers", "list").stdout


def test_a_database_from_a_newer_mailmag_is_called_newer_and_left_alone(mailmag, config_file, db_url):
    """helper-85: a database a later mailmag had migrated (code rolled back, a backup restored
    onto an older install) was called older, and `init` then failed with Alembic's traceback."""
    mailmag.ok("subscribers", "add", "taro@example.jp")
    engine = db.make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
        newer = (f"Error: the database schema (0099) is newer than this mailmag (which knows up to "
                 f"{db.head_revision()}): install the mailmag that last ran `mailmag init` on it, or a "
                 "later one; nothing was changed\n")
        for args in (["init"], ["subscribers", "list"]):
            result = Mailmag(config_file)(*args)
            assert (result.exit_code, result.stderr) == (1, newer), result.stderr
        assert "newer than this mailmag" in Mailmag(config_file)("doctor").stdout
        assert db.current_revision(engine) == "0099"
    finally:
        engine.dispose()


def test_a_command_on_an_uninitialised_database_says_run_init(config_file, db_url):
    cli = Mailmag(config_file)
    file = Path(db_url.removeprefix("sqlite:///")) if db_url.startswith("sqlite") else None
    expected = (f"Error: the database {file} does not exist: run `mailmag init` here, or point --config "
                "(or [database] url) at the installation\n") if file else (
                "Error: the database is not initialised: run `mailmag init`\n")
    for args in (["subscribers", "list"], ["subscribers", "add", "taro@example.jp"], ["issues", "list"]):
        result = cli(*args)
        assert result.exit_code == 1
        assert result.stderr == expected
    assert file is None or not file.exists()  # saying so created no empty mailmag.db
    engine = db.make_engine(db_url)
    try:
        assert inspect(engine).get_table_names() == []  # the command created nothing
    finally:
        engine.dispose()


def test_the_migration_chain_from_empty_yields_exactly_the_models(db_url):
    """Guards model changes: a column added to models.py without a migration fails here."""
    engine = db.make_engine(db_url)
    try:
        command.upgrade(db.alembic_config(engine), "head")
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert differences == []
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_the_migration_keeps_every_row_and_no_deleted_id_comes_back(db_url):
    """0008 rebuilds SQLite's `issues` (AUTOINCREMENT): the rebuild's DROP must not cascade."""
    from sqlalchemy import text

    engine = db.make_engine(db_url)
    try:
        command.upgrade(db.alembic_config(engine), "0007")
        with engine.begin() as conn:
            # No ids given: a fresh database numbers them 1 and 2 (PostgreSQL through its sequence).
            conn.execute(text("INSERT INTO issues (number, title, status, created_at) VALUES "
                              "(1, 'sent', 'sent', CURRENT_TIMESTAMP), "
                              "(NULL, 'draft', 'draft', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO renderings (issue_id, lang, subject, html, text, rendered_at) "
                              "VALUES (1, 'ja', 's', 'h', 't', CURRENT_TIMESTAMP)"))
            conn.execute(text(
                "INSERT INTO deliveries (issue_id, email, lang, message_id, status, attempts, "
                "lease_expiries, next_attempt_at, last_reply, created_at) VALUES "
                "(1, 'taro@example.jp', 'ja', '<1@x>', 'sent', 1, 0, CURRENT_TIMESTAMP, '250', "
                "CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO auto_schedules (name, cron, created_at) "
                              "VALUES ('monthly', '0 9 1 * *', CURRENT_TIMESTAMP)"))
        command.upgrade(db.alembic_config(engine), "head")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM issues WHERE id = 2"))
            conn.execute(text("DELETE FROM auto_schedules WHERE id = 1"))
            conn.execute(text("INSERT INTO issues (title, status, created_at) "
                              "VALUES ('next', 'draft', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO auto_schedules (name, cron, created_at) "
                              "VALUES ('weekly', '0 9 * * 1', CURRENT_TIMESTAMP)"))
        with engine.connect() as conn:
            issues = conn.execute(text("SELECT id, title FROM issues ORDER BY id")).all()
            schedules = conn.execute(text("SELECT id FROM auto_schedules")).scalars().all()
            kept = conn.execute(text("SELECT (SELECT count(*) FROM deliveries WHERE issue_id = 1), "
                                     "(SELECT count(*) FROM renderings WHERE issue_id = 1)")).one()
    finally:
        engine.dispose()
    assert [tuple(row) for row in issues] == [(1, "sent"), (3, "next")]
    assert schedules == [2]
    assert tuple(kept) == (1, 1)  # the sent issue's delivery and rendering survived the rebuild


def test_init_copy_from_moves_every_row_and_links_mailed_before_keep_working(config_file, db_url, tmp_path):
    """helper-85, helper-87: the move to PostgreSQL by export and import gave every reader a new id
    and link key; one-click unsubscribes from older mail answered 200 and changed nothing, and
    erased addresses came back. `init --copy-from` copies every row as it is."""
    from mailmag import links, tokens
    from mailmag.audience import subscribers
    from mailmag.models import Subscriber

    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old_url = f"sqlite:///{old_dir / 'mailmag.db'}"
    old_config = old_dir / "mailmag.toml"
    old_config.write_text(config_file.read_text().replace(db_url, old_url), encoding="utf-8")
    old = Mailmag(old_config)
    old.ok("init")
    for address in ("taro@example.jp", "gone@example.jp", "out@example.jp"):
        old.ok("subscribers", "add", address)
    old.ok("subscribers", "remove", "gone@example.jp", "--forget")
    old.ok("subscribers", "remove", "out@example.jp")
    for day in (1, 15):  # automatic issues 1 and 2; 2 removed: its id is never given again
        old.ok("schedule", "add", "--cron", f"0 9 {day} * *", "--name", f"day {day}")
    old.ok("schedule", "remove", "2")
    source = db.make_engine(old_url)
    with source.connect() as connection:
        taro = connection.execute(select(Subscriber.id, Subscriber.link_key).where(
            Subscriber.email == "taro@example.jp")).one()
    source.dispose()
    link = links.unsubscribe_url("https://news.example.jp", SECRET, taro.id, taro.link_key)

    new = Mailmag(config_file)
    result = new.ok("init", "--copy-from", old_url)
    assert "copied" in result.stdout and "2 subscribers" in result.stdout  # the erased one is a hash
    target = db.make_engine(db_url)
    try:
        with Session(target) as session:
            person = tokens.read_person(SECRET, "unsubscribe", link.rsplit("/", 1)[1])
            found = subscribers.by_link(session, person)
            assert found is not None and found.email == "taro@example.jp"  # the link mailed before
        listed = json.loads(new.ok("subscribers", "list", "--json").stdout)
        statuses = {s["email"]: s["status"] for s in listed}
        assert statuses == {"taro@example.jp": "active", "out@example.jp": "unsubscribed"}
        assert new("subscribers", "add", "gone@example.jp").exit_code == 1  # still suppressed
        new.ok("subscribers", "add", "hanako@example.jp")  # the next id is past the copied ones
        # helper-88: the copy gave the removed schedule's id 2 again
        assert "automatic issue 3 " in new.ok("schedule", "add", "--cron", "0 9 20 * *", "--name", "s").stdout
        again = new("init", "--copy-from", old_url)
        assert again.exit_code == 1 and "already holds rows" in again.stderr
        path = new("init", "--copy-from", str(old_dir / "mailmag.db"))  # a path, not a URL: one line
        assert (path.exit_code, path.stderr[:19]) == (1, "Error: cannot read "), path.output
    finally:
        target.dispose()


def test_init_copy_from_postgresql_keeps_the_ids_its_sequences_gave(pg_url, tmp_path):
    """The other way (helper-88): PostgreSQL's sequences, not only MAX(id), say which ids were given."""
    def cli_on(url: str, name: str) -> Mailmag:
        path = tmp_path / f"{name}.toml"
        path.write_text(f'[mailmag]\nbase_url = "https://news.example.jp"\n\n[database]\nurl = "{url}"\n\n'
                        f'{SENDER_TOML}\n[smtp]\ntransport = "file"\nfile_dir = "{tmp_path / "outbox"}"\n',
                        encoding="utf-8")
        return Mailmag(path)

    old = cli_on(pg_url, "old")
    old.ok("init")
    for day in (1, 15):  # automatic issues 1 and 2; 2 removed: its id is never given again
        old.ok("schedule", "add", "--cron", f"0 9 {day} * *")
    old.ok("schedule", "remove", "2")
    new = cli_on(f"sqlite:///{tmp_path / 'new.db'}", "new")
    new.ok("init", "--copy-from", pg_url)
    assert "automatic issue 3 " in new.ok("schedule", "add", "--cron", "0 9 20 * *").stdout
    assert [s["id"] for s in json.loads(new.ok("schedule", "list", "--json").stdout)] == [1, 3]


def test_mailmag_tables_with_an_empty_stamp_are_named_by_init_and_every_command(mailmag, db_url):
    """helper-86: an emptied alembic_version made init say "the database is locked or unavailable
    (table … already exists)" and every other command "run `mailmag init`": a loop. Both now say
    what is wrong, and the rows stay."""
    from sqlalchemy import text

    mailmag.ok("subscribers", "add", "taro@example.jp")
    engine = db.make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM alembic_version"))
        for command_ in (("init",), ("subscribers", "list")):
            result = mailmag(*command_)
            assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
            assert "holds mailmag tables but no migration stamp" in result.stderr
        with engine.begin() as connection:  # helper-91: two stamps were a traceback everywhere
            connection.execute(text("INSERT INTO alembic_version VALUES ('0011'), ('0010')"))
        for command_ in (("init",), ("subscribers", "list")):
            result = mailmag(*command_)
            assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
            assert "holds more than one migration stamp (0011, 0010)" in result.stderr
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT email FROM subscribers")) == "taro@example.jp"
    finally:
        engine.dispose()


def test_a_sqlite_too_old_for_returning_is_one_line_before_anything_runs(mailmag, monkeypatch, db_url):
    """SQLite before 3.35 has no RETURNING, which the claims, results and import use: a command
    would have failed with a syntax error in the middle of its work (RHEL 9 ships 3.34)."""
    import sqlite3

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    result = mailmag("issues", "list")
    if db_url.startswith("sqlite"):
        assert result.exit_code == 1
        assert result.stderr == ("Error: mailmag needs SQLite 3.35 or newer; this Python's is 3.34.1: use a "
                                 "Python built with a newer SQLite, or PostgreSQL\n")
    else:  # PostgreSQL needs no SQLite
        assert result.exit_code == 0, result.stderr
