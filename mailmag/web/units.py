"""Units of work for the web app: requests that change something take SQLite's write lock first.

A transaction that reads and then writes would otherwise be refused outright ("database is
locked", no waiting) when another process (a worker, the purge) wrote in between; asking
for the lock up front (BEGIN IMMEDIATE) waits for it instead. PostgreSQL ignores the option.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.orm import Session

from mailmag import db
from mailmag.services import Services


@contextlib.contextmanager
def writing(services: Services) -> Iterator[Session]:
    """One unit of work that will write: committed at the end, rolled back if it raises."""
    factory = db.make_session_factory(services.engine.execution_options(sqlite_begin="IMMEDIATE"))
    with db.unit_of_work(factory) as session:
        yield session
