"""The console's first page: what waits for review, what goes out next, how the last send goes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template

from mailmag.access import audit
from mailmag.content import drafts, issues
from mailmag.delivery import outbox
from mailmag.models import utcnow
from mailmag.scheduling import jobs
from mailmag.web import state
from mailmag.web.admin import needs, status_word

bp: Blueprint = Blueprint("dashboard", __name__)


@bp.get("/")
def index() -> Any:
    config = state().config
    now = utcnow()
    with state().services.read_session() as db:
        listed = issues.listing(db)
        scheduled = sorted((i for i in listed if i.status == "scheduled" and i.scheduled_at is not None),
                           key=lambda i: i.scheduled_at or utcnow())
        last = next((i for i in listed if i.status in ("sending", "sent")), None)
        not_made = jobs.sends_not_made(db)
        return render_template(
            "admin/dashboard.html.j2", waiting=len(drafts.in_review(db)), scheduled=scheduled,
            not_made=[(issue, not_made[issue.id]) for issue in listed if issue.id in not_made],
            autos=jobs.list_auto(db, config, now), last=last, now=now,
            overdue={i.id: late for i in scheduled if (late := jobs.overdue_send(i, now, config))},
            counts=outbox.counts(db, last.id) if last else None,
        )


@bp.get("/issues/<int:issue_id>/progress.json")
def progress(issue_id: int) -> Any:
    """What the dashboard's small script polls: the delivery counts of one issue."""
    with state().services.read_session() as db:
        issue = drafts.by_id(db, issue_id)
        counts = outbox.counts(db, issue.id)
        return jsonify(status=issue.status, status_word=status_word(issue.status), total=counts.total,
                       sent=counts.sent,
                       failed=counts.failed + counts.dead, pending=counts.pending, cancelled=counts.cancelled)


@bp.get("/audit")
@needs("manage")
def audit_log() -> Any:
    with state().services.read_session() as db:
        return render_template("admin/audit.html.j2", entries=audit.listing(db, limit=500))

