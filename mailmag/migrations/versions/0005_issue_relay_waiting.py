"""issues: relay_waiting_since and relay_error, so `issues status` shows a relay outage

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 16:00:00
"""

import sqlalchemy as sa
from alembic import op

import mailmag.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("relay_waiting_since", mailmag.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("relay_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("relay_error")
        batch.drop_column("relay_waiting_since")
