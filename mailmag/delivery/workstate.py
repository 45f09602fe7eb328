"""What a worker keeps track of while it sends: its leases, the relay's feedback, the database's health.

Each is shared by the sending threads of one `Dispatcher` and guarded by its own lock; the
common path (a message accepted, the database answering) takes no lock at all.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from mailmag import clock
from mailmag.delivery import shared
from mailmag.delivery.transports import POLICY
from mailmag.errors import DatabaseError

log = logging.getLogger("mailmag.delivery.dispatch")  # one logger for everything the worker says
# Errors that mean "the database is away or locked", not "this statement is wrong".
DATABASE_AWAY = (OperationalError, InterfaceError, sqlite3.OperationalError)
T = TypeVar("T")


class Leases:
    """The claims this worker holds, and when each lease was last set (monotonic seconds)."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._set_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def hold(self, owner: str, at: float) -> None:
        with self._lock:
            self._set_at[owner] = at

    def drop(self, owner: str) -> None:
        with self._lock:
            self._set_at.pop(owner, None)

    def owners(self) -> list[str]:
        with self._lock:
            return list(self._set_at)

    def renewed(self, owners: list[str], at: float) -> None:
        with self._lock:
            for owner in owners:
                if owner in self._set_at:
                    self._set_at[owner] = at

    def running_out(self, owner: str) -> bool:
        """True when the lease may end before the next message is done: stop using it."""
        return time.monotonic() > self._set_at.get(owner, 0.0) + self.lease_seconds * 0.8


class ExpiryHold:
    """Expiring dead workers' leases waits one lease after the wall clock jumps forward.

    Every lease was stamped on the old clock, so a jump longer than [dispatch] lease_seconds made
    live workers' leases look expired: their rows went back to the queue and were sent again
    ("may have arrived more than once", helper-66). Each process sees the jump on its own clock, and every
    live holder renews its leases on the new clock within a quarter lease (the keeper): after one
    lease of elapsed time, what still looks expired is dead.

    A live lease always has three quarters of a lease left (renewed every quarter), so less than
    half a lease of jumps cannot make one look expired: that holds nothing. A clock stepped every
    few minutes by a few seconds (a hypervisor's time sync) would otherwise hold expiry for good,
    and a killed worker's rows would never be taken over. Jumps add up: two of a third of a lease
    each, a moment apart, are one of two thirds for every lease stamped before them (helper-69)."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._sample: tuple[dt.datetime, float] | None = None  # the clock's last reading, and elapsed()'s
        # (elapsed(), moved) of the last lease's steps; bounded, for a clock that jitters at every read
        self._steps: collections.deque[tuple[float, float]] = collections.deque(maxlen=_STEPS_KEPT)
        self._until = 0.0  # elapsed() before which no lease is expired
        self._set_back_at = float("-inf")  # elapsed() of the last reading that saw a step back
        self._born = clock.elapsed()
        self.jumps = 0  # jumps seen: the lease keeper renews at once after each
        self._lock = threading.Lock()

    def see(self, now: dt.datetime) -> None:
        """The dispatcher's clock read `now`; jumps forward since any lease still live was stamped
        (one lease of elapsed time) that add up to half a lease start a hold."""
        with self._lock:
            since, self._sample = self._sample, (now, clock.elapsed())
            if since is None:
                return
            moved = (now - since[0]).total_seconds() - (self._sample[1] - since[1])
            if moved <= -clock.STEP_SECONDS:
                self._set_back_at = self._sample[1]
            drift = self._drift(moved)
            if drift < max(clock.STEP_SECONDS, self.lease_seconds / 2):
                return
            self._steps.clear()  # the leases stamped before are renewed now: counted once
            self.jumps += 1
            if self._until <= self._sample[1]:
                log.warning("the system clock jumped forward by %s: no lease is expired for the next "
                            "%s, while live workers renew theirs on the new clock",
                            clock.duration(drift), clock.duration(self.lease_seconds))
            self._until = self._sample[1] + self.lease_seconds

    def _drift(self, moved: float) -> float:
        """The most the clock moved ahead since any moment of the last lease, `moved` included:
        how much older than it is a lease stamped then now looks."""
        at = self._sample[1] if self._sample else clock.elapsed()
        if abs(moved) >= _NOTED_STEP_SECONDS:  # a reading's own jitter is not a step
            self._steps.append((at, moved))
        while self._steps and self._steps[0][0] < at - self.lease_seconds:
            self._steps.popleft()
        most = total = 0.0
        for _at, step in reversed(self._steps):
            total += step
            most = max(most, total)
        return max(most, moved)

    def since_set_back(self) -> float:
        """Seconds since a reading last saw the clock set back (inf: never)."""
        return clock.elapsed() - self._set_back_at

    def may_expire(self) -> bool:
        return clock.elapsed() >= self._until

    def young_for(self) -> float:
        """Seconds until this worker is YOUNG_SECONDS old. A worker started just after a jump has
        no reading from before it, so it cannot tell a live lease stamped on the old clock from a
        dead one (helper-67: a `worker --once` started then took a live worker's rows, and two
        messages went twice). The live holders' keepers look at the clock every JUMP_LOOK_SECONDS
        and renew at once after a jump: a young worker's first expiry waits for that."""
        return max(0.0, self._born + YOUNG_SECONDS - clock.elapsed())


