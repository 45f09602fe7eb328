"""The audit log: every state-changing action in the console, and changes to admin accounts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailmag.models import AuditEntry, utcnow

CLI_ACTOR = "(terminal)"


def record(session: Session, actor: str, action: str, detail: str = "", ip: str = "",
           now: dt.datetime | None = None) -> AuditEntry:
    """One entry, in the same unit of work as the action (both are kept, or neither)."""
    entry = AuditEntry(actor=actor[:64], action=action[:64], detail=detail, ip=ip[:64], at=now or utcnow())
    session.add(entry)
    return entry


def listing(session: Session, *, since: dt.datetime | None = None,
            limit: int | None = None) -> Sequence[AuditEntry]:
    """Newest first."""
    query = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if limit is not None:
        query = query.limit(limit)
    return session.scalars(query).all()
