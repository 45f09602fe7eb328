"""While `mailmag serve` runs: purge unconfirmed subscribers (and old subscribe attempts) hourly."""

from __future__ import annotations

import logging
import threading

from mailmag.audience import consent
from mailmag.services import Services

log = logging.getLogger("mailmag.web")
INTERVAL_SECONDS = 3600


def purge_once(services: Services) -> int:
    """One purge in one unit of work; returns the pending subscribers deleted."""
    with services.session() as session:
        return consent.purge_pending(session, services.config.web.purge_pending_after_hours)


def start(services: Services, interval: float = INTERVAL_SECONDS) -> threading.Event:
    """Purge now and every `interval` seconds in a daemon thread; set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                purged = purge_once(services)
                if purged:
                    log.info("purged %d unconfirmed subscribers", purged)
            except Exception:  # a database hiccup must not end the loop
                log.exception("purging unconfirmed subscribers failed")
            stop.wait(interval)

    threading.Thread(target=loop, name="mailmag-purge", daemon=True).start()
    return stop