# A step of the wall clock against elapsed time smaller than this is a reading's jitter or NTP's
# slewing, and is not added up.
_NOTED_STEP_SECONDS = 0.25
_STEPS_KEPT = 256
# How often the lease keeper looks for a clock jump, and how long a new worker waits before it
# first expires leases (if any look expired): a few times that, for the renewal's write too.
JUMP_LOOK_SECONDS = 0.5
YOUNG_SECONDS = 3.0


# The throttle's numbers: how many connections may send, messages accepted since the last
# change, the monotonic time of that change (a 421 or one connection more), and of the first
# 421 before any session since a message was last accepted (shut_out; 0: none).
_LIMIT, _CREDIT, _CHANGED, _SHUT = 0, 1, 2, 3


class Throttle:
    """Postfix's destination concurrency feedback: each 421 takes one connection away (never the
    last): the one that met it, which waits while the others keep their sessions. After as many
    accepted messages as connections are open, one more may send again; one more may too after
    `pause` seconds without a 421, so a connection left out never waits for siblings that have
    nothing more to send.

    Connections are numbered 0 … most - 1. Made with a multiprocessing context, the processes
    forked after share it (`worker --processes`): each numbers its connections from its own
    first one, and the relay's "fewer connections" holds for the worker, not for each process
    (which would keep at least one each)."""

    def __init__(self, most: int, pause: float, *, context: Any = None,
                 lock_seconds: float = shared.LOCK_SECONDS) -> None:
        self.most = most
        self.pause = pause
        self.lock_seconds = lock_seconds
        self._state = shared.numbers(context, "d", 4)  # at _LIMIT, _CREDIT, _CHANGED, _SHUT
        self._state[_LIMIT] = most
        self._waiting = shared.numbers(context, "q", most)  # 1: this connection met a 421 and waits
        self._lock = shared.make_lock(context)
        self._lowest_warned = most  # this process's own: each says once how low the relay took it

    @property
    def limit(self) -> int:
        """How many connections may send now."""
        return int(self._state[_LIMIT])

    def admits(self, index: int) -> bool:
        """Connection `index` may send: it is not waiting after a 421, or there is room for it again."""
        if not self._waiting[index]:  # the common case, without the lock
            return True
        with self._locked():
            if self._sending() >= self.limit and time.monotonic() - self._state[_CHANGED] >= self.pause:
                self._grow("no 421 for a while")
            if self._sending() < self.limit:
                self._waiting[index] = 0
        return not self._waiting[index]

    def refused(self, index: int) -> None:
        """Connection `index` met a 421: it waits, and one connection fewer may send."""
        with self._locked():
            self._waiting[index] = 1
            self._state[_CREDIT], self._state[_CHANGED] = 0, time.monotonic()
            if self.limit > 1:
                self._state[_LIMIT] = self.limit - 1
                # a warning the first time the limit falls this low in the process, then a note in
                # the log: a relay that says 421 to every fifth message printed 69 warnings (helper-81)
                lower = self.limit < self._lowest_warned
                self._lowest_warned = min(self._lowest_warned, self.limit)
                log.log(logging.WARNING if lower else logging.INFO,
                        "the relay said 421: sending on %d connection(s) for now", self.limit)

    def shut_out(self, seconds: float) -> bool:
        """A 421 before any session opened: True once such 421s have come for `seconds` with no
        message accepted anywhere in the worker. One at a time means "fewer connections"; for
        that long, that the relay takes no mail now (an outage)."""
        with self._locked():
            now = time.monotonic()  # one clock for every process of the machine
            if not self._state[_SHUT]:
                self._state[_SHUT] = now
            return now - self._state[_SHUT] >= seconds

    def accepted(self) -> None:
        if self._state[_SHUT]:
            with self._locked():
                self._state[_SHUT] = 0
        if self.limit >= self.most:  # the common case, without the lock
            return
        with self._locked():
            self._state[_CREDIT] += 1
            if self._state[_CREDIT] >= self.limit:
                self._grow("the relay accepts again")

    def _sending(self) -> int:
        return self.most - sum(self._waiting)

    def _grow(self, why: str) -> None:
        """One connection more (the lock is held), if every allowed one is sending: the limit
        grows one probe at a time, not back to `most` while the connections left out wait (they
        came back all at once, a burst of 421s every throttle_seconds)."""
        if self.limit < self.most and self.limit <= self._sending():
            self._state[_LIMIT] += 1
            self._state[_CREDIT], self._state[_CHANGED] = 0, time.monotonic()
            log.info("%s: sending on %d connection(s)", why, self.limit)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return shared.held(self._lock, self.lock_seconds, "the connection throttle")


