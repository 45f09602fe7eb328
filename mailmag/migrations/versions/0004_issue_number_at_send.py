"""issues: the public number is given when sending starts; automatic issues get a topic

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:00:00

Drafts and scheduled issues lose the number they were given when composed (it was never
public); `rendered_number` keeps the number their renderings show. A timed send's history
was keyed by the issue number and is now keyed by its id.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("rendered_number", sa.Integer(), nullable=True))
        batch.alter_column("number", existing_type=sa.Integer(), nullable=True)
    with op.batch_alter_table("auto_schedules") as batch:
        batch.add_column(sa.Column("topic", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    issues = sa.table("issues", sa.column("id", sa.Integer), sa.column("number", sa.Integer),
                      sa.column("rendered_number", sa.Integer), sa.column("status", sa.String))
    runs = sa.table("job_runs", sa.column("job_id", sa.String))
    renamed = [(issue_id, number) for issue_id, number in
               connection.execute(sa.select(issues.c.id, issues.c.number)).all()
               if number is not None and number != issue_id]
    for step in ("send-issue-{number}", "renumbered-{issue_id}"):  # two steps: ids and numbers may swap
        for issue_id, number in renamed:
            old = step.format(number=number, issue_id=issue_id)
            new = f"renumbered-{issue_id}" if step.startswith("send") else f"send-issue-{issue_id}"
            connection.execute(sa.update(runs).where(runs.c.job_id == old).values(job_id=new))
    connection.execute(sa.update(issues).values(rendered_number=issues.c.number))
    connection.execute(sa.update(issues).where(issues.c.status.in_(["draft", "scheduled"])).values(number=None))


def downgrade() -> None:
    connection = op.get_bind()
    issues = sa.table("issues", sa.column("id", sa.Integer), sa.column("number", sa.Integer))
    # A draft had a number before this revision: a negative one cannot collide with a real one.
    connection.execute(sa.update(issues).where(issues.c.number.is_(None)).values(number=-issues.c.id))
    with op.batch_alter_table("auto_schedules") as batch:
        batch.drop_column("topic")
    with op.batch_alter_table("issues") as batch:
        batch.alter_column("number", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("rendered_number")
