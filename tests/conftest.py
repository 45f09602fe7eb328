"""Shared fixtures: one per collaborator (database, config, services, CLI runner).

Database tests run twice, on SQLite and on the PostgreSQL at 127.0.0.1:5432 (database
`test`), each test in a schema of its own. PostgreSQL tests are skipped only when no server
answers, and `.ci/run` starts one first.

MAILMAG_TEST_CLOCK=2031-01-01 (or a full ISO time) runs the whole session with the wall clock
moved there and ticking: in this process through time-machine, in the `mailmag` processes the
tests start through tests/clocked.py. No test may depend on the real date.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import time_machine
from click.testing import CliRunner, Result

from mailmag import db
from mailmag.cli import cli
from mailmag.config import Config, DatabaseConfig, GeneralConfig, SenderConfig, SmtpConfig
from mailmag.services import Services

PG_ADMIN_URL = os.environ.get(
    "MAILMAG_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SECRET = "test-secret-key-0123456789-abcdefghijk"  # 32 or more: shorter keys are refused
# The reference article ships inside the package: a clone holds everything the tests read.
REFERENCE = Path(__file__).resolve().parents[1] / "mailmag" / "data" / "reference_article.txt"
TESTS = Path(__file__).resolve().parent
# A sender that is not config.example.toml's placeholders (compose and send refuse those).
SENDER = SenderConfig(from_="magazine@example.jp", postal_address="〒730-0011 広島県広島市中区基町10-52",
                      contact="jimukyoku@example.jp")
SENDER_TOML = (f'[sender]\nfrom = "{SENDER.from_}"\npostal_address = "{SENDER.postal_address}"\n'
               f'contact = "{SENDER.contact}"\n')


CLOCK_VARIABLE = "MAILMAG_TEST_CLOCK"
_travel: list[time_machine.travel] = []


def moved_clock(text: str) -> dt.datetime:
    """MAILMAG_TEST_CLOCK's moment: a date alone is 00:00 UTC (09:00 in Japan) that day."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def pytest_configure(config: pytest.Config) -> None:
    # Started before collection, so test modules' import-time readings see the moved clock too.
    text = os.environ.get(CLOCK_VARIABLE)
    if text:
        _travel.append(time_machine.travel(moved_clock(text), tick=True))
        _travel[0].start()


def pytest_unconfigure(config: pytest.Config) -> None:
    while _travel:
        _travel.pop().stop()


def pytest_report_header(config: pytest.Config) -> str:
    text = os.environ.get(CLOCK_VARIABLE)
    return f"wall clock moved to {moved_clock(text).isoformat()} ({CLOCK_VARIABLE})" if text else ""


def _pg_available() -> bool:
    import psycopg

    try:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session", autouse=True)
def _cheapest_argon2() -> Iterator[None]:
    """Console passwords in this process hashed with argon2-cffi's CHEAPEST Argon2id profile.

    Still Argon2id through the same functions, but the production cost (64 MiB, 3 passes,
    4 lanes: about 0.1 s of two cores for each login, by design) was a fifth of the suite's
    CPU time. The unknown-name hash is made with the same profile, so both kinds of failed
    login still do the same work. Processes the tests start keep the production cost.
    """
    from argon2 import PasswordHasher, profiles

    from mailmag.access import accounts

    cheapest = PasswordHasher.from_parameters(profiles.CHEAPEST)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accounts, "_hasher", cheapest)  # (the unknown-name hash is made with it)
        yield


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return _pg_available()


# For a rule that does not touch the database (parsing, wording, refusals before any SQL):
# run it on SQLite only, not once per database. `@one_database` above the test.
one_database = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_available: bool) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailmag.db'}"
        return
    _require_pg(pg_available)
    yield from _pg_schema_url()


def _require_pg(available: bool) -> None:
    """Skip without PostgreSQL, except in CI (which starts one): there it is a failure."""
    if not available:
        if os.environ.get("CI"):
            pytest.fail("no PostgreSQL at 127.0.0.1:5432, and CI must test on it")
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")


@pytest.fixture
def pg_url(pg_available: bool) -> Iterator[str]:
    """A PostgreSQL-only database URL, for tests of multi-process behaviour."""
    _require_pg(pg_available)
    yield from _pg_schema_url()


def _pg_schema_url() -> Iterator[str]:
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> Config:
    return Config(
        mailmag=GeneralConfig(base_url="https://news.example.jp"),
        database=DatabaseConfig(url=db_url),
        sender=SENDER,
        smtp=SmtpConfig(transport="file", file_dir=str(tmp_path / "outbox")),
        secret_key=SECRET,
    )


@pytest.fixture
def services(config: Config) -> Iterator[Services]:
    services = Services(config)
    db.init_db(services.engine)
    yield services
    services.close()


@pytest.fixture
def owned_services() -> Iterator[Callable[[Config], Services]]:
    """owned_services(config) → Services whose engine is disposed after the test, pass or fail.

    A psycopg connection left open warns (ResourceWarning) when collected, in whatever later
    test that happens: under filterwarnings = error that test fails. So a test never owns one.
    """
    made: list[Services] = []

    def make(config: Config) -> Services:
        made.append(Services(config))
        return made[-1]

    yield make
    for services in made:
        services.close()


@pytest.fixture
def session(services: Services):  # type: ignore[no-untyped-def]
    with services.session() as session:
        yield session


@pytest.fixture
def config_file(db_url: str, tmp_path: Path) -> Path:
    """A real configuration file for CLI tests, pointing at the test database."""
    path = tmp_path / "mailmag.toml"
    path.write_text(
        f'[mailmag]\nbase_url = "https://news.example.jp"\n\n'
        f'[database]\nurl = "{db_url}"\n\n{SENDER_TOML}\n'
        f'[smtp]\ntransport = "file"\nfile_dir = "{tmp_path / "outbox"}"\n',
        encoding="utf-8",
    )
    return path


class Mailmag:
    """Runs `mailmag --config FILE …` in-process and returns click's Result."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, env: dict | None = None) -> Result:
        return self.runner.invoke(
            cli, ["--config", str(self.config_file), *args], input=input,
            env={"MAILMAG_SECRET_KEY": SECRET, **(env or {})}, catch_exceptions=False,
        )

    def ok(self, *args: str, **kwargs) -> Result:  # type: ignore[no-untyped-def]
        result = self(*args, **kwargs)
        assert result.exit_code == 0, result.output + result.stderr
        return result


@pytest.fixture
def mailmag(config_file: Path) -> Mailmag:
    """The CLI on an initialised database."""
    runner = Mailmag(config_file)
    runner.ok("init")
    return runner


@pytest.fixture
def reference_text() -> str:
    return REFERENCE.read_text(encoding="utf-8")


# -- SMTP: a real aiosmtpd server on loopback with injectable faults (tests/smtp_server.py) --


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A throwaway CA and server certificates for 127.0.0.1, made once per test session."""
    from smtp_server import TlsFiles

    return TlsFiles.create(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def make_smtp_server(tls_files):  # type: ignore[no-untyped-def]
    """make_smtp_server(tls="none"|"starttls"|"implicit", trusted=True, users={"user": "pw"}) → started."""
    from smtp_server import SmtpServer

    servers = []

    def make(**kwargs):  # type: ignore[no-untyped-def]
        server = SmtpServer(tls_files=tls_files, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(make_smtp_server):  # type: ignore[no-untyped-def]
    """A plain SMTP server on 127.0.0.1: .messages, .fail_rcpt(), .fail_next(), .drop(), .smtp_config()."""
    return make_smtp_server()
