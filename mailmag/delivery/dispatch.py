"""The worker: K threads, each with one persistent connection, draining the outbox.

Each thread claims a batch (committed before any SMTP I/O), then per delivery: waits for
the rate limiter, personalizes the frozen rendering, sends, and commits the result before
the next message. So a crash can leave at most one message per connection in the
ambiguous window (accepted by the relay, result not yet committed); its lease expires and
it is sent again — at-least-once, as Postfix does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Connection as DbConnection
from sqlalchemy import select

from mailmag import db, schedule
from mailmag.audience import bounces
from mailmag.delivery import messages, outbox
from mailmag.delivery.ratelimit import RateLimiter
from mailmag.delivery.transports import (
    Connection,
    PermanentFailure,
    TemporaryFailure,
    Transport,
)
from mailmag.errors import InvalidInput, MailmagError, StateError
from mailmag.models import Issue, Rendering, utcnow
from mailmag.services import Services

log = logging.getLogger(__name__)
# How often a sending thread asks which of its claimed rows it still holds (opt-outs, leases).
HELD_CHECK_SECONDS = 0.5


@dataclasses.dataclass
class Stats:
    """What one run did, summed over its threads."""

    sent: int = 0
    failed: int = 0
    deferred: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, field: str) -> None:
        with self.lock:
            setattr(self, field, getattr(self, field) + 1)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Skeletons:
    """Per-issue message skeletons, prepared once per (issue, language) and shared by threads."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.dkim = messages.load_dkim(services.config)
        self._cache: dict[tuple[int, str], messages.Skeleton] = {}
        self._lock = threading.Lock()

    def get(self, issue_id: int, lang: str) -> messages.Skeleton:
        key = (issue_id, lang)
        skeleton = self._cache.get(key)
        if skeleton is not None:
            return skeleton
        with self._lock, self.services.session() as session:
            if key not in self._cache:
                rendering = session.scalar(
                    select(Rendering).where(Rendering.issue_id == issue_id, Rendering.lang == lang)
                )
                number = session.scalar(select(Issue.number).where(Issue.id == issue_id))
                self._cache[key] = messages.prepare(rendering, number, self.services.config, dkim=self.dkim)
            return self._cache[key]


