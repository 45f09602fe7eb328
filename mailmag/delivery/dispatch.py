"""The worker: K threads, each with one persistent connection, draining the outbox.

Each thread claims a batch under an owner of its own (committed before any SMTP I/O), then
per delivery: takes its message personalized from the frozen rendering (built a few at a
time, `Ahead`), waits for the rate limiter, sends, and commits the result before the next
message's content goes (while the relay reads that message's envelope, `Unrecorded`). So a
crash can leave at most one message per connection in the ambiguous window
(accepted by the relay, result not yet committed); its lease expires and it is sent again —
at-least-once, as Postfix does. What goes wrong, and what happens then:

    4xx, or a dropped connection    that message is deferred; the connection reopens and
                                    the batch goes on
    a drop after the final dot      deferred the same way ([retry] until its lifetime), as
                                    the relay may or may not have it: a second copy is
                                    better than a subscriber without the issue; the row's
                                    last_reply says "ambiguous" from then on
    421                             that message is deferred and its connection waits
                                    [smtp] throttle_seconds; each 421 takes one connection
                                    away, and they come back as messages are accepted;
                                    421 at every greeting is the relay unreachable
    the relay cannot be reached     the batch goes back untouched; sending pauses for
                                    [smtp] retry_relay_seconds (`--once`: the run ends), and
                                    the issues show "waiting for the relay since …"
    "relay access denied", or       the run stops with one line naming the problem; those
      [dispatch] refusals_to_stop     messages go back to the queue, nobody is failed
      refusals in a row that are
      not the recipients' fault
    the database away or locked     no new message until the result in hand is recorded;
                                    tried again with backoff ([dispatch] database_retry_*)
    a slow message                  a keeper thread renews the leases of every held claim
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import functools
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import NamedTuple

from sqlalchemy import Connection as DbConnection
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailmag import clock, db, links
from mailmag.addresses import make_message_id
from mailmag.config import Config
from mailmag.delivery import messages, outbox, wire
from mailmag.delivery.dkim import load_dkim
from mailmag.delivery.ratelimit import RateLimiter
from mailmag.delivery.results import SentWriter, sent_writer
from mailmag.delivery.transports import (
    ADDRESS,
    MAILBOX,
    MESSAGE,
    POLICY,
    RELAY,
    Connection,
    PermanentFailure,
    TemporaryFailure,
    Transport,
)
from mailmag.delivery.window import window_open
from mailmag.delivery.workstate import (
    DATABASE_AWAY,
    JUMP_LOOK_SECONDS,
    DatabaseGuard,
    DropsInRow,
    ExpiryHold,
    Leases,
    Refusals,
    Throttle,
    reason,
)
from mailmag.errors import DatabaseError, Fix, InvalidInput, MailmagError, StateError, TransportError
from mailmag.models import Issue, Rendering, utcnow
from mailmag.services import Services

log = logging.getLogger(__name__)
# How often a sending thread asks which of its claimed rows it still holds (opt-outs).
HELD_CHECK_SECONDS = 0.5
# A result's commit that took longer than this waited for another writer's lock (an opt-out's, a
# cancel's): the rows are then read again before the next message goes (~1 ms without a wait).
RECORD_WAITED_SECONDS = 0.05
# The shortest wait of an idle thread for a deferred message coming due (never a busy loop).
MIN_IDLE_SECONDS = 0.2
# `once` leaves the rest for a later run rather than wait longer than this for the rate limit
# (the hourly limit can mean an hour): `worker --once` sends what may go now.
ONCE_MAX_WAIT_SECONDS = 60.0
# A thread that must wait for a rate-limit turn hands its batch back and waits with nothing
# claimed, waking this much early to claim again; a wait this short is waited holding the batch.
# A worker killed while it holds a batch charges its first row as if it had been on the wire
# (outbox.expire_leases), so waits are spent unclaimed; but a claim made as the turn comes free
# would leave the turn unused for as long as the claim takes (10–18 % fewer messages at 20/s).
TURN_AHEAD_SECONDS = 0.05
# How often claims also expire dead workers' leases and look for issues with nothing pending: a
# lease is minutes long, and an issue is marked sent within a second of its last result.
HOUSEKEEPING = dt.timedelta(seconds=1)


@dataclasses.dataclass
class Stats:
    """What one run did, summed over its threads.

    `lost`: messages the relay accepted whose lease another worker had taken meanwhile (the
    result was refused; the other worker may send it again). `cancelled`: messages refused or
    deferred while their row was cancelled (the reader left, or the issue's send was stopped):
    they stay cancelled. `ambiguous`: connections lost after the final dot (also counted in
    `deferred`, or `failed` past the lifetime): the relay may have kept the message, which is
    sent again. `unreachable`: why the relay could not be
    reached, if it could not.
    """

    sent: int = 0
    failed: int = 0
    deferred: int = 0
    lost: int = 0
    cancelled: int = 0
    ambiguous: int = 0
    unreachable: str = ""
    held_back: str = ""  # `once`: why messages that are due were left for a later run
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, field: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, field, getattr(self, field) + n)


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the layers above delivery do when the outbox reports something; whoever builds a
    Dispatcher wires them (scheduling.sending.hooks), so delivery imports nothing above it.
    Each runs inside the unit of work that recorded what it reports."""

    # The relay refused a recipient's address or mailbox: (session, delivery id, subscriber id, refusal).
    rejected: Callable[[Session, int, int | None, PermanentFailure], None]
    # These issues being sent have no pending delivery left.
    drained: Callable[[Session, list[int]], object]
    # The relay cannot be reached since (session, when, why) / answers again.
    relay_unreachable: Callable[[Session, dt.datetime, str], None]
    relay_reached: Callable[[Session], None]
    # Deliveries of these issues were queued again: a "sent" one is being sent again.
    requeued: Callable[[Session, set[int]], None]


def _marked(delivery: outbox.Claimed, reply: str, ambiguous: bool = False) -> str:
    """The reply to record: marked while this delivery has had a drop after the final dot, so
    the rows that may have gone twice stay countable (last_reply LIKE 'ambiguous%')."""
    mark = outbox.AMBIGUOUS
    if ambiguous:
        return f"{mark}: {reply}"
    return f"{mark} before; {reply}" if delivery.last_reply.startswith(mark) else reply


def _refused(words: object) -> str:
    """What the relay did, as _not_recorded tells it of a refusal whose result was not written."""
    return f"the relay refused it ({words}), and"


def worker_host() -> str:
    """This machine, as each of its workers' lease owner begins (its leases are on its clock)."""
    return socket.gethostname()[:60]


def worker_id() -> str:
    return f"{worker_host()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Skeletons:
    """Per-issue message skeletons, prepared once per (issue, language) and shared by threads."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.dkim = load_dkim(services.config)
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
                if rendering is None or number is None:
                    raise StateError(f"issue {issue_id} has no {lang} rendering to send",
                                     ja=f"号（ID {issue_id}）には送信する{outbox.edition_ja(lang)}"
                                        "がありません")
                self._cache[key] = messages.prepare(rendering, number, self.services.config, dkim=self.dkim)
            return self._cache[key]


# A message as built for one delivery, or what kept it from being built.
Built = tuple[str, bytes] | MailmagError


class Ahead:
    """The next few messages of a batch, built together just before they are needed.

    Building AHEAD messages in a row costs a third less CPU per message than building each
    one just before it is sent, between waits for the relay and the database (the code and the
    issue's pieces stay in the CPU caches; benchmarks/dispatch.py measured 345 → 255 µs a
    message and +20 % throughput with 16). Its turn comes after the rate limiter's wait; a
    message built more than MAX_AGE before it (a slow relay, a rate limit) is built again, so
    its Date is within MAX_AGE of the moment it goes (the wall clock of mailmag.clock, which
    writes the Date).
    """

    SIZE = 16
    MAX_AGE = dt.timedelta(seconds=5)

    def __init__(self, build: Callable[[outbox.Claimed], Built]) -> None:
        self.build = build
        self._built: dict[int, Built] = {}
        self._at = dt.datetime.min.replace(tzinfo=dt.UTC)

    def take(self, batch: list[outbox.Claimed], position: int) -> Built:
        """batch[position]'s message, building it and the next ones if it is not ready."""
        delivery = batch[position]
        built = self._built.pop(delivery.id, None)
        now = clock.now()
        if built is None or not self._at <= now <= self._at + self.MAX_AGE:
            self._at = now
            built = self.build(delivery)
            self._built = {d.id: self.build(d) for d in batch[position + 1 : position + self.SIZE]}
        return built


class _Next(enum.Enum):
    """What the batch does after one delivery's send."""

    ON = "on"  # the next delivery
    THROTTLED = "throttled"  # the relay said 421: the rest of the batch goes to the other connections
    AGAIN = "again"  # nothing of it went: ask again whether it may go, then send it


class _Withdrawn(Exception):
    """The delivery being sent may no longer go (asked again after the previous result was recorded)."""


class Accepted(NamedTuple):
    """A message the relay accepted, until its result is committed."""

    owner: str
    delivery: outbox.Claimed
    reply: str
    began: float  # time.monotonic() when its transaction began: what it says of refusals (_counted)


class Unrecorded:
    """A sending thread's accepted message whose `sent` result is not committed yet (at most one).

    It is committed while the relay reads the next message's envelope (the `meanwhile` of
    SmtpConnection.send), so the database's commit and the relay's round trip overlap; and in
    any case before that message's content goes, before the thread waits for anything, and
    at the end of its batch. A crash still leaves at most one message per connection
    accepted but unrecorded.
    """

    def __init__(self) -> None:
        self._held: Accepted | None = None

    def hold(self, accepted: Accepted) -> None:
        assert self._held is None, "a result was left unrecorded"
        self._held = accepted

    def peek(self) -> Accepted | None:
        return self._held

    def take(self) -> Accepted | None:
        held, self._held = self._held, None
        return held


def batch_size(config: Config, connections: int) -> int:
    """Under a per-second limit, claim what a thread may send in one tenth of a second when
    `connections` share the limit (ratelimit: R/10 each tenth): a thread that must wait for a turn
    hands its batch back first (_wait_for_turn), so small batches keep that cheap, and the rest
    stays in the queue for the others."""
    size = config.dispatch.batch_size
    if config.smtp.rate_per_second > 0:
        per_tenth = max(int(config.smtp.rate_per_second / 10), 1)
        size = max(1, min(size, per_tenth // connections))
    return size


class Dispatcher:
    """Drains the outbox through `transport` with `concurrency` connections."""

    def __init__(
        self,
        services: Services,
        transport: Transport,
        *,
        hooks: Hooks,
        concurrency: int | None = None,
        owner: str | None = None,
        progress: Callable[[int], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        limiter: RateLimiter | None = None,
        throttle: Throttle | None = None,
        first_connection: int = 0,
    ) -> None:
        config = services.config
        self.services = services
        self.transport = transport
        self.hooks = hooks
        self.concurrency = concurrency or config.smtp.max_connections
        self.owner = owner or worker_id()
        self.progress = progress
        self.clock = clock
        # (the signing key, checked with the previous keys: a short one is refused when sending
        # starts, as serve refuses it, not days later: helper-91)
        self.secret = services.verify_keys[0]
        self.skeletons = Skeletons(services)
        # given: one the dispatchers of several processes share (scheduling.processes)
        self.limiter = limiter or RateLimiter(config.smtp.rate_per_second, config.smtp.rate_per_hour)
        # SQLite has one writer at a time and its busy handler sleeps a millisecond or more
        # before trying again; our own threads queue on a lock instead, which wakes at once.
        sqlite = services.engine.dialect.name == "sqlite"
        self.write_lock: contextlib.AbstractContextManager = (
            threading.Lock() if sqlite else contextlib.nullcontext()
        )
        self.batch_size = batch_size(config, self.concurrency)
        self.stop = threading.Event()
        self.enough = threading.Event()  # `once`: the rate limit holds the rest back (_hold_back)
        self.stats = Stats()
        self.error: BaseException | None = None
        self.leases = Leases(config.dispatch.lease_seconds)
        self.expiry = ExpiryHold(config.dispatch.lease_seconds)
        # given: one the dispatchers of several processes share, each numbering its connections
        # from `first_connection` (scheduling.processes)
        self.throttle = throttle or Throttle(self.concurrency, config.smtp.throttle_seconds)
        self.first_connection = first_connection
        self.refusals = Refusals(config.dispatch.refusals_to_stop)
        self._sizes: dict[int, int] = {}  # issue id → its messages (Refusals: an issue refused whole)
        # one relay restart drops every connection's message in flight at once: that alone is no streak
        self.drops = DropsInRow(max(config.dispatch.refusals_to_stop, self.concurrency + 1))
        self.database = DatabaseGuard(config.dispatch.database_retry_seconds,
                                      config.dispatch.database_max_retry_seconds, self.stop)
        self._claims = itertools.count(1)
        self._housekept_at: dt.datetime | None = None
        self._claim_size: int | None = None  # set at each housekeeping by _fair_share
        self._results = threading.local()
        self._relay_lock = threading.Lock()
        self._relay_down = False
        self._relay_confirmed = False  # a message went out in this run: no issue waits for the relay
        # addresses refused and not believed yet, and when (time.monotonic()) each last was (_hold)
        self._unbelieved: dict[int, float] = {}
        self._new_refusals: set[int] = set()  # of those, refused in this run for the first time
        self._refused_addresses: set[int] = set()  # refused in this run (stats.sent: accepted)
        self._once = False

    def run(self, *, once: bool = False, poll_seconds: float = 2.0) -> Stats:
        """Send until stopped (or, with `once`, until nothing is due).

        Raises MailmagError when the relay refuses us, the configuration is wrong, or (with
        `once`) nothing could be sent because the relay was unreachable; every unsent claim
        has been handed back by then.
        """
        self._once = once
        self.database.call(self._prime_hourly_limit)
        # One connection per thread for the `sent` results, held across messages, in a pool of its
        # own: sharing the services' pool, threads holding one each could wait forever for a
        # second (a deferral's session) once there are more threads than that pool holds.
        self.results_engine = db.engine_for(self.services.config.database, pool_size=self.concurrency)
        threads = [
            threading.Thread(target=self._thread_main, args=(index, once, poll_seconds), name=f"send-{index}")
            for index in range(self.concurrency)
        ]
        keeper_stop = threading.Event()
        keeper = threading.Thread(target=self._keep_leases, args=(keeper_stop,), name="lease-keeper")
        try:
            keeper.start()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            keeper_stop.set()
            keeper.join()
            self.results_engine.dispose()
        if self.error is not None:
            raise self.error
        if once and self.stats.unreachable and not self.stats.sent:
            raise TransportError(f"nothing was sent: {self.stats.unreachable}; the messages wait in the "
                                 "queue: run the worker again once the relay answers")
        return self.stats

    def _prime_hourly_limit(self) -> None:
        """The hourly limit counts what was sent in the last hour, also before a restart."""
        if self.limiter.per_hour and not self.limiter.primed:  # shared: the first process reads it
            with self.services.read_session() as session:
                now = self.clock()
                since = now - dt.timedelta(hours=1)
                sent = outbox.sent_since(session, since, self.limiter.per_hour)
                sent += outbox.unrecorded_since(session, since, now)  # may have gone, unrecorded
                self.limiter.prime((now - at).total_seconds() for at in sent)

    # -- one sending thread --------------------------------------------------------------------

    def _thread_main(self, index: int, once: bool, poll_seconds: float) -> None:
        connection = self.transport.connect()
        try:
            while not self.stop.is_set() and not self.enough.is_set():
                if not window_open(self.clock(), self.services.config):
                    if once:
                        return  # queued deliveries wait for the send window
                    self.stop.wait(poll_seconds)
                    continue
                if not self._admitted(index):  # the relay wants fewer connections
                    connection.close()
                    if once and not self._anything_due():
                        return
                    self.stop.wait(self.services.config.smtp.throttle_seconds)
                    continue
                owner, batch = self._claim()
                if not batch:
                    if once and not self._anything_due():
                        return
                    self._wait_idle(self._idle_seconds(poll_seconds) if not once else 0.2)
                    continue
                try:
                    reachable = self._send_batch(index, connection, owner, batch)
                finally:
                    self.leases.drop(owner)
                if not reachable:
                    if once:
                        return
                    self.stop.wait(self.services.config.smtp.retry_relay_seconds)
        except MailmagError as exc:  # the relay refuses us, the configuration is wrong, the database is away
            self.error = exc
            self.stop.set()
        except BaseException as exc:  # a bug: stop everything, leave leases to expire
            log.exception("worker thread crashed")
            self.error = exc
            self.stop.set()
        finally:
            connection.close()
            self._close_results()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Session]:
        """A unit of work that writes. On SQLite it first queues on the worker's own lock: a
        thread that met another's write lock in SQLite's busy handler would sleep 1, 2, 5 …
        ms at a time (benchmarks/dispatch.py: 336 result writes over 1 ms, 1.1 s in all of
        a 6 s run), and the results behind it with it."""
        with self.write_lock, self.services.session() as session:
            yield session

    def _claim(self) -> tuple[str, list[outbox.Claimed]]:
        """A batch under an owner of its own: no other claim, of this worker or another, shares it."""
        owner = f"{self.owner}:{next(self._claims)}"
        config = self.services.config.dispatch
        tries = 0

        def work() -> list[outbox.Claimed]:
            nonlocal tries
            tries += 1
            now = self.clock()
            self.expiry.see(now)
            self.leases.hold(owner, time.monotonic())
            housekeeping = self._housekeeping_due(now)
            if housekeeping and (young := self.expiry.young_for()) and self._leases_expired(now):
                self.stop.wait(young)  # live holders renew within a moment of a jump (ExpiryHold)
                now = self.clock()
            with self._writing() as session:
                if tries > 1 and (landed := outbox.claimed_by(session, owner)):
                    return landed  # the lost answer's claim had landed: those rows are ours
                if housekeeping and self.expiry.may_expire():
                    outbox.expire_leases(session, now, config.max_lease_expiries,
                                         max_copies=self.services.config.retry.ambiguous_max_attempts)
                if housekeeping or self._claim_size is None:  # (threads that start together all size)
                    self._claim_size = self._fair_share(session, now)
                claimed = outbox.claim(session, owner, self._claim_size, now, config.lease_seconds)
            if housekeeping or not claimed:  # an empty claim may be a run's last: its issues finish now
                with self._writing() as session:
                    drained = outbox.drained_issues(session)
                    if drained:
                        self.hooks.drained(session, drained)
            return claimed

        batch = self.database.call(work)
        if not batch:
            self.leases.drop(owner)
        return owner, batch

    def _leases_expired(self, now: dt.datetime) -> bool:
        with self.services.read_session() as session:
            return outbox.any_lease_expired(session, now)

    def _fair_share(self, session: Session, now: dt.datetime) -> int:
        """A claim's size: [dispatch] batch_size, or less when what is due would not keep every
        connection busy (the worker's in all, across its processes). 300 due and four connections
        took 200 and 100, and two connections sent it alone; now each takes 75."""
        connections = max(1, self.throttle.limit)
        due = outbox.due_up_to(session, now, self.batch_size * connections)
        return max(1, min(self.batch_size, -(-due // connections)))

    def _housekeeping_due(self, now: dt.datetime) -> bool:
        """Whether this claim expires dead workers' leases and finishes drained issues: at most
        once per HOUSEKEEPING of the dispatcher's clock (each is a query, ~1 ms of a claim), and
        at once when that clock jumps (tests move it to expire leases)."""
        last = self._housekept_at
        if last is not None and last <= now < last + HOUSEKEEPING:
            return False
        self._housekept_at = now
        return True

    def _idle_seconds(self, poll_seconds: float) -> float:
        """Until the next poll, or until a deferred message comes due if that is sooner: a
        retry waits for its backoff, not for the backoff and a poll."""
        def work() -> dt.datetime | None:
            with self.services.read_session() as session:
                return outbox.next_due(session)

        due = self.database.call(work)
        if due is None:
            return poll_seconds
        return min(poll_seconds, max((due - self.clock()).total_seconds(), MIN_IDLE_SECONDS))

    def _wait_idle(self, seconds: float) -> None:
        """Wait `seconds` for work, but not much longer than `run` takes to bring the queue's next
        tries back after a step back of the clock: they were stamped on the old clock, and the wait
        was planned on them (helper-69 F2: sending paused for up to a poll after the step)."""
        end, settle = time.monotonic() + seconds, 2 * clock.LOOK_SECONDS
        while True:
            self.expiry.see(self.clock())
            if (since := self.expiry.since_set_back()) < settle:
                end = min(end, time.monotonic() + settle - since)
            left = end - time.monotonic()
            if left <= 0 or self.stop.wait(min(left, clock.LOOK_SECONDS)):
                return

    def _anything_due(self) -> bool:
        def work() -> bool:
            with self.services.read_session() as session:
                return outbox.due_count(session, self.clock()) > 0

        return self.database.call(work)

    def _send_batch(self, index: int, connection: Connection, owner: str,
                    batch: list[outbox.Claimed]) -> bool:
        """Send a batch in id order; False when the relay could not be reached (the rest handed back)."""
        held, checked = {d.id for d in batch}, time.monotonic()

        def still_mine(position: int, refresh: bool = False) -> bool:
            """An opt-out, an issue cancel or a lost lease takes a claimed row away: do not send it."""
            nonlocal held, checked
            if refresh or time.monotonic() - checked > HELD_CHECK_SECONDS:
                held = self.database.call(functools.partial(self._held, owner, batch[position:]))
                checked = time.monotonic()
            return batch[position].id in held

        ahead, unrecorded = Ahead(self._build), Unrecorded()
        try:
            return self._send_each(index, connection, owner, batch, still_mine, ahead, unrecorded)
        except MailmagError as exc:  # the worker stops (a relay refusal, a dead process's lock)
            if not isinstance(exc, DatabaseError):  # which could record nor hand back anything
                self._record(unrecorded)
                self._release(owner, batch)  # what is unsent goes back now, not when the lease passes
            raise
        finally:
            self._record(unrecorded)

    def _send_each(self, index: int, connection: Connection, owner: str, batch: list[outbox.Claimed],
                   still_mine: Callable[[int, bool], bool], ahead: Ahead, unrecorded: Unrecorded) -> bool:
        position = 0
        while position < len(batch):
            rest = batch[position:]
            if not self._may_send(index, owner) or self.enough.is_set():
                self._release(owner, rest)
                return True
            # Asked before the rate limiter's turn, so a row taken away spends no turn of the limit
            # (a thread that must wait claims afresh after it: an opt-out meanwhile is honoured).
            if not still_mine(position, False):
                # let go of it, unless it has just come back (an opt-out taken back): then it goes
                if self._let_go(owner, batch[position]) or not still_mine(position, True):
                    position += 1
                continue
            if (wait := self.limiter.take_turn()) > 0:
                self._record(unrecorded)  # no result waits while the thread does
                if self._wait_for_turn(owner, rest, wait):
                    continue  # a short wait, the batch held: asked again, from the top
                return True
            # Asked again once the previous result is recorded (the send's `meanwhile`): that can
            # take seconds (a locked database), and an opt-out or a lost lease meanwhile must hold.
            may_go = functools.partial(self._may_go, index, owner, still_mine, position)
            try:
                outcome = self._send_in_turn(connection, owner, ahead, batch, position, unrecorded, may_go)
            except TemporaryFailure as failure:  # no session could be opened: nothing was sent
                self._release(owner, rest)
                # 421 before any session: "not now", one connection fewer; every attempt so, for as
                # long as every connection would have tried a few times with nothing accepted, is an
                # outage (`--once` waited for it for ever)
                if failure.code == 421 and not self.throttle.shut_out(self._shut_out_seconds()):
                    self._throttled(index)
                    return True
                self._relay_unreachable(failure)
                return False
            except MailmagError:
                self._release(owner, rest)  # the relay or the configuration refuses: stop
                raise
            if outcome is _Next.THROTTLED:  # 421: the rest of the batch goes to the other connections
                self._release(owner, batch[position + 1 :])
                self._throttled(index)
                return True
            if outcome is _Next.ON:
                position += 1
        return True

    def _send_in_turn(self, connection: Connection, owner: str, ahead: Ahead, batch: list[outbox.Claimed],
                      position: int, unrecorded: Unrecorded, may_go: Callable[[bool], bool]) -> _Next:
        """Build and send batch[position] in the rate limit's turn just taken, which counts from
        when the send is over (ratelimit: after the relay counted the message), however it ended."""
        try:
            built = ahead.take(batch, position)
            return self._send_one(connection, owner, batch[position], built, unrecorded, may_go)
        finally:
            self.limiter.done()

    def _wait_for_turn(self, owner: str, rest: list[outbox.Claimed], wait: float) -> bool:
        """No turn of the rate limit is free for `wait` seconds. A short wait (TURN_AHEAD_SECONDS)
        is waited holding the batch (True). A longer one hands the rest of the batch back and is
        waited with nothing claimed, up to TURN_AHEAD_SECONDS before the turn; the thread then
        claims again and asks again (another thread or process may have taken the turn, and `once`
        then holds back: no hour slept out)."""
        if self._once and wait > ONCE_MAX_WAIT_SECONDS:
            self._hold_back(owner, rest, wait)
            return False
        if wait <= TURN_AHEAD_SECONDS and not self.stop.wait(wait):
            return True
        self._release(owner, rest)
        self.stop.wait(wait - TURN_AHEAD_SECONDS)
        return False

    def _hold_back(self, owner: str, rest: list[outbox.Claimed], wait: float) -> None:
        """`once`: the rate limit holds the next message too long; the rest goes back to the queue."""
        self._release(owner, rest)
        smtp = self.services.config.smtp
        limit = f"rate_per_hour = {smtp.rate_per_hour}" if smtp.rate_per_hour else \
            f"rate_per_second = {smtp.rate_per_second}"
        minutes = max(1, round(wait / 60))
        self.stats.held_back = (f"[smtp] {limit} lets the next message go in about {minutes} min; the rest "
                                "waits in the queue: run the worker again then")
        # every thread ends, as when nothing is due; one that has taken its turn still sends in it
        # (stopping it would spend the turn on nothing: 2 sent of 3 an hour)
        self.enough.set()

    def _may_go(self, index: int, owner: str, still_mine: Callable[[int, bool], bool], position: int,
                waited: bool) -> bool:
        """`waited`: the previous result's commit waited for a lock, maybe an opt-out's or a
        cancel's: the rows are read again, however recent the last reading."""
        return self._may_send(index, owner) and still_mine(position, waited)

    def _may_send(self, index: int, owner: str) -> bool:
        """Not stopped, the claim's lease not running out, and the relay not asking for fewer connections."""
        return not self.stop.is_set() and not self.leases.running_out(owner) and self._admitted(index)

    def _admitted(self, index: int) -> bool:
        """The relay does not want this thread's connection gone (each 421 takes one away)."""
        return self.throttle.admits(self.first_connection + index)

    def _let_go(self, owner: str, delivery: outbox.Claimed) -> bool:
        def work() -> bool:
            with self._writing() as session:
                return outbox.let_go(session, delivery.id, owner)

        return self.database.call(work)

    def _held(self, owner: str, rest: list[outbox.Claimed]) -> set[int]:
        with self.services.read_session() as session:
            return outbox.held(session, [d.id for d in rest], owner)

    def _build(self, delivery: outbox.Claimed) -> Built:
        """The delivery's message (envelope sender, bytes), or why it could not be built."""
        try:
            skeleton = self.database.call(lambda: self.skeletons.get(delivery.issue_id, delivery.lang))
            recipient = messages.Recipient(delivery.id, delivery.subscriber_id, delivery.email, delivery.name,
                                           delivery.message_id, delivery.link_key)
            return messages.personalize(skeleton, recipient, self.secret)
        except MailmagError as exc:  # raised at the delivery's turn, not while an earlier one is sent
            return exc

    def _send_one(self, connection: Connection, owner: str, delivery: outbox.Claimed, built: Built,
                  unrecorded: Unrecorded, may_go: Callable[[bool], bool]) -> _Next:
        """Send one delivery and record its result (an accepted one is held in `unrecorded`, and
        committed during the next send or before the thread waits). Raises TemporaryFailure
        when no session could be opened (nothing was sent)."""
        if isinstance(built, InvalidInput):  # e.g. a line break in a name: this recipient only
            self._record(unrecorded)
            refusal = PermanentFailure(0, f"cannot build the message: {built}", blocked=True)
            self._fail(owner, delivery, refusal)
            return _Next.ON
        if isinstance(built, MailmagError):  # no rendering, the database gone: stop, as before any send
            raise built
        envelope_from, data = built
        began = time.monotonic()
        try:
            reply = wire.send_prepared(connection, envelope_from, delivery.email, data,
                                       meanwhile=functools.partial(self._record_now, unrecorded, may_go))
        except _Withdrawn:  # nothing of it was accepted (the session was dropped before its final dot)
            return _Next.AGAIN
        except DATABASE_AWAY:  # the previous result was not committed, so this message did not go
            self._record(unrecorded)  # waits for the database
            return _Next.AGAIN
        except TemporaryFailure as failure:
            self._record(unrecorded)
            if failure.no_session:
                raise
            self._defer(owner, delivery, failure)
            return _Next.THROTTLED if failure.code == 421 else _Next.ON
        except PermanentFailure as failure:
            self._record(unrecorded)
            self._fail(owner, delivery, failure)
            return _Next.ON
        result = _marked(delivery, reply.reply)
        unrecorded.hold(Accepted(owner, delivery, result, began))
        self._start_sent(owner, delivery.id, result)
        if self.progress:  # the relay has it; its result is committed during the next send
            self.progress(1)
        return _Next.ON

    def _record_now(self, unrecorded: Unrecorded, may_go: Callable[[bool], bool]) -> None:
        """The send's `meanwhile`: commit the held result in one try (a database that is away
        raises, and _send_one waits for it with the guard), then ask again whether the message
        being sent may go: the commit may have waited for a lock (_Withdrawn if not)."""
        held = unrecorded.peek()
        if held is None:
            return  # nothing waited: the delivery was asked just before its send
        started = time.monotonic()
        recorded = self._record_sent(held.owner, held.delivery.id, held.reply)
        unrecorded.take()
        self._counted(held, recorded)
        if not may_go(time.monotonic() - started > RECORD_WAITED_SECONDS):
            raise _Withdrawn()

    def _record(self, unrecorded: Unrecorded) -> None:
        """Commit the held result now; while the database is away, no next message."""
        held = unrecorded.take()
        if held is not None:
            self._sent(held)

    def _sent(self, accepted: Accepted) -> None:
        owner, delivery, reply, _ = accepted
        recorded = self.database.call(lambda: self._record_sent(owner, delivery.id, reply))
        self._counted(accepted, recorded)

    def _counted(self, accepted: Accepted, recorded: bool) -> None:
        """A result written (`recorded`), or refused because the lease had passed."""
        delivery, reply = accepted.delivery, accepted.reply
        if not recorded and not self.database.call(lambda: self._sent_unclaimed(delivery.id, reply)):
            self._lost(delivery)
            return
        self.stats.add("sent")
        self.throttle.accepted()
        self.refusals.accepted(delivery.issue_id)
        self.drops.accepted()
        if self._unbelieved:
            self._ask_again(accepted.began)
        if not self._relay_confirmed or self._relay_down:
            self._relay_reached()

    def _sent_unclaimed(self, delivery_id: int, reply: str) -> bool:
        """The lease passed while the message went (a slow relay, a locked database): record it
        sent all the same if no worker has claimed the row since, so none sends it again."""
        with self._writing() as session:
            return outbox.mark_sent_unclaimed(session, delivery_id, reply, self.clock())

    def _start_sent(self, owner: str, delivery_id: int, reply: str) -> None:
        """Let the database begin the result's write while the next message is prepared (PostgreSQL)."""
        try:
            self._sent_writer().start(delivery_id, owner, reply, self.clock())
        except DATABASE_AWAY:
            self._close_results()  # _record_sent writes it on a fresh connection, waiting if need be

    def _record_sent(self, owner: str, delivery_id: int, reply: str) -> bool:
        """Commit the result (the write started for it, else a new one); True if the lease was held."""
        writer = self._sent_writer()
        try:
            with self.write_lock:
                if writer.started != delivery_id:
                    writer.start(delivery_id, owner, reply, self.clock())
                return writer.finish()
        except DATABASE_AWAY:
            self._close_results()  # a connection the server ended, or mid-transaction: a fresh one next time
            raise

    def _sent_writer(self) -> SentWriter:
        """This thread's `sent` writer: one prepared UPDATE on its results connection."""
        writer = getattr(self._results, "writer", None)
        if writer is None or getattr(self._results, "connection", None) is None:
            writer = self._results.writer = sent_writer(self._results_connection())
        return writer

    def _results_connection(self) -> DbConnection:
        """This thread's connection for `sent` results: a pool checkout and an ORM session per
        message cost more than building and sending the message."""
        results = getattr(self._results, "connection", None)
        if results is None:  # in autocommit on PostgreSQL: results.PostgresWriter sets it
            results = self.results_engine.connect()
            self._results.connection = results
        return results

    def _close_results(self) -> None:
        results = getattr(self._results, "connection", None)
        self._results.connection = None
        if results is not None:
            with contextlib.suppress(Exception):
                results.invalidate()
            with contextlib.suppress(Exception):
                results.close()

    def _write_result(self, owner: str, delivery: outbox.Claimed, write: Callable[[Session], bool],
                      happened: str, may_have_arrived: bool = False, *, reply: str) -> bool:
        """Write a failure's or a retry's result (`reply`, the row's last_reply) in a unit of work
        of its own, waiting for the database if it is away; False if the row was no longer
        `owner`'s (_not_recorded says why, with `happened`: what the relay did)."""
        tries = 0

        def work() -> bool:
            nonlocal tries
            tries += 1
            with self._writing() as session:
                # a retry: the try whose answer was lost may have landed (helper-65 F2: it was
                # logged as a lease passed to another worker, and counted lost)
                return write(session) or (tries > 1 and outbox.result_landed(session, delivery.id, reply))

        if self.database.call(work):
            return True
        self._not_recorded(owner, delivery, happened, may_have_arrived)
        return False

    def _done_failed(self) -> None:
        """One message failed for good: counted, and the progress bar moves, as for one sent."""
        self.stats.add("failed")
        if self.progress:
            self.progress(1)

    def _not_recorded(self, owner: str, delivery: outbox.Claimed, happened: str,
                      may_have_arrived: bool) -> None:
        """A refusal's or a retry's result could not be written: the row was cancelled under us
        (it stays so, and nothing goes again), or its lease passed to another worker (_lost).
        A cancelled row is let go, as one skipped before its send, so an opt-out taken back
        queues it again at once; one that `may_have_arrived` (a drop after the final dot) keeps
        when, and then goes marked as a message that may arrive twice."""
        maybe_sent = self.clock() if may_have_arrived else None

        def work() -> bool:
            with self._writing() as session:
                return outbox.let_go(session, delivery.id, owner, maybe_sent)

        if self.database.call(work):
            self.stats.add("cancelled")
            log.info("delivery %s: %s it was cancelled while it was being sent (the reader left the list, "
                     "or the issue's send was cancelled): it stays cancelled", delivery.id, happened)
            return
        self._lost(delivery, happened)

    def _lost(self, delivery: outbox.Claimed, happened: str = "the relay accepted it, but") -> None:
        """The lease passed to another worker before this result was written: the other one has
        the row now and sends it (a second copy only if the relay may have the first)."""
        self.stats.add("lost")
        log.warning("delivery %s: %s its lease had passed to another worker, which may send it again; "
                    "the result was not recorded", delivery.id, happened)

    def _defer(self, owner: str, delivery: outbox.Claimed, failure: TemporaryFailure) -> None:
        """A temporary failure, an ambiguous drop included, is retried under [retry] until the
        lifetime: a subscriber missing the issue is worse than a rare second copy. An ambiguous
        drop also gives up once it is the [retry] ambiguous_max_attempts-th: each may have been a
        copy (a 4xx refusal was none, helper-95)."""
        now = self.clock()
        age = outbox.retrying_for(delivery, now)
        retry = self.services.config.retry
        copies = delivery.maybe_copies + 1  # with this one, if it is a drop after the final dot
        give_up = age >= retry.lifetime_seconds or (
            failure.ambiguous and copies >= retry.ambiguous_max_attempts)
        # the mark goes first even on giving up, or LIKE 'ambiguous%' misses the row
        reply = _marked(delivery, f"gave up: {failure}" if give_up else str(failure), failure.ambiguous)
        if failure.ambiguous:
            self.stats.add("ambiguous")
            then = (f"failed after {copies} attempts that may each have been a copy" if give_up
                    else "retrying: it may arrive twice")
            log.warning("delivery %s: connection lost after the final dot (the relay may have it); %s",
                        delivery.id, then)

        maybe_sent = now if failure.ambiguous else None

        def write(session: Session) -> bool:
            if give_up:
                return outbox.mark_failed(session, delivery.id, owner, reply, maybe_sent)
            at = now + dt.timedelta(seconds=outbox.retry_delay(retry, age))
            since = delivery.retrying_since or now
            return outbox.mark_retry(session, delivery.id, owner, reply, at, since, maybe_sent)

        happened = (f"the relay deferred it ({failure}), and" if not failure.ambiguous
                    else "the connection was lost after the final dot (the relay may have it), and")
        if not self._write_result(owner, delivery, write, happened, failure.ambiguous, reply=reply):
            return
        if give_up:
            self._done_failed()
        else:
            self.stats.add("deferred")
        if failure.ambiguous and self.drops.add(delivery.id):
            self._dropped_too_often(failure)

    def _dropped_too_often(self, failure: TemporaryFailure) -> None:
        """Stop: every message may be reaching the relay; retrying them all would send the list twice."""
        why = (f"the connection was lost after the final dot {self.drops.limit} times in a row (last: "
                  f"{failure}): the relay may be keeping each message; check its logs and queue")
        self._relay_trouble(why)
        raise TransportError(f"{why}; those messages wait for their retry, marked ambiguous")

    def _fail(self, owner: str, delivery: outbox.Claimed, failure: PermanentFailure) -> None:
        if failure.kind in (ADDRESS, MAILBOX):
            with self._relay_lock:
                self._refused_addresses.add(delivery.id)
            if outbox.REASKED not in delivery.last_reply or not self._refusals_believable():
                self._hold(owner, delivery, failure)
                return
        if failure.kind == RELAY:
            self._release(owner, [delivery])
            why = (f"the relay refuses to relay our mail ({failure}); nobody was marked failed: check "
                   "[smtp] host, username and the relay's rules for this client")
            self._relay_trouble(why)
            raise TransportError(why, fixes=[Fix("deliver_again")])
        self._believe(owner, delivery, failure)

    def _believe(self, owner: str, delivery: outbox.Claimed, failure: PermanentFailure) -> None:
        """The refusal as the relay said it: failed, and a bad address bounced."""

        reply = _marked(delivery, str(failure))

        def write(session: Session) -> bool:
            if not outbox.mark_failed(session, delivery.id, owner, reply):
                return False
            if failure.kind in (ADDRESS, MAILBOX):
                self.hooks.rejected(session, delivery.id, delivery.subscriber_id, failure)
            return True

        if not self._write_result(owner, delivery, write, _refused(failure), reply=reply):
            return
        self._done_failed()
        if failure.kind not in (MESSAGE, POLICY):
            return
        # (a `run` said nothing of these: an issue to a few readers failed whole without a line)
        log.warning("delivery %s: the relay refused the message, not the address (%s): failed; `mailmag "
                    "issues status %s` lists it", delivery.id, failure, delivery.issue_id)
        issue = (delivery.issue_id, self._issue_size(delivery.issue_id))
        if self.refusals.add(delivery.id, delivery.email, failure.kind, after_dot=failure.after_dot,
                             issue=issue):
            self._refused_too_often(failure)

    def _issue_size(self, issue_id: int) -> int:
        """How many messages the issue has (read once a run, on its first refusal that is not the
        recipient's fault)."""
        if issue_id not in self._sizes:
            with self.services.read_session() as session:
                self._sizes[issue_id] = outbox.counts(session, issue_id).total
        return self._sizes[issue_id]

    def _hold(self, owner: str, delivery: outbox.Claimed, failure: PermanentFailure) -> None:
        """A recipient's address refused: not believed until the relay accepts another message
        after it. A relay set up wrong (one that takes every domain for its own, and accepts
        only its own mailbox, or nothing), or one whose user lookup broke mid-send, refuses
        everyone so (550 5.1.1 User unknown), and believing it would bounce real readers off
        the list, for good (coming back takes a new opt-in). The message waits; a message
        accepted after it (one whose transaction began after the refusal) has it asked again,
        and that answer is believed (_fail). Refusals after the list's last accepted message
        wait for their retry and the next acceptance (another issue's): nothing else says the
        relay still works. A probe (MAIL, RCPT of an address it took, RSET) was tried and
        dropped: a relay that caches the addresses it verified, or treats the probe's sender
        apart, says yes to it and still refuses everyone new. Past [retry] lifetime_seconds (from
        the message's first failed try), a refusal held once already and still not vouched for
        fails the message, and the reader stays on the list (_give_up_unbelieved): a relay
        broken for longer than that (a holiday) refuses everyone so too. (Held once: a refusal
        after days of 4xx replies still has a chance to be vouched for.)
        refusals_to_stop of them new in this run with no message accepted between stop the run."""
        age = outbox.retrying_for(delivery, self.clock())
        words = str(failure)
        held_before = outbox.NOT_BELIEVED in delivery.last_reply
        if held_before and age >= self.services.config.retry.lifetime_seconds:
            if not self._give_up_unbelieved(owner, delivery, words):
                return
        elif not self._wait(owner, delivery, words, age):
            return
        self._count_refusal(delivery, words, held_before)

    def _wait(self, owner: str, delivery: outbox.Claimed, words: str, age: float) -> bool:
        """The held refusal waits for its retry, queued and marked NOT_BELIEVED; False if its row
        was taken away meanwhile."""
        now = self.clock()
        at = now + dt.timedelta(seconds=outbox.retry_delay(self.services.config.retry, age))
        reply = _marked(delivery, outbox.held_reply(words))

        def write(session: Session) -> bool:
            return outbox.mark_retry(session, delivery.id, owner, reply, at, delivery.retrying_since or now)

        if not self._write_result(owner, delivery, write, _refused(words), reply=reply):
            return False
        self.stats.add("deferred")
        if outbox.REASKED in delivery.last_reply:  # asked again, and still not believable: say so
            self._relay_trouble(f"the relay refused more recipients' addresses than it accepted messages "
                                f"(last: {words}); nobody is marked bounced until it accepts more")
        return True

    def _give_up_unbelieved(self, owner: str, delivery: outbox.Claimed, words: str) -> bool:
        """Past the lifetime with nothing accepted to vouch for the refusal: the message fails,
        and nobody is bounced (the reader's next issue asks again). False if its row was taken away."""
        reply = _marked(delivery, outbox.given_up_reply(words))

        def write(session: Session) -> bool:
            return outbox.mark_failed(session, delivery.id, owner, reply)

        if not self._write_result(owner, delivery, write, _refused(words), reply=reply):
            return False
        self._done_failed()
        log.warning("delivery %s: gave up after [retry] lifetime_seconds: the relay refused %s (%s) and no "
                    "message it accepted vouched for that (none after it, or more addresses refused than "
                    "messages accepted in this run), so the reader stays on the list", delivery.id,
                    delivery.email, words)
        return True

    def _count_refusal(self, delivery: outbox.Claimed, words: str, held_before: bool) -> None:
        """Remember a refusal not believed until a message begun after it is accepted (_ask_again),
        and stop the run when refusals_to_stop new ones come with no message accepted between."""
        # One held in an earlier try as well (a retry's due rows are such refusals first) says
        # nothing new about the relay: counted, a healthy relay stopped the run before its first
        # accepted message, and was shown as "waiting for the relay".
        with self._relay_lock:
            self._unbelieved[delivery.id] = time.monotonic()
            if not held_before:
                self._new_refusals.add(delivery.id)
            held = len(self._new_refusals)
        if held >= self.refusals.limit:
            why = (f"the relay refused {held} recipients' addresses with no message accepted between (last: "
                   f"{words}): it may not relay for us, or take their domains for its own; none of them "
                   "was marked bounced, and those messages wait for their retry: check [smtp] host and the "
                   "relay's settings")
            self._relay_trouble(why)
            raise TransportError(why, fixes=[Fix("deliver_again")])

    def _refusals_believable(self) -> bool:
        """Whether the relay's address refusals may be believed in this run: it has accepted at
        least as many messages as it refused addresses (each counted once). A smarthost that
        accepts only its own mailbox refuses far more than it accepts; a list's bad addresses are
        a few in a hundred. (A run counts afresh: a refusal asked again in an earlier run is not
        believed on that.)"""
        with self._relay_lock:
            refused = len(self._refused_addresses)
        accepted = self.stats.sent
        return accepted > 0 and accepted >= refused

    def _ask_again(self, began: float) -> None:
        """A message whose transaction began at `began` was accepted: the refusals held before
        then are asked again now, and believed. One held while it was on the wire is not: its
        RCPT may have been accepted before the relay broke."""
        with self._relay_lock:
            held = [delivery_id for delivery_id, at in self._unbelieved.items() if at < began]
            for delivery_id in held:
                del self._unbelieved[delivery_id]
            self._new_refusals.difference_update(held)
        if held:
            def work() -> None:
                with self._writing() as session:
                    outbox.due_again(session, held, self.clock())

            self.database.call(work)

    def _refused_too_often(self, failure: PermanentFailure) -> None:
        """Stop: the content or the relay is the problem, not the subscribers; their rows go back."""
        count, whole = self.refusals.count, sorted(self.refusals.tripped_issues)
        ids = self.refusals.take()
        refused = (f"every message of issue {', '.join(map(str, whole))} ({len(ids)}), none accepted between,"
                   if whole else f"{count} message{'s' if count != 1 else ''} in a row")
        why = (f"the relay refused {refused} for reasons that are not the "
                  f"recipients' (last: {failure}): the issue's content or the relay's policy is the problem")

        def work() -> int:
            with self._writing() as session:
                # shown by `issues status` (as a relay outage is) until a message is accepted again:
                # `mailmag run` retries every retry_relay_seconds, and only its log said why nothing went
                self.hooks.relay_unreachable(session, self.clock(), why)
                issues = outbox.hand_back_failed(session, ids, self.clock())
                # an issue whose last message this was may have been completed meanwhile: its
                # rows, queued again, were taken by no worker under a "sent" issue (helper-104)
                self.hooks.requeued(session, set(issues))
                return len(issues)

        handed_back = self.database.call(work)
        self.stats.add("failed", -handed_back)
        raise TransportError(f"{why}; those messages are queued again and nobody was marked bounced: fix it",
                             fixes=[Fix("deliver_again")])

    def _release(self, owner: str, deliveries: list[outbox.Claimed], delay: float | None = None) -> None:
        if not deliveries:
            return
        at = self.clock() + dt.timedelta(seconds=delay) if delay else None

        def work() -> None:
            with self._writing() as session:
                for delivery in deliveries:
                    outbox.release(session, delivery.id, owner, at)

        self.database.call(work)

    # -- the relay's health ----------------------------------------------------------------------

    def _shut_out_seconds(self) -> float:
        """How long only 421s before any session, nothing accepted, mean the relay is down."""
        config = self.services.config
        tries = config.dispatch.refusals_to_stop + self.throttle.most
        return max(1.0, tries * config.smtp.throttle_seconds)

    def _throttled(self, index: int) -> None:
        """The relay said 421: one connection fewer for a while, and this one waits (its batch was
        handed back for the others)."""
        self.throttle.refused(self.first_connection + index)
        self.stop.wait(self.services.config.smtp.throttle_seconds)

    def _relay_unreachable(self, failure: TemporaryFailure) -> None:
        self.stats.unreachable = str(failure)
        with self._relay_lock:
            if self._relay_down:
                return
            self._relay_down = True
        if not self._once:  # with --once the run ends, and says so in one line
            log.error("sending stopped: %s; trying again every %s seconds", failure,
                      self.services.config.smtp.retry_relay_seconds)
        self._relay_trouble(str(failure))

    def _relay_trouble(self, why: str) -> None:
        """Issues being sent show `why` (`issues status`, the console) from now until the relay
        accepts a message again: a service retrying on its own says so only in its log."""

        def work() -> None:
            with self._writing() as session:
                self.hooks.relay_unreachable(session, self.clock(), why)

        self.database.call(work)

    def relay_was_down(self) -> None:
        """A dispatcher before this one stopped on the relay (`mailmag run` starts another): the
        first message accepted logs "sending resumed", as after an outage within one run."""
        with self._relay_lock:
            self._relay_down = True

    def _relay_reached(self) -> None:
        with self._relay_lock:
            was_down, self._relay_down, self._relay_confirmed = self._relay_down, False, True
        if was_down:
            log.warning("sending resumed: the relay answers again")

        def work() -> None:
            with self._writing() as session:
                self.hooks.relay_reached(session)

        self.database.call(work)

    # -- leases --------------------------------------------------------------------------------

    def _keep_leases(self, done: threading.Event) -> None:
        """Renew every held claim's lease a few times per lease, so a slow message never loses it,
        and at once after a clock jump, before a worker started since takes them for dead."""
        lease = self.services.config.dispatch.lease_seconds
        renewed, jumps = time.monotonic(), self.expiry.jumps
        while not done.wait(min(JUMP_LOOK_SECONDS, lease / 4)):
            self.expiry.see(self.clock())
            if self.expiry.jumps == jumps and time.monotonic() - renewed < lease / 4:
                continue
            renewed, jumps = time.monotonic(), self.expiry.jumps
            owners = self.leases.owners()
            if not owners:
                continue
            started = time.monotonic()
            try:
                with self._writing() as session:
                    outbox.renew_leases(session, owners, self.clock(), lease)
            except DATABASE_AWAY as exc:  # the sending threads wait for the database; so do we
                log.debug("leases not renewed: %s", reason(exc))
                continue
            self.leases.renewed(owners, started)


@dataclasses.dataclass(frozen=True)
class TestSent:
    """What became of one test message: the relay's reply, or why it was not sent."""

    address: str
    sent: bool
    reply: str

    def __str__(self) -> str:
        return f"{self.address}: {self.reply}" if self.sent else f"{self.address}: not sent: {self.reply}"


def send_test(services: Services, transport: Transport, issue: Issue, addresses: list[str],
              lang: str | None = None) -> list[TestSent]:
    """`issues test`: the real message of `issue`, sent now to `addresses`, outside the outbox.

    The links in it are a recipient's links for subscriber 0, which matches nobody: a test
    reader clicking "unsubscribe" changes nothing.
    """
    config = services.config
    lang = lang or config.mailmag.language
    rendering = next((r for r in issue.renderings if r.lang == lang), None)
    if rendering is None:
        raise StateError(f"issue {issue.id} has no '{lang}' edition",
                         ja=f"号（ID {issue.id}）には{outbox.edition_ja(lang)}がありません")
    number = issue.number if issue.number is not None else issue.rendered_number  # a draft's: as shown
    skeleton = messages.prepare(rendering, number or 0, config, dkim=load_dkim(config))
    secret = services.verify_keys[0]  # (checked with the previous keys, as the dispatcher's)
    connection = transport.connect()
    results = []
    try:
        for address in addresses:
            recipient = messages.Recipient(0, links.TEST_SUBSCRIBER_ID, address, "",
                                           make_message_id(config))
            envelope_from, data = messages.personalize(skeleton, recipient, secret)
            try:
                results.append(TestSent(address, True, connection.send(envelope_from, address, data).reply))
            except (TemporaryFailure, PermanentFailure) as failure:
                results.append(TestSent(address, False, str(failure)))
    finally:
        connection.close()
    return results
