"""The outbox: delivery rows and their one status column (queued → sending → sent | failed | dead)."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from mailmag.models import Delivery


def cancel_for_subscriber(session: Session, subscriber_id: int) -> int:
    """An opt-out takes effect at once: queued deliveries to this subscriber are cancelled."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status == "queued")
        .values(status="cancelled", last_reply="subscriber opted out")
    )
    return result.rowcount
