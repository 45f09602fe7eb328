"""Finding subscribers for the console: search by address or name, one with its consent history."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailmag.errors import NotFound
from mailmag.models import ConsentEvent, Subscriber


def search(session: Session, text: str = "", limit: int = 200) -> list[Subscriber]:
    """Subscribers whose address, name or organization contains `text` (newest first)."""
    query = select(Subscriber).order_by(Subscriber.id.desc()).limit(limit)
    text = text.strip()
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(or_(Subscriber.email_key.like(pattern.lower(), escape="\\"),
                                Subscriber.name.like(pattern, escape="\\"),
                                Subscriber.organization.like(pattern, escape="\\")))
    return list(session.scalars(query))


def by_id(session: Session, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise NotFound(f"no subscriber with the id {subscriber_id} (see mailmag subscribers list)")
    return subscriber


def history(session: Session, subscriber_id: int) -> list[ConsentEvent]:
    """Every opt-in, confirmation and opt-out of the subscriber, oldest first."""
    return list(session.scalars(
        select(ConsentEvent).where(ConsentEvent.subscriber_id == subscriber_id).order_by(ConsentEvent.id)
    ))
