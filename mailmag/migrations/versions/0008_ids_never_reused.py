"""issues, auto_schedules: SQLite never gives a deleted row's id again (AUTOINCREMENT)

Without AUTOINCREMENT, SQLite gives a new row the largest id + 1, so the draft created after
`issues delete` of the newest draft took its id: the audit log's "issue 5 deleted" and an old
test mail's links then named another issue. PostgreSQL's sequences never give an id twice;
this makes SQLite do the same for the tables whose rows are deleted and addressed by id.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 09:00:00
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("issues", "auto_schedules")


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # A rebuild (copy, drop, rename; env.py turns the foreign keys off around it). The copy's
    # INSERT sets sqlite_sequence to the largest id already there.
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always",
                                  table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass
