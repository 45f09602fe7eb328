"""`mailmag run`: the scheduler (on one node at a time) and the delivery workers, until stopped.

The scheduler is APScheduler 3 with its jobs in our database (table `apscheduler_jobs`, made
by APScheduler): one cron job per automatic issue, so its next moment survives restarts,
plus, in memory, a poll every `[schedule] poll_seconds` that fires due timed sends and
catches up automatic issues, and an hourly purge of unconfirmed subscribers (everything
periodic runs here). The main loop keeps the stored jobs in step with `schedule
add/remove`. The stored jobs name module-level functions and carry only a schedule id;
they find this process's services through `_node`, set while `run` runs.

APScheduler 3 job stores must not be shared by two live schedulers, so the scheduler runs
only on the node holding the scheduler lock: a PostgreSQL advisory lock (released by the
server when its holder dies, so a standby node takes over), or on SQLite a lock file next
to the database (one machine). Every node delivers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Protocol, TextIO

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from mailmag import db
from mailmag.clock import LOOK_SECONDS as CLOCK_LOOK_SECONDS
from mailmag.clock import STEP_SECONDS as CLOCK_STEP_SECONDS
from mailmag.clock import duration, elapsed
from mailmag.config import Config
from mailmag.delivery import outbox
from mailmag.delivery.dispatch import Dispatcher, worker_host
from mailmag.delivery.transports import make_transport
from mailmag.delivery.workstate import DATABASE_AWAY
from mailmag.errors import ConfigError
from mailmag.models import AutoSchedule, utcnow
from mailmag.scheduling import jobs, processes
from mailmag.scheduling.processes import Sender
from mailmag.scheduling.sending import deliver_until_stopped, make_dispatcher
from mailmag.scheduling.when import cron_trigger
from mailmag.services import Services

log = logging.getLogger(__name__)

JOB_TABLE = "apscheduler_jobs"
_node: Node | None = None


def poll_job() -> None:
    """Every poll: fire due timed sends, catch up automatic issues."""
    node = _leading()
    if node is not None:
        now, jump = utcnow(), node.clock.jump()
        jobs.fire_due_sends(node.services, now, jump=jump)
        jobs.fire_due_autos(node.services, now, jump=jump)


def purge_job() -> None:
    """Every PURGE_SECONDS: subscribers who never confirmed go (an error is logged by APScheduler,
    and the next run comes all the same)."""
    node = _leading()
    if node is not None:
        jobs.purge_pending(node.services)


def auto_job(schedule_id: int) -> None:
    """The stored cron job of one automatic issue; stored as 'mailmag.scheduling.node:auto_job'."""
    node = _leading()
    if node is not None:
        jobs.fire_due_autos(node.services, utcnow(), schedule_id, jump=node.clock.jump())


def _current() -> Node:
    if _node is None:
        raise RuntimeError("a scheduler job ran outside `mailmag run`")
    return _node


def _leading() -> Node | None:
    """This node, if it still holds the scheduler lock when a job starts.

    A node whose lock went with its database session learns it at its main loop's next look, up
    to poll_seconds later, and a standby may have taken the scheduler over meanwhile: two
    schedulers on one job store. Firing is idempotent (jobs._once), but a node that is no longer
    the scheduler fires nothing at all."""
    node = _current()
    if node.lock.held():
        return node
    log.error("scheduler lock lost: this node fires nothing until it holds the lock again "
              "(another node running the scheduler may have it)")
    return None


class SchedulerLock(Protocol):
    def acquire(self) -> bool: ...

    def held(self) -> bool: ...

    def release(self) -> None: ...


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection kept for as long as it is held.

    The key includes the schema, so two magazines in two schemas of one database each get
    their own scheduler.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: Connection | None = None
        # The main loop and the scheduler's job thread both ask held(): one connection, one at a time.
        self._guard = threading.RLock()

    def acquire(self) -> bool:
        with self._guard:
            connection = self.engine.connect()
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(hashtext('mailmag-scheduler:' || current_schema()))")
            ).scalar()
            connection.commit()  # the lock belongs to the session, not to this transaction
            if got:
                self.connection = connection
            else:
                connection.close()
            return bool(got)

    def held(self) -> bool:
        """False when the connection (and with it the lock) was lost."""
        with self._guard:
            if self.connection is None:
                return False
            try:
                self.connection.execute(text("SELECT 1"))
                self.connection.commit()
                return True
            except DBAPIError:
                self.release()
                return False

    def release(self) -> None:
        with self._guard:
            if self.connection is not None:
                # Unlocked at once where the session still answers: a closed session's lock goes
                # only when its server process has ended, after the close returned (a standby,
                # or this node taking the lock again, could find it still held).
                with contextlib.suppress(SQLAlchemyError):  # a lost session raises, whichever way
                    self.connection.execute(text("SELECT pg_advisory_unlock_all()"))
                    self.connection.commit()
                # Closing the server session is what surely releases the lock.
                with contextlib.suppress(DBAPIError):
                    self.connection.invalidate()
                    self.connection.close()
                self.connection = None


class FileLock:
    """SQLite: one scheduler per database file, among the processes of one machine."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: TextIO | None = None

    def acquire(self) -> bool:
        file = self.path.open("a")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        # The holder removes the file when it stops: a lock taken on a file already removed
        # (opened just before) is no lock at all, so it counts only if the path is still this file.
        try:
            same = os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            file.close()
            return False
        self.file = file
        return True

    def held(self) -> bool:
        return self.file is not None

    def release(self) -> None:
        """Remove the file while still holding the lock, then drop the lock by closing it."""
        if self.file is not None:
            self.path.unlink(missing_ok=True)
            self.file.close()
            self.file = None


