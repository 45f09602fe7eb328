"""job_runs: detail_ja, why a timed send failed in Japanese for the console

The console's pages are in Japanese, and a refusal (an item edited after its issue was
scheduled) was shown there in English, as it was recorded for the log and the command line
(helper-90). Rows recorded before keep their English alone.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 23:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_runs") as batch:
        batch.add_column(sa.Column("detail_ja", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("job_runs") as batch:
        batch.drop_column("detail_ja")
