"""Bounces: hard ones suppress the address at once, soft ones count (more rules follow)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailmag.audience import subscribers
from mailmag.models import BounceEvent, Subscriber


def record_smtp_rejection(session: Session, delivery_id: int, subscriber_id: int | None, failure) -> None:  # type: ignore[no-untyped-def]
    """A 5xx at RCPT or DATA during dispatch counts as a hard bounce: suppress the address."""
    session.add(
        BounceEvent(
            subscriber_id=subscriber_id, delivery_id=delivery_id, kind="hard",
            code=str(failure.code), diagnostic=failure.reply[:1000],
            source_key=f"smtp:{delivery_id}",
        )
    )
    subscriber = session.get(Subscriber, subscriber_id) if subscriber_id else None
    if subscriber is not None and subscriber.status == "active":
        subscriber.status = "bounced"
        subscriber.status_reason = f"SMTP {failure.code}: {failure.reply[:200]}"
        subscribers.record(session, subscriber, "opt_out", subscribers.Consent("bounce", str(failure)[:200]))
