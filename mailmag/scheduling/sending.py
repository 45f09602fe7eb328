"""The dispatcher as mailmag runs it: delivery's Dispatcher wired to the rules above delivery.

An SMTP refusal of an address goes to the bounce rules (audience.bounces); an issue with no
pending delivery left becomes sent, and the relay's health shows on the issues being sent
(content.transitions). Every front that drains the outbox (the worker, `mailmag run`'s node,
the demo, the benchmarks) builds its Dispatcher here, so the wiring is written once; the
console and `issues test` only send test mail (dispatch.send_test), which needs no hooks.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from mailmag import addresses
from mailmag.audience import bounces, consent
from mailmag.audience.subscribers import Consent
from mailmag.config import Config
from mailmag.content import transitions
from mailmag.delivery import outbox
from mailmag.delivery.dispatch import Dispatcher, Hooks
from mailmag.delivery.ratelimit import RateLimiter
from mailmag.delivery.transports import Transport
from mailmag.delivery.workstate import DATABASE_AWAY, Throttle
from mailmag.errors import DatabaseError, TransportError
from mailmag.models import Subscriber, utcnow
from mailmag.services import Services

log = logging.getLogger(__name__)


def hooks(config: Config) -> Hooks:
    """Soft bounces need the configuration's thresholds; the other rules need nothing."""
    return Hooks(
        rejected=functools.partial(bounces.record_smtp_rejection, config=config),
        drained=transitions.complete,
        relay_unreachable=transitions.relay_unreachable,
        relay_reached=transitions.relay_reached,
        requeued=transitions.reopen,
    )


def make_dispatcher(services: Services, transport: Transport, *, concurrency: int | None = None,
                    owner: str | None = None, progress: Callable[[int], None] | None = None,
                    clock: Callable[[], dt.datetime] = utcnow,
                    limiter: RateLimiter | None = None, throttle: Throttle | None = None,
                    first_connection: int = 0) -> Dispatcher:
    """A Dispatcher over `transport` with mailmag's hooks (the options are Dispatcher's)."""
    return Dispatcher(services, transport, hooks=hooks(services.config), concurrency=concurrency,
                      owner=owner, progress=progress, clock=clock, limiter=limiter, throttle=throttle,
                      first_connection=first_connection)


def deliver_until_stopped(services: Services, stop: threading.Event, make: Callable[[], Dispatcher]) -> None:
    """The service's delivery (`mailmag run`, in one process or in each sending process): until
    `stop` is set. A relay that refuses us or a database away ends a dispatcher; another starts
    after [smtp] retry_relay_seconds, since a service must outlive both."""
    config = services.config
    refused = False
    while not stop.is_set():
        try:
            dispatcher = make()
            if stop.is_set():  # stopped while this dispatcher was being built: its stop was not set
                return
            if refused:  # the log said the relay refused us: it says so when mail goes again
                dispatcher.relay_was_down()
            dispatcher.run(poll_seconds=min(2.0, config.schedule.poll_seconds))
            return
        except (TransportError, DatabaseError, *DATABASE_AWAY) as exc:
            refused = refused or isinstance(exc, TransportError)
            pause = config.smtp.retry_relay_seconds
            # the message without its steps: "start delivering again" is what happens next
            log.error("%s; delivering again in %s seconds", getattr(exc, "message", exc), pause)
            stop.wait(pause)


def take_back_unsubscribe(session: Session, config: Config, subscriber: Subscriber, why: Consent) -> bool:
    """取り消す on the unsubscribe page (the caller checks who and how recently): the reader is
    back, and nothing the unsubscribe kept from them is lost: the issue it stopped, and any issue
    whose send started meanwhile, go to them after all, even if the rest of the list was sent
    meanwhile; nothing goes to an address that had bounced. False unless they were unsubscribed."""
    left_at = consent.last_recorded(session, subscriber, "opt_out")
    if not consent.undo_unsubscribe(session, subscriber, why):
        return False
    if subscriber.status == "active":
        issues = outbox.restore_for_subscriber(session, subscriber.id, utcnow())
        if left_at is not None:
            issues |= outbox.catch_up(session, subscriber.id, left_at, addresses.sender_domain(config),
                                      config.mailmag.language)
        transitions.reopen(session, issues)
    return True
