"""deliveries: no index on issue_id alone

Two indexes begin with issue_id already: UNIQUE (issue_id, subscriber_id) and
ix_deliveries_issue_status (issue_id, status); each serves what the lone one did (an issue's
rows, the cascade when an issue is deleted). The third was kept up by every status change (the
enqueue, the claim, the result: none of them a HOT update, as status is indexed), about a
tenth of PostgreSQL's CPU for each.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 03:00:00
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_deliveries_issue_id", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_issue_id", "deliveries", ["issue_id"], unique=False)
