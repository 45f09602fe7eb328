"""Alembic environment: the engine comes from mailmag (db.alembic_config), never from an ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from mailmag.errors import DatabaseError
from mailmag.models import Base

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # A batch migration rebuilds a SQLite table (copy, DROP, rename). With foreign keys on,
        # that DROP runs ON DELETE CASCADE / SET NULL on every child row: rebuilding `issues`
        # would delete every delivery, rendering and issue item. SQLite's own recipe for table
        # rebuilds: keys off outside the transaction (the PRAGMA is a no-op inside one), checked
        # before commit. Straight to the driver, before SQLAlchemy begins a transaction.
        connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite and connection.execute(text("PRAGMA foreign_key_check")).first() is not None:
                raise DatabaseError("the migration left rows pointing at nothing: nothing was changed; "
                                    "restore the backup and report this")
        connection.commit()
    finally:
        if sqlite:
            connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")
