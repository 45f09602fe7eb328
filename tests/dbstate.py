"""The database as a test sees it: every row of every table, read directly, not through mailmag."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from mailmag.db import make_engine
from mailmag.models import Base


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every mailmag table's rows, in a stable order: compare two to prove nothing changed."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
                for name, table in Base.metadata.tables.items()
            }
    finally:
        engine.dispose()


def count(url: str, table: str) -> int:
    return len(snapshot(url)[table])


def rows(url: str, table: str) -> list[dict[str, Any]]:
    """One table's rows as dicts, in insertion (id) order."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            t = Base.metadata.tables[table]
            return [dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.id))]
    finally:
        engine.dispose()


def where_found(url: str, text: str) -> list[str]:
    """'table.column' for every stored value that contains `text` (case-insensitive)."""
    needle = text.lower()
    found = []
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            for name, table in Base.metadata.tables.items():
                for row in conn.execute(select(table)):
                    found += [f"{name}.{col}" for col, value in row._mapping.items()
                              if needle in str(value).lower()]
    finally:
        engine.dispose()
    return found
