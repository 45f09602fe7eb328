"""The one place that builds what the CLI, the scheduler and the web app share.

`Services` holds the configuration and lazily builds the engine, the session factory and
the template environment. Nothing here is global: each front makes its own instance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailmag import db
from mailmag.config import Config
from mailmag.errors import ConfigError

INSECURE_DEMO_KEY = "mailmag-demo-key-not-secret"
MIN_SECRET_LENGTH = 32  # characters; a shorter key could be guessed and links forged
MAKE_SECRET = "export MAILMAG_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"


class Services:
    """Configuration plus the shared collaborators built from it."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @cached_property
    def engine(self) -> Engine:
        return db.engine_for(self.config.database)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return db.make_session_factory(self.engine)

    @contextlib.contextmanager
    def session(self, *, wait: bool = True) -> Iterator[Session]:
        """One unit of work, committed in one place. `wait=False`: for a write that can be put off,
        on SQLite an OperationalError (db.locked) at once while another holds the write lock,
        instead of waiting busy_timeout_seconds for it."""
        with db.unit_of_work(self.sessions if wait else self._unwaiting_sessions) as session:
            yield session

    @cached_property
    def _unwaiting_sessions(self) -> sessionmaker[Session]:
        return db.make_session_factory(self.engine.execution_options(sqlite_wait_ms=0))

    @cached_property
    def read_engine(self) -> Engine:
        """The engine for work that only reads: on SQLite it begins DEFERRED, taking no write lock."""
        return self.engine.execution_options(sqlite_begin="DEFERRED")

    @cached_property
    def read_sessions(self) -> sessionmaker[Session]:
        """Sessions for work that only reads (on SQLite: no write lock taken, none waited for);
        for a caller that decides itself when the session ends, as `sessions`."""
        return db.make_session_factory(self.read_engine)

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A unit of work that only reads (pages, listings): in WAL mode it never waits for writers."""
        with db.unit_of_work(self.read_sessions) as session:
            yield session

    @property
    def secret_key(self) -> str:
        """The signing key for links; demo mode alone may run without one, or with a short one.
        Everything that signs a link (serve, worker, run, orgs token, issues test) reads it here."""
        key, demo = self.config.secret_key, self.config.mailmag.demo
        if not key and demo:
            return INSECURE_DEMO_KEY
        if not key:
            raise ConfigError("MAILMAG_SECRET_KEY is not set: export a long random value, "
                              f"e.g. `{MAKE_SECRET}`")
        if len(key) < MIN_SECRET_LENGTH and not demo:
            raise ConfigError(f"MAILMAG_SECRET_KEY has only {len(key)} characters, so links could be forged: "
                              f"use {MIN_SECRET_LENGTH} or more, e.g. `{MAKE_SECRET}`")
        return key

    @property
    def verify_keys(self) -> tuple[str, ...]:
        """The keys a token is read with: secret_key, then the keys it replaced (links in mail sent
        before the key was changed). Everything that reads a link or a tag reads them here."""
        for previous in self.config.previous_secret_keys:
            if len(previous) < MIN_SECRET_LENGTH:
                raise ConfigError(f"a key in MAILMAG_PREVIOUS_SECRET_KEYS has only {len(previous)} "
                                  "characters: a link signed with it could be forged; drop it")
        current = self.secret_key
        return (current, *dict.fromkeys(k for k in self.config.previous_secret_keys if k != current))

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
