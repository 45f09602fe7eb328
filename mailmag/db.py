"""The database: engine (SQLite pragmas), one unit of work per call, create or migrate.

A fresh database is created from the models and stamped with Alembic's head; an existing
one is upgraded to head (GNU Mailman's `database/factory.py` does the same).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Result,
    create_engine,
    event,
    func,
    insert,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailmag import pg_answers
from mailmag.config import DatabaseConfig
from mailmag.errors import DatabaseError
from mailmag.models import Base

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
T = TypeVar("T")
log = logging.getLogger(__name__)


def make_engine(url: str, pool_size: int | None = None, busy_timeout: float = 30.0,
                connect_timeout: float = 10.0, answer_timeout: float = 60.0) -> Engine:
    """An engine for `url`; on SQLite with WAL, foreign keys and a busy timeout (seconds); on
    PostgreSQL the same timeout as `lock_timeout`, and a server that does not answer is given
    up on (see _silent_server, and pg_answers for one that hangs: `answer_timeout` seconds)
    rather than waited for by every request and worker thread.

    `pool_size`: exactly that many pooled connections, no overflow (for a caller whose threads
    each hold one at most); by default SQLAlchemy's pool of 5 plus 10 overflow.
    """
    pool = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 0}
    if url.startswith("sqlite"):
        _require_sqlite_returning()
        engine = create_engine(url, connect_args={"timeout": busy_timeout}, **pool)
        _configure_sqlite(engine, busy_timeout)
        return engine
    engine = create_engine(url, pool_pre_ping=True, connect_args=_silent_server(url, connect_timeout), **pool)
    _configure_postgresql(engine, busy_timeout, answer_timeout)
    return engine


SQLITE_NEEDED = (3, 35)  # UPDATE/INSERT … RETURNING: the claims, the results, the import


def _require_sqlite_returning() -> None:
    """One line up front, not a syntax error in the middle of a send (helper-103: RHEL 9's is 3.34)."""
    if sqlite3.sqlite_version_info < SQLITE_NEEDED:
        needed, have = ".".join(map(str, SQLITE_NEEDED)), sqlite3.sqlite_version
        raise DatabaseError(f"mailmag needs SQLite {needed} or newer; this Python's is {have}: use a "
                            "Python built with a newer SQLite, or PostgreSQL")


def engine_for(settings: DatabaseConfig, pool_size: int | None = None) -> Engine:
    """make_engine with the [database] settings."""
    return make_engine(settings.url, pool_size, busy_timeout=settings.busy_timeout_seconds,
                       connect_timeout=settings.connect_timeout_seconds,
                       answer_timeout=settings.answer_timeout_seconds)


def _silent_server(url: str, connect_timeout: float) -> dict[str, int]:
    """libpq's limits for a server that stops answering (a host powered off, packets dropped): a
    new connection gives up after `connect_timeout`, an open one when what it sent stays
    unacknowledged for 30 s or its idle keepalives go unanswered. Without them a request (a
    one-click unsubscribe) waited for ever, holding one of the web app's threads. What the URL
    sets itself is kept."""
    limits = {"connect_timeout": max(2, round(connect_timeout)), "tcp_user_timeout": 30_000,
              "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    given = make_url(url).query
    return {key: value for key, value in limits.items() if key not in given}


def _configure_postgresql(engine: Engine, lock_timeout: float, answer_timeout: float) -> None:
    @event.listens_for(engine, "do_connect")
    def _connect(_dialect, _record, cargs, cparams) -> pg_answers.AnsweringConnection:
        return pg_answers.connect(cargs, cparams, answer_timeout)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # A statement waiting for another transaction's lock (a migration, a backup, a LOCK
        # TABLE) fails after `lock_timeout`, as SQLite's busy timeout does, instead of waiting
        # for ever: the worker then pauses and tries again, and a SIGTERM meanwhile is obeyed.
        dbapi_connection.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
        dbapi_connection.commit()



def rowcount(result: Result[Any]) -> int:
    """Rows an INSERT, UPDATE or DELETE touched (Session.execute is typed as a plain Result)."""
    return cast(CursorResult[Any], result).rowcount


def one_at_a_time(session: Session, name: str) -> None:
    """Transactions that call this with the same `name` run one after another, each holding the
    turn until it ends: a PostgreSQL advisory transaction lock. SQLite's write transactions are
    one at a time already (BEGIN IMMEDIATE)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name || current_schema()))"),
                        {"name": f"mailmag-{name}:"})


def locked(exc: OperationalError) -> bool:
    """Whether SQLite refused a write because another connection holds its write lock."""
    return isinstance(exc.orig, sqlite3.OperationalError) and "locked" in str(exc.orig)


def waited_on_another(exc: OperationalError) -> bool:
    """Whether a statement failed waiting for another transaction's lock: PostgreSQL's deadlock
    (40P01) or lock timeout (55P03). Only that statement is lost; a savepoint undoes it."""
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "55P03")


def _configure_sqlite(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # IMMEDIATE takes the write lock up front. A DEFERRED transaction that reads and
        # then writes fails at once with SQLITE_BUSY when another connection wrote in
        # between (WAL cannot upgrade a stale snapshot, and busy_timeout does not help).
        # Work that only reads uses Services.read_session (DEFERRED): in WAL it never waits.
        options = conn.get_execution_options()
        mode = options.get("sqlite_begin", "IMMEDIATE")
        # Straight to the driver: a worker begins one transaction per message it sends, and
        # exec_driver_sql's execution context costs more than the UPDATE that follows. An error
        # raised here bypasses SQLAlchemy's wrapping ("database is locked" after busy_timeout
        # would escape every `except OperationalError`): wrap it as SQLAlchemy would.
        dbapi = conn.connection.dbapi_connection
        wait = options.get("sqlite_wait_ms")  # (Services.session(wait=False): a write that can wait)
        try:
            if wait is not None:
                dbapi.execute(f"PRAGMA busy_timeout={int(wait)}")
            dbapi.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:
            raise OperationalError(f"BEGIN {mode}", None, exc) from exc
        finally:
            if wait is not None:  # the lock is held, or not, from BEGIN IMMEDIATE on: back to the usual wait
                dbapi.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")


def again_if_dropped(work: Callable[[], T]) -> T:
    """work(), and once more if the database connection died under it: a restarted server, a
    failover, a backend an administrator terminated (SQLAlchemy then says connection_invalidated,
    and the pool replaces its connections). Only for work that may run twice: a commit whose
    answer was lost may have landed."""
    try:
        return work()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("the database connection was lost (%s); trying once more", exc.orig)
    return work()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit if the block ends normally, roll back if it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            return MigrationContext.configure(conn).get_current_revision()
        except CommandError as exc:  # more than one stamp: a traceback in every command (helper-91)
            heads = ", ".join(MigrationContext.configure(conn).get_current_heads())
            raise DatabaseError(f"the database {engine.url!r} holds more than one migration stamp ({heads}), "
                                "so which schema it has is unknown; restore a backup") from exc


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _newer_than_us(revision: str) -> DatabaseError | None:
    """The error for a database stamped with a revision this mailmag does not know: a newer
    mailmag migrated it (code rolled back, a backup restored onto an older install). It was
    called "older" and `init` then failed with Alembic's traceback (helper-85)."""
    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    if revision in known:
        return None
    return DatabaseError(f"the database schema ({revision}) is newer than this mailmag (which knows up to "
                         f"{head_revision()}): install the mailmag that last ran `mailmag init` on it, or "
                         "a later one; nothing was changed")


def _unstamped(engine: Engine) -> DatabaseError:
    """mailmag's tables without a migration stamp (none, or an empty alembic_version: helper-86
    saw "table … already exists" from init and "run init" from every other command)."""
    return DatabaseError(f"the database {engine.url!r} holds mailmag tables but no migration stamp, so "
                         "which schema they have is unknown; restore a backup or use an empty database")


def init_db(engine: Engine) -> str:
    """Create or upgrade the schema; idempotent. Returns what was done, for the CLI to say."""
    with pg_answers.answer_within(math.inf):  # a migration may rewrite a large table for minutes
        return _init_db(engine)


def _init_db(engine: Engine) -> str:
    try:
        tables = set(inspect(engine).get_table_names())
    except DBAPIError as exc:  # not only "unable to open": a damaged file is "not a database"
        raise DatabaseError(f"cannot open the database {engine.url!r}: {exc.orig}") from exc
    cfg = alembic_config(engine)
    before = current_revision(engine) if "alembic_version" in tables else None
    if before is None:
        if tables & set(Base.metadata.tables):
            raise _unstamped(engine)
        Base.metadata.create_all(engine)
        command.stamp(cfg, "head")
        return "created"
    if (newer := _newer_than_us(before)) is not None:
        raise newer
    command.upgrade(cfg, "head")
    return "upgraded" if current_revision(engine) != before else "up to date"


COPY_BATCH = 1000
# SQLite's counters of ids handed out (its AUTOINCREMENT tables: issues, auto_schedules)
_SQLITE_SEQUENCE = text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")


def source_engine(url: str) -> Engine:
    """An engine for the database `init --copy-from` reads; DatabaseError for a URL that names
    none (a plain file path was a traceback: helper-88)."""
    try:
        return make_engine(url)
    except ArgumentError as exc:  # NoSuchModuleError too: an unknown dialect
        raise DatabaseError(f"cannot read {url!r} as a database URL ({exc}): write it as [database] url is "
                            "written, e.g. sqlite:////srv/mailmag/data/mailmag.db") from exc


def copy_database(source: Engine, target: Engine) -> dict[str, int]:
    """Every row of one mailmag database into another, empty, at the same revision (a move from
    SQLite to PostgreSQL, or back): ids, link keys and history kept, so links and tags in mail
    already sent keep working (helper-85, helper-87: an export and import gave every reader a new
    id and key). One transaction on the target: a failure leaves it empty. Rows by table."""
    try:
        check_schema(source)
    except DatabaseError as exc:  # init acts on the target: say which database, and how to fix it
        shown = source.url.render_as_string(hide_password=True)
        raise DatabaseError(f"the database to copy from, {shown}: {exc} (a fix it names is for the "
                            "installation that uses it, with its own configuration)") from exc
    check_schema(target)
    tables = Base.metadata.sorted_tables  # parents before children: foreign keys hold row by row
    with target.connect() as connection:
        filled = [t.name for t in tables if connection.scalar(select(func.count()).select_from(t))]
    if filled:
        shown = target.url.render_as_string(hide_password=True)
        raise DatabaseError(f"the database {shown} already holds rows ({', '.join(filled[:3])}): copy "
                            "into a new, empty one (after `mailmag init`); nothing was copied")
    copied: dict[str, int] = {}
    with source.connect() as reading, target.begin() as writing:
        for table in tables:
            rows = reading.execution_options(stream_results=True).execute(
                select(table).order_by(*table.primary_key.columns))
            copied[table.name] = 0
            for part in rows.partitions(COPY_BATCH):
                writing.execute(insert(table), [dict(row._mapping) for row in part])
                copied[table.name] += len(part)
        _set_ids_given(writing, _ids_given(reading, [t.name for t in tables]))
    return copied


def _ids_given(connection: Connection, tables: list[str]) -> dict[str, int]:
    """The highest id each table has handed out, deleted rows' included: an issue's id is never
    given twice (migration 0008), and a copy must not give it again (helper-88)."""
    return {table: max(_id_counter(connection, table),
                       connection.scalar(text(f"SELECT MAX(id) FROM {table}")) or 0) for table in tables}


def _id_counter(connection: Connection, table: str) -> int:
    """The last id the table's counter gave (0: none): its PostgreSQL sequence (last_value is NULL
    until first used), or its row in SQLite's sqlite_sequence (tables with AUTOINCREMENT only)."""
    if connection.dialect.name == "postgresql":
        last = text("SELECT last_value FROM pg_sequences "
                    "WHERE format('%I.%I', schemaname, sequencename) = pg_get_serial_sequence(:t, 'id')")
    elif connection.scalar(_SQLITE_SEQUENCE):
        last = text("SELECT seq FROM sqlite_sequence WHERE name = :t")
    else:
        return 0
    return connection.scalar(last, {"t": table}) or 0


def _set_ids_given(connection: Connection, given: dict[str, int]) -> None:
    """The next id of each table after `given`, on PostgreSQL's sequences or SQLite's counters."""
    for table, highest in given.items():
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), :next, false)"),
                               {"next": highest + 1})
        elif highest and Base.metadata.tables[table].kwargs.get("sqlite_autoincrement"):
            connection.execute(text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
            connection.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :seq)"),
                               {"t": table, "seq": highest})


def sqlite_file(engine: Engine | str) -> Path | None:
    """The file of a SQLite database, by its engine or its URL (None for PostgreSQL or an
    in-memory database)."""
    url = make_url(engine) if isinstance(engine, str) else engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def check_schema(engine: Engine) -> None:
    """Raise DatabaseError unless the database is initialised and at the newest revision.

    A SQLite file that does not exist is not created by looking (only `mailmag init` makes it).
    """
    missing = sqlite_file(engine)
    if missing is not None and not missing.exists():
        raise DatabaseError(f"the database {missing} does not exist: run `mailmag init` here, or point "
                            "--config (or [database] url) at the installation")
    try:
        revision = current_revision(engine)
    except DBAPIError as exc:  # a damaged SQLite file is "not a database" (helper-86: a traceback)
        raise DatabaseError(f"cannot open the database {engine.url!r}: {exc.orig}") from exc
    if revision is None:
        if set(inspect(engine).get_table_names()) & set(Base.metadata.tables):
            raise _unstamped(engine)
        raise DatabaseError("the database is not initialised: run `mailmag init`")
    if revision != head_revision():
        raise _newer_than_us(revision) or DatabaseError(
            "the database schema is older than this mailmag: run `mailmag init`")
