"""subscribers.link_key: a random key every signed link carries (ids are reused on SQLite)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 16:00:00
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL with a default, so SQLite can add it in place: a batch copy of the table would
    # DROP it, and with foreign keys on, that nulls subscriber_id in the consent log.
    op.add_column("subscribers", sa.Column("link_key", sa.String(length=32), nullable=False,
                                           server_default=""))
    # Each existing subscriber gets its own random key. Their links in mail already sent carry
    # none; tokens.PersonLink.fits accepts those only for a row older than the link.
    bind = op.get_bind()
    subscribers = sa.table("subscribers", sa.column("id", sa.Integer), sa.column("link_key", sa.String))
    ids = [row.id for row in bind.execute(sa.select(subscribers.c.id))]
    if ids:
        bind.execute(
            subscribers.update().where(subscribers.c.id == sa.bindparam("row_id"))
            .values(link_key=sa.bindparam("key")),
            [{"row_id": i, "key": secrets.token_urlsafe(16)} for i in ids],
        )
    if bind.dialect.name != "sqlite":  # new rows always get a key from the model
        op.alter_column("subscribers", "link_key", server_default=None)


def downgrade() -> None:
    op.drop_column("subscribers", "link_key")  # SQLite ≥ 3.35 drops a column in place