class Refusals:
    """Refusals in a row that are not the recipients' fault; too many mean the content or the
    relay is the problem. Policy refusals (5.7.x) of a recipient count once per recipient domain
    (a domain's own policy about us); one after the final dot counts per message: the relay had
    taken the recipient and refused the message (helper-101: a content filter's 554 5.7.1 failed a
    whole issue for good, and quietly, where the list held fewer than five domains). Every message
    of an issue refused so, with none accepted between, stops it too, however few they are
    (helper-102: an issue to four readers failed whole and quietly)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.tripped = False
        self.count = 0  # refused in this streak, handed back or not (what the stop's line says)
        self._ids: list[int] = []
        self._messages = 0
        self._domains: set[str] = set()
        # Each issue's own streak: only a message of that issue accepted ends it (helper-104: another
        # issue's accepted messages, between them, hid an issue refused whole)
        self._by_issue: dict[int, list[int]] = {}
        self.tripped_issues: set[int] = set()  # refused whole
        self._lock = threading.Lock()

    def add(self, delivery_id: int, email: str, kind: str, *, after_dot: bool = False,
            issue: tuple[int, int] = (0, 0)) -> bool:
        """Count one (`after_dot`: refused after the final dot; `issue`: its id and how many
        messages it has); True once the run must stop (and for every refusal after that)."""
        with self._lock:
            self.count += 1
            self._ids.append(delivery_id)
            if kind == POLICY and not after_dot:
                self._domains.add(email.rpartition("@")[2].lower())
            else:
                self._messages += 1
            issue_id, size = issue
            refused = self._by_issue.setdefault(issue_id, [])
            refused.append(delivery_id)
            if 0 < size <= len(refused):
                self.tripped_issues.add(issue_id)
            if self._messages + len(self._domains) >= self.limit or self.tripped_issues:
                self.tripped = True
            return self.tripped

    def accepted(self, issue_id: int) -> None:
        """A message of `issue_id` accepted: the streaks end, that issue's own too. (Every message
        sent comes here: another issue's streak left standing takes no lock.)"""
        if (self._ids or issue_id in self._by_issue) and not self.tripped:
            with self._lock:
                self._ids, self._messages, self._domains, self.count = [], 0, set(), 0
                self._by_issue.pop(issue_id, None)

    def take(self) -> list[int]:
        """The rows refused in this streak (and in the streak of each issue refused whole), to hand
        back; each is taken once."""
        with self._lock:
            ids = set(self._ids).union(*(self._by_issue.pop(i, []) for i in self.tripped_issues))
            self._ids = []
            return sorted(ids)


class DropsInRow:
    """Messages whose connection was lost after the final dot, in a row, with no message accepted
    in between: the relay may be keeping every one, so going on would send the whole list again
    and again. Counted by message, not by attempt: one or two recipients whose every attempt is
    dropped (retried until ambiguous_max_attempts) are no sign that the relay keeps everything."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._messages: set[int] = set()
        self._lock = threading.Lock()

    def add(self, delivery_id: int) -> bool:
        """Count this message's drop; True once the run must stop."""
        with self._lock:
            self._messages.add(delivery_id)
            return len(self._messages) >= self.limit

    def accepted(self) -> None:
        if self._messages:
            with self._lock:
                self._messages.clear()


class DatabaseGuard:
    """Runs database work for the sending threads; while the database is away or locked, waits
    with backoff and tries again. One log line when it goes away, one when it is back."""

    def __init__(self, first: float, most: float, stop: threading.Event, *,
                 give_up_after: float | None = None,
                 waiting: str = "sending paused until results can be recorded") -> None:
        """`give_up_after` seconds of the database away, a DatabaseError (None: wait until `stop`);
        `waiting` says in the log what waits for it."""
        self.first, self.most, self.stop = max(first, 0.01), max(most, first), stop
        self.give_up_after = give_up_after
        self.waiting = waiting
        self.away = False
        self._lock = threading.Lock()

    def call(self, work: Callable[[], T]) -> T:
        delay, started = self.first, time.monotonic()
        while True:
            try:
                result = work()
            except DATABASE_AWAY as exc:
                self._went_away(exc)
                waited = time.monotonic() - started
                if self.give_up_after is not None:
                    if waited >= self.give_up_after:
                        raise DatabaseError(f"cannot open the database ({reason(exc)}); waited "
                                            f"{waited:.1f} s for it") from exc
                    delay = min(delay, self.give_up_after - waited)  # the last try at the limit, not past it
                if self.stop.wait(delay):
                    raise DatabaseError(
                        f"stopped while the database was unavailable ({reason(exc)}); a message "
                        "whose result could not be recorded is sent again when its lease expires"
                    ) from exc
                delay = min(delay * 2, self.most)
                continue
            if self.away:
                self._came_back()
            return result

    def _went_away(self, exc: BaseException) -> None:
        with self._lock:
            if not self.away:
                self.away = True
                log.error("database unavailable (%s): %s", reason(exc), self.waiting)

    def _came_back(self) -> None:
        with self._lock:
            if self.away:
                self.away = False
                log.warning("database available again: results recorded, sending resumed")


def reason(exc: BaseException) -> str:
    """The driver's message of a database error, on one line."""
    original = getattr(exc, "orig", None) or exc
    return " ".join(str(original).split())[:300]
