"""The subscribe form's mails, sent by one background thread so no answer ever waits for SMTP.

The form's answer must not reveal whether an address was already on the list, also not by
its timing: the request only decides which mail to send (consent.request_subscription) and
hands it over here. A mail that cannot be sent is logged and its attempt stops counting
against the address's daily limit, so the person can simply try again; so does one still
unsent a while after it was asked for (consent.MAIL_LOST_AFTER: it waited in a web process that
stopped), until it is sent after all.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from mailmag import links
from mailmag.audience import consent, notices
from mailmag.delivery.transports import TemporaryFailure
from mailmag.services import Services

log = logging.getLogger("mailmag.web")


class Mailer:
    """A queue of consent.Mail and the thread that renders, builds and sends them."""

    def __init__(self, services: Services, secret: str) -> None:
        self.services = services
        self.secret = secret
        self.env = notices.environment(services.config)
        self.queue: queue.Queue[consent.Mail | None] = queue.Queue()  # None: stop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, mail: consent.Mail) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mailmag-web-mailer", daemon=True)
                self._thread.start()
        self.queue.put(mail)

    def wait(self) -> None:
        """Until every submitted mail was sent or given up (tests and shutdown)."""
        self.queue.join()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self.queue.put(None)
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            mail = self.queue.get()
            try:
                if mail is None:
                    return
                self._deliver(mail)
            finally:
                self.queue.task_done()

    def _deliver(self, mail: consent.Mail) -> None:
        try:
            self.send(mail)
        except Exception as exc:  # the thread must survive a relay or template failure
            if isinstance(exc, TemporaryFailure) and exc.ambiguous:
                # The line dropped after the final dot: the relay may have it, so it counts as
                # sent (helper-99: a relay slower than timeout_seconds let anyone mail an address
                # again and again, each such mail freed as failed).
                log.warning("the %s mail of subscribe attempt %s may have gone: %s", mail.kind,
                            mail.attempt_id, exc)
                self._record(consent.mail_sent, mail)
                return
            log.exception("could not send the %s mail of subscribe attempt %s", mail.kind, mail.attempt_id)
            self._record(consent.mail_failed, mail)
        else:
            self._record(consent.mail_sent, mail)

    def _record(self, outcome: Callable[[Session, int], None], mail: consent.Mail) -> None:
        try:
            with self.services.session() as session:
                outcome(session, mail.attempt_id)
        except Exception:  # the database gone for a moment: the thread goes on with the next mail
            log.exception("could not record subscribe attempt %s", mail.attempt_id)

    def render(self, mail: consent.Mail) -> tuple[str, str]:
        """(subject, text): templates/web/mail/<kind>.<lang>.txt.j2, first line the subject."""
        config = self.services.config
        base_url = config.mailmag.base_url
        if mail.kind == "confirm":
            link = links.confirm_url(base_url, self.secret, mail.subscriber_id, mail.link_key, mail.opt_outs)
        else:
            link = links.preferences_url(base_url, self.secret, mail.subscriber_id, mail.link_key)
        return notices.render(self.env, config, mail.kind, mail.lang, link=link, email=mail.email,
                              hours=config.web.confirm_hours, subscribe_url=links.subscribe_url(base_url))

    def send(self, mail: consent.Mail) -> None:
        # No name from the form reaches the mail: a stranger typed it (confirmation-mail spam).
        notices.send(self.services.config, mail.email, *self.render(mail))