class Dispatcher:
    """Drains the outbox through `transport` with `concurrency` connections."""

    def __init__(
        self,
        services: Services,
        transport: Transport,
        *,
        concurrency: int | None = None,
        owner: str | None = None,
        progress: Callable[[int], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        config = services.config
        self.services = services
        self.transport = transport
        self.concurrency = concurrency or config.smtp.max_connections
        self.owner = owner or worker_id()
        self.progress = progress
        self.clock = clock
        self.secret = services.secret_key
        self.skeletons = Skeletons(services)
        self.limiter = RateLimiter(config.smtp.rate_per_second, config.smtp.rate_per_hour)
        # SQLite has one writer at a time and its busy handler sleeps a millisecond or more
        # before trying again; our own threads queue on a lock instead, which wakes at once.
        sqlite = services.engine.dialect.name == "sqlite"
        self.write_lock: contextlib.AbstractContextManager = (
            threading.Lock() if sqlite else contextlib.nullcontext()
        )
        # Claim no more than a thread may send, at the rate limit, in half its lease.
        self.batch_size = config.dispatch.batch_size
        if config.smtp.rate_per_second > 0:
            share = config.smtp.rate_per_second * config.dispatch.lease_seconds / 2 / self.concurrency
            self.batch_size = max(1, min(self.batch_size, int(share)))
        self.stop = threading.Event()
        self.stats = Stats()
        self.error: BaseException | None = None

    def run(self, *, once: bool = False, poll_seconds: float = 2.0) -> Stats:
        """Send until stopped (or, with `once`, until nothing is due).

        Raises MailmagError when the relay refuses us or the configuration is wrong; every
        unsent claim has been handed back by then.
        """
        self._prime_hourly_limit()
        # One connection per thread for the `sent` results, held for a batch, in a pool of its
        # own: sharing the services' pool, threads holding one each could wait forever for a
        # second (a deferral's session) once there are more threads than that pool holds.
        self.results_engine = db.make_engine(self.services.config.database.url, pool_size=self.concurrency)
        threads = [
            threading.Thread(target=self._thread_main, args=(once, poll_seconds), name=f"send-{i}")
            for i in range(self.concurrency)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self.results_engine.dispose()
        if self.error is not None:
            raise self.error
        return self.stats

    def _prime_hourly_limit(self) -> None:
        """The hourly limit counts what was sent in the last hour, also before a restart."""
        if self.limiter.per_hour:
            with self.services.session() as session:
                self.limiter.prime(outbox.sent_since(session, self.clock() - dt.timedelta(hours=1)))

    def _thread_main(self, once: bool, poll_seconds: float) -> None:
        connection = self.transport.connect()
        try:
            while not self.stop.is_set():
                if not schedule.window_open(self.clock(), self.services.config):
                    if once:
                        return  # queued deliveries wait for the send window
                    self.stop.wait(poll_seconds)
                    continue
                batch = self._claim()
                if not batch:
                    if once and not self._anything_due():
                        return
                    self.stop.wait(poll_seconds if not once else 0.2)
                    continue
                self._send_batch(connection, batch)
        except MailmagError as exc:  # the relay refuses us, or the configuration is wrong
            self.error = exc
            self.stop.set()
        except BaseException as exc:  # a bug: stop everything, leave leases to expire
            log.exception("worker thread crashed")
            self.error = exc
            self.stop.set()
        finally:
            connection.close()

    def _claim(self) -> list[outbox.Claimed]:
        config = self.services.config.dispatch
        now = self.clock()
        with self.services.session() as session:
            outbox.expire_leases(session, now, config.max_lease_expiries)
            claimed = outbox.claim(session, self.owner, self.batch_size, now, config.lease_seconds)
        with self.services.session() as session:
            outbox.complete_issues(session)
        return claimed

    def _anything_due(self) -> bool:
        with self.services.session() as session:
            return outbox.due_count(session, self.clock()) > 0

    def _send_batch(self, connection: Connection, batch: list[outbox.Claimed]) -> None:
        # The `sent` results go through a connection held for the whole batch: a pool checkout
        # and an ORM session per message cost more than building and sending the message.
        with self.results_engine.connect() as results:
            if results.dialect.name == "postgresql":
                # The result is one UPDATE: in autocommit it is its own transaction, durable when
                # it returns, in one round trip instead of three (BEGIN, UPDATE, COMMIT).
                results.execution_options(isolation_level="AUTOCOMMIT")
            self._send_each(connection, batch, results)

    def _send_each(self, connection: Connection, batch: list[outbox.Claimed], results: DbConnection) -> None:
        # A batch never outlives its lease: past the deadline another worker may take its rows.
        deadline = time.monotonic() + self.services.config.dispatch.lease_seconds * 0.8
        held, checked = {d.id for d in batch}, time.monotonic()
        for index, delivery in enumerate(batch):
            if self.stop.is_set() or time.monotonic() > deadline:
                self._release(batch[index:])
                return
            if time.monotonic() - checked > HELD_CHECK_SECONDS:
                # An opt-out (or a lost lease) takes a claimed row away: do not send it.
                with self.services.session() as session:
                    held = outbox.held(session, [d.id for d in batch[index:]], self.owner)
                checked = time.monotonic()
            if delivery.id not in held:
                continue
            try:
                renewed = self._send_one(connection, delivery, results, deadline)
            except MailmagError:
                self._release(batch[index:])  # the relay or the configuration refuses: stop
                raise
            if not renewed:
                # 421 or a dropped connection: the rest of this batch waits for a new session.
                self._release(batch[index + 1 :], delay=30)
                return

    def _send_one(
        self, connection: Connection, delivery: outbox.Claimed, results: DbConnection, deadline: float
    ) -> bool:
        """Send one delivery and commit its result; False when the connection must be renewed."""
        skeleton = self.skeletons.get(delivery.issue_id, delivery.lang)
        recipient = messages.Recipient(delivery.id, delivery.subscriber_id, delivery.email, delivery.name,
                                       delivery.message_id, delivery.link_key)
        try:
            envelope_from, data = messages.personalize(skeleton, recipient, self.secret)
        except InvalidInput as exc:  # e.g. a line break in a name: this recipient only
            self._fail(delivery, PermanentFailure(0, f"cannot build the message: {exc}", blocked=True))
            return True
        if not self.limiter.acquire(self.stop) or time.monotonic() > deadline:
            self._release([delivery])  # stopped, or the lease ran out while waiting: not sent
            return True
        try:
            reply = connection.send(envelope_from, delivery.email, data)
        except TemporaryFailure as failure:
            self._defer(delivery, failure)
            return not failure.reconnect
        except PermanentFailure as failure:
            self._fail(delivery, failure)
            return True
        with self.write_lock, results.begin():  # committed before this connection's next message
            outbox.mark_sent(results, delivery.id, self.owner, reply.reply, self.clock())
        self.stats.add("sent")
        if self.progress:
            self.progress(1)
        return True

    def _defer(self, delivery: outbox.Claimed, failure: TemporaryFailure) -> None:
        now = self.clock()
        age = (now - delivery.created_at).total_seconds()
        retry = self.services.config.retry
        reply = ("ambiguous: " if failure.ambiguous else "") + str(failure)
        with self.services.session() as session:
            if age >= retry.lifetime_seconds or (
                failure.ambiguous and delivery.last_reply.startswith("ambiguous")
            ):
                outbox.mark_failed(session, delivery.id, self.owner, f"gave up: {reply}")
                self.stats.add("failed")
                return
            if failure.ambiguous:
                log.warning("delivery %s: connection lost after the final dot; retrying once", delivery.id)
            at = now + dt.timedelta(seconds=outbox.retry_delay(retry, age))
            outbox.mark_retry(session, delivery.id, self.owner, reply, at)
        self.stats.add("deferred")

    def _fail(self, delivery: outbox.Claimed, failure: PermanentFailure) -> None:
        with self.services.session() as session:
            if outbox.mark_failed(session, delivery.id, self.owner, str(failure)) and not failure.blocked:
                bounces.record_smtp_rejection(session, delivery.id, delivery.subscriber_id, failure)
        self.stats.add("failed")
        if self.progress:
            self.progress(1)

    def _release(self, deliveries: list[outbox.Claimed], delay: float | None = None) -> None:
        at = self.clock() + dt.timedelta(seconds=delay) if delay else None
        with self.services.session() as session:
            for delivery in deliveries:
                outbox.release(session, delivery.id, self.owner, at)


def send_test(services: Services, transport: Transport, issue: Issue, addresses: list[str],
              lang: str | None = None) -> list[tuple[str, str]]:
    """`issues test`: the real message of `issue`, sent now to `addresses`, outside the outbox.

    The links in it are a recipient's links for subscriber 0, which matches nobody: a test
    reader clicking "unsubscribe" changes nothing. Returns (address, outcome) pairs.
    """
    config = services.config
    lang = lang or config.mailmag.language
    rendering = next((r for r in issue.renderings if r.lang == lang), None)
    if rendering is None:
        raise StateError(f"issue {issue.number} has no '{lang}' edition")
    skeleton = messages.prepare(rendering, issue.number, config, dkim=messages.load_dkim(config))
    connection = transport.connect()
    results = []
    try:
        for address in addresses:
            recipient = messages.Recipient(0, 0, address, "", messages.make_message_id(config))
            envelope_from, data = messages.personalize(skeleton, recipient, services.secret_key)
            try:
                results.append((address, connection.send(envelope_from, address, data).reply))
            except (TemporaryFailure, PermanentFailure) as failure:
                results.append((address, f"not sent: {failure}"))
    finally:
        connection.close()
    return results