def scheduler_lock(engine: Engine) -> SchedulerLock:
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine)
    database = engine.url.database or ""
    if database in ("", ":memory:"):
        return FileLock(Path(".mailmag-scheduler.lock"))
    return FileLock(Path(database + ".scheduler.lock"))


class ClockWatch:
    """The wall clock against elapsed time, looked at by `run`'s main loop at every poll.

    A step back (NTP correcting a clock that was ahead, a hardware clock kept in JST) left
    APScheduler asleep, by elapsed time, until a poll planned on the old clock: as long as the
    step, and past a timed send's grace (helper-61). A jump forward makes what came due in
    between late: it is still recorded missed past grace, but not as "run was not running"."""

    def __init__(self) -> None:
        self._sample = (utcnow(), elapsed())  # one tuple: read whole by the scheduler's thread
        self._last_jump: jobs.Jump | None = None

    def look(self) -> float:
        """Seconds the wall clock moved apart from elapsed time since the last look (< 0: set back)."""
        moved, now = self._moved()
        # The jump is recorded before the new sample is stored: the scheduler's thread asking
        # jump() in between would otherwise see neither.
        if moved >= CLOCK_STEP_SECONDS:
            self._last_jump = (now - dt.timedelta(seconds=moved), now)
        elif moved <= -CLOCK_STEP_SECONDS:
            self._last_jump = None  # set back over it: a later miss is not the jump's doing
        self._sample = (now, elapsed())
        return moved

    def jump(self) -> jobs.Jump | None:
        """The latest jump forward (from, to), whether or not the main loop has looked since."""
        moved, now = self._moved()
        if moved >= CLOCK_STEP_SECONDS:
            return now - dt.timedelta(seconds=moved), now
        return self._last_jump

    def _moved(self) -> tuple[float, dt.datetime]:
        (wall, since), now = self._sample, utcnow()
        return (now - wall).total_seconds() - (elapsed() - since), now



def check_settings(config: Config) -> None:
    """[schedule] mistakes fail at start, not at 9:00 on the 1st."""
    settings = config.schedule  # each value's own range, and the send window, are checked by load_config
    if settings.grace_seconds < 2 * settings.poll_seconds:
        # A send found by a poll up to poll_seconds late must still be within grace.
        raise ConfigError("[schedule] grace_seconds must be at least twice poll_seconds")


