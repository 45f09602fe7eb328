"""issues: schedule_set_at, so a timed send missed before the issue was scheduled again is history

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 18:00:00
"""

import sqlalchemy as sa
from alembic import op

import mailmag.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("schedule_set_at", mailmag.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("schedule_set_at")
