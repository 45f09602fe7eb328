"""deliveries: index (issue_id, status) for per-issue progress and completion checks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 19:00:00
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deliveries_issue_status", "deliveries", ["issue_id", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_deliveries_issue_status", table_name="deliveries")