class Node:
    """One `mailmag run` process: delivers, and runs the scheduler while it holds the lock."""

    def __init__(self, services: Services, *, scheduler: bool = True, worker: bool = True,
                 concurrency: int | None = None, processes: int = 1) -> None:
        self.services = services
        self.scheduler_enabled = scheduler
        self.worker_enabled = worker
        self.concurrency = concurrency
        self.processes = processes
        self.stop = threading.Event()
        self.lock = scheduler_lock(services.engine)
        self.clock = ClockWatch()
        self.error: BaseException | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._dispatcher: Dispatcher | None = None
        self._standby_logged = False

    def run(self) -> None:
        """Until `stop` is set (SIGINT/SIGTERM); then finish jobs and messages in flight."""
        global _node
        check_settings(self.services.config)
        if self.worker_enabled:
            # No key, no links: fail before starting. A short previous key too, as serve, doctor and
            # `bounces process` refuse it (helper-87: run started, and the error came days later).
            self.services.verify_keys  # noqa: B018
        if self.worker_enabled and self.processes > 1:
            senders = self._start_processes()
            worker = threading.Thread(target=self._watch, args=(senders,), name="worker")
        else:
            worker = threading.Thread(target=self._work, name="worker")
        _node = self
        if self.worker_enabled:
            worker.start()
        try:
            tend_at = 0.0  # elapsed() of the next poll
            while not self.stop.is_set():
                if self.scheduler_enabled and elapsed() >= tend_at:
                    tend_at = elapsed() + self.services.config.schedule.poll_seconds
                    try:
                        self._tend_scheduler()
                    except DATABASE_AWAY as exc:  # the database is away or locked: deliveries wait, so do we
                        log.error("database error, trying again at the next poll: %s",
                                  getattr(exc, "orig", exc))
                self._mind_the_clock()  # after the scheduler is taken: a new node's look moves the queue
                # The clock is looked at more often than the poll: after a step back, sending waited
                # for the next poll to move the queue's next tries back (helper-69 F2).
                self.stop.wait(min(CLOCK_LOOK_SECONDS, self.services.config.schedule.poll_seconds))
        finally:
            self.stop.set()
            if self._dispatcher is not None:  # both wind down at once: messages, then jobs in flight
                self._dispatcher.stop.set()
            self._stop_scheduler()
            if worker.is_alive():
                worker.join()
            _node = None
        if self.error is not None:
            raise self.error

    def _mind_the_clock(self) -> None:
        """Say when the system clock moved. After a step back, every node brings its machine's
        leases back, and the node that runs the scheduler has it look again now and brings the
        queue's next tries back: one node, so that two `run` processes do not move the rows twice."""
        moved = self.clock.look()
        if moved >= CLOCK_STEP_SECONDS:
            if not self.scheduler_enabled:  # the worker's dispatcher says what it means for leases
                return
            log.warning("the system clock jumped forward by %s: timed sends and automatic issues due in "
                        "between are recorded missed past [schedule] grace_seconds", duration(moved))
            return
        if moved > -CLOCK_STEP_SECONDS:
            return
        step, scheduler = dt.timedelta(seconds=-moved), self._scheduler
        if scheduler is None:
            log.warning("the system clock was set back by %s: this machine's leases move back by as much "
                        "(the scheduler's node moves the queue)", duration(-moved))
        else:
            log.warning("the system clock was set back by %s: the scheduler looks again now, queued "
                        "messages' next tries and this machine's leases move back by as much, and "
                        "automatic issues' moments missed ahead of now fire when they come", duration(-moved))
            for job in scheduler.get_jobs(jobstore="local"):  # waiting for a moment of the old clock
                job.modify(next_run_time=utcnow())  # wakes the scheduler
        try:
            with self.services.session() as session:
                outbox.leases_set_back(session, step, utcnow(), worker_host(),
                                       self.services.config.dispatch.lease_seconds)
                if scheduler is not None:
                    outbox.queue_set_back(session, step, utcnow())
                    jobs.forget_misses_ahead(session, utcnow())
        except DATABASE_AWAY as exc:
            log.error("what was stamped on the clock before the step could not be brought back: %s",
                      getattr(exc, "orig", exc))

    def _tend_scheduler(self) -> None:
        if self._scheduler is None:
            if not self.lock.acquire():
                if not self._standby_logged:
                    log.info("scheduler standby: another node runs it; taking over if it stops")
                    self._standby_logged = True
                return
            self._start_scheduler()
            log.info("scheduler started: this node fires timed sends and automatic issues")
            self._standby_logged = False
        elif not self.lock.held():
            log.error("scheduler lock lost (database connection dropped): scheduler stopped, retrying")
            self._stop_scheduler()
            return
        # Here, not in a job: APScheduler's shutdown() waits for running jobs while holding
        # the lock that get_jobs()/add_job() need, so a job touching the scheduler deadlocks it.
        self.sync_jobs()

    def _start_scheduler(self) -> None:
        config = self.services.config
        store = SQLAlchemyJobStore(engine=db.engine_for(config.database), tablename=JOB_TABLE)
        scheduler = BackgroundScheduler(
            jobstores={"default": store, "local": MemoryJobStore()},
            # One thread: firings run one after another, in order.
            executors={"default": ThreadPoolExecutor(1)},
            # Always run a late job: jobs.py decides between firing and reporting it missed.
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
            timezone=config.zone,
        )
        scheduler.start()
        self._scheduler = scheduler
        scheduler.add_job(poll_job, "interval", seconds=config.schedule.poll_seconds, id="poll",
                          jobstore="local", next_run_time=utcnow())
        scheduler.add_job(purge_job, "interval", seconds=jobs.PURGE_SECONDS, id="purge-pending",
                          jobstore="local", next_run_time=utcnow())

    def _stop_scheduler(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
            log.info("scheduler stopped")
        self.lock.release()

    def sync_jobs(self) -> None:
        """One stored cron job per automatic issue; a changed or removed schedule's job goes."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        zone = self.services.config.zone
        with self.services.session() as session:
            wanted = {jobs.auto_job_id(id_): (id_, cron) for id_, cron in
                      session.execute(select(AutoSchedule.id, AutoSchedule.cron))}
        stored = {job.id: job for job in scheduler.get_jobs(jobstore="default")}
        for job_id, job in list(stored.items()):
            if job_id not in wanted or str(job.trigger) != str(cron_trigger(wanted[job_id][1], zone)):
                scheduler.remove_job(job_id, jobstore="default")
                stored.pop(job_id)
        for job_id, (schedule_id, cron) in wanted.items():
            if job_id not in stored:
                scheduler.add_job("mailmag.scheduling.node:auto_job", cron_trigger(cron, zone),
                                  args=[schedule_id], id=job_id, name=job_id, jobstore="default")

    def _work(self) -> None:
        """Deliver until stopped, in this process."""
        try:
            deliver_until_stopped(self.services, self.stop, self._new_dispatcher)
        except BaseException as exc:
            self.error = exc
            self.stop.set()

    def _new_dispatcher(self) -> Dispatcher:
        dispatcher = make_dispatcher(self.services, make_transport(self.services.config),
                                     concurrency=self.concurrency)
        self._dispatcher = dispatcher  # for run() to stop it
        return dispatcher

    def _start_processes(self) -> list[Sender]:
        """The sending processes, forked before this process starts a thread of its own (a fork
        copies only the thread that forks: a lock another thread held would stay held)."""
        config = self.services.config
        connections = self.concurrency or config.smtp.max_connections
        processes.check(config, self.processes, connections)
        self.services.close()  # each process opens its own database connections: none is shared
        return processes.start(config, self.processes, connections, service=True)

    def _watch(self, senders: list[Sender]) -> None:
        """Until the processes end: stopped with the node, or one failed or died (which stops the
        node, so that systemd restarts it, rather than deliver with fewer processes unseen)."""
        try:
            processes.wait(senders, once=False, stop=self.stop)
        except BaseException as exc:
            self.error = exc
        finally:
            self.stop.set()
