"""subscribe_attempts: sent, whether the confirmation mail an attempt asked for left

The form's mails wait in the web process's memory until its thread sends them; a restart
(kill -TERM or -9) lost the waiting ones while their attempts went on counting against the
address's daily limit, so the person could not ask again for a day (helper-94). An attempt
now says whether its mail was sent; one unsent a while after it was asked for stops counting.
Rows recorded before say not sent: the upgrade is a restart too, and an address whose mail was
lost with it may ask again (one whose mail went may be mailed once more that day).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 02:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribe_attempts") as batch:
        batch.add_column(sa.Column("sent", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("subscribe_attempts") as batch:
        batch.drop_column("sent")
