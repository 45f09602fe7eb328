"""deliveries: maybe_copies, how many of a message's attempts may have delivered it

[retry] ambiguous_max_attempts bounds the copies a relay that drops the connection after the
final dot can leave in a mailbox. It was read against every attempt, 4xx refusals included,
so a reader greylisted eight times and then dropped once was given up on after one possible
copy (helper-95). Each drop after the final dot (or a worker's death while sending it) now
counts here, and only those count. A row already marked ambiguous counts its attempts, as the
cap read them before: its drops are not known, and fewer would let it collect more copies than
the cap allows (helper-97).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 02:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("maybe_copies", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE deliveries SET maybe_copies = attempts WHERE last_reply LIKE 'ambiguous%'")


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("maybe_copies")
