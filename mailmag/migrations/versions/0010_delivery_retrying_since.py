"""deliveries: retrying_since, so [retry] lifetime_seconds counts from the first failed try

A message queued days before its first try (a send window over 年末年始, a relay down) was
given up on at its first 4xx, with no retry. Rows already being retried keep the old count
(from when they were queued), so none of them is retried longer than it would have been.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 18:00:00
"""

import sqlalchemy as sa
from alembic import op

import mailmag.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("retrying_since", mailmag.models.UTCDateTime(timezone=True), nullable=True))
    op.execute("UPDATE deliveries SET retrying_since = created_at WHERE status = 'queued' AND last_reply <> ''")


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("retrying_since")
