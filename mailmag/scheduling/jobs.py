"""Timed sends and automatic issues: the database rows are the truth, firing is idempotent.

A timed send is an Issue with status "scheduled" and its `scheduled_at`; an automatic issue
is an AutoSchedule with a crontab line. Whatever fires them (the scheduler's exact-time job,
the periodic poll, a second node) goes through `_once`: the JobRun row for (job, moment) is
inserted in the same transaction as the work, so its UNIQUE pair lets one caller win and
the others find it done. A moment that passed longer than `[schedule] grace_seconds` ago
is recorded as "missed" instead of fired: never dropped silently, never fired twice.
A firing that loses a race to another writer (the same issue number taken at the same
moment by `issues new`, a serialization failure) is the system's problem, not the
operator's: it tries again at once, and if it keeps losing, the moment stays unrecorded
so the next poll fires it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import delete, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailmag import topics
from mailmag.audience import consent
from mailmag.config import Config
from mailmag.content import issues, transitions
from mailmag.db import rowcount
from mailmag.errors import Fix, InvalidInput, MailmagError, NotFound, StateError
from mailmag.models import STATUS_JA, AutoSchedule, Issue, IssueItem, Item, JobRun, timed_send_job_id, utcnow
from mailmag.scheduling.when import Crontab, cron_trigger, fire_times, next_fire_time, shown
from mailmag.services import Services

log = logging.getLogger(__name__)
# How often `mailmag run`'s scheduler purges unconfirmed subscribers (purge_pending).
PURGE_SECONDS = 3600

# Moments handled per schedule and call; a longer backlog continues at the next poll.
_BACKLOG_LIMIT = 500
# Attempts of one firing within one poll when a concurrent writer wins a race.
ATTEMPTS = 3
_UNIQUE_VIOLATION, _RETRYABLE_SQLSTATES = "23505", ("40001", "40P01")  # + serialization, deadlock

Action = Callable[[Session], tuple[str, str] | None]
# The system clock jumped forward while `run` ran: from, to (node.ClockWatch).
Jump = tuple[dt.datetime, dt.datetime]


@dataclasses.dataclass(frozen=True)
class Fired:
    """What one firing did: outcome is sent | skipped | held (composed, kept as a draft for a
    person) | missed | failed, or deferred (lost a race every time: not recorded, the next poll
    fires the moment again)."""

    job_id: str
    scheduled_for: dt.datetime
    outcome: str
    detail: str


@dataclasses.dataclass(frozen=True)
class AutoInfo:
    """An automatic issue as `schedule list` shows it."""

    id: int
    name: str
    cron: str
    next_run: dt.datetime | None
    last_run: JobRun | None
    topic: str | None = None
    overdue: Overdue | None = None  # a moment passed and not handled: `run` is down
    troubles: list[JobRun] = dataclasses.field(default_factory=list)  # _troubles


@dataclasses.dataclass(frozen=True)
class Overdue:
    """Timed work whose time passed longer ago than two polls of `mailmag run`, still not done:
    most likely `run` is not running (on this database). Started before `last_chance` (grace_seconds after
    the time) it still does it; later, the moment is recorded as missed (helper-87: a staff member
    saw only "scheduled for" a past time)."""

    due_at: dt.datetime
    last_chance: dt.datetime
    earlier_missed: bool = False  # an automatic issue's earlier moments, past grace already

    def too_late(self, now: dt.datetime) -> bool:
        return now > self.last_chance

    def describe(self, now: dt.datetime, config: Config) -> str:
        """One line for `issues status`, `schedule list` and doctor."""
        due = f"due at {shown(self.due_at, config.zone)} and not done"
        if self.too_late(now):
            return (f"{due}: `mailmag run` was not running on this database; [schedule] grace_seconds have "
                    "passed, so when it starts it records this as missed instead of doing it")
        earlier = " (moments older than grace_seconds are recorded as missed)" if self.earlier_missed else ""
        return (f"{due}: is `mailmag run` running on this database? Started by "
                f"{shown(self.last_chance, config.zone)} "
                f"([schedule] grace_seconds after) it still does it{earlier}")


def overdue(due_at: dt.datetime | None, now: dt.datetime, config: Config) -> Overdue | None:
    """Whether work due at `due_at` (None: none is due) should have been done by `run` by now."""
    settings = config.schedule
    if due_at is None or now - due_at <= dt.timedelta(seconds=2 * settings.poll_seconds):
        return None
    return Overdue(due_at, due_at + dt.timedelta(seconds=settings.grace_seconds))


def _auto_overdue(trigger: Crontab, cursor: dt.datetime, now: dt.datetime, config: Config) -> Overdue | None:
    """An automatic issue's moments not handled: the latest one `run` would still compose, if one
    lies within grace_seconds (helper-91: the hint named an older moment, past grace, as "not
    done", and `run` then sent the next one), else the first one, missed."""
    first = trigger.next_after(cursor)
    grace_start = max(cursor, now - dt.timedelta(seconds=config.schedule.grace_seconds))
    latest = None
    for latest in fire_times(trigger, grace_start, now):  # noqa: B007 - the last one is wanted
        pass
    late = (overdue(latest, now, config) if latest else None) or overdue(first, now, config)
    if late is None or first is None or first > grace_start or late.due_at == first:
        return late
    return dataclasses.replace(late, earlier_missed=True)


def overdue_send(issue: Issue, now: dt.datetime, config: Config) -> Overdue | None:
    """A scheduled issue's send that `run` has not made in time."""
    return overdue(issue.scheduled_at if issue.status == "scheduled" else None, now, config)


def send_job_id(issue_id: int) -> str:
    return timed_send_job_id(issue_id)


def auto_job_id(schedule_id: int) -> str:
    return f"auto-{schedule_id}"


# --- housekeeping -----------------------------------------------------------------------------


def purge_pending(services: Services) -> int:
    """Delete the subscribers who never confirmed (and old subscribe attempts) in one unit of
    work: hourly on the scheduler of `mailmag run`, and `mailmag purge-pending`. Returns how many."""
    with services.session() as session:
        purged = consent.purge_pending(session, services.config.web.purge_pending_after_hours)
    if purged:
        log.info("purged %d unconfirmed subscribers", purged)
    return purged


# --- timed sends ------------------------------------------------------------------------------


def schedule_send(session: Session, issue: Issue, when: dt.datetime, now: dt.datetime | None = None, *,
                  config: Config, allow_empty: bool = False) -> int:
    """`issues send ID --at …`: the issue waits as "scheduled" (a scheduled one is moved).

    The send gates run now, so a mistake shows while someone is at the keyboard; they run
    again when it fires (an item may be edited meanwhile). Returns the audience as of now.
    """
    now = now or utcnow()
    reached = issues.check_sendable(session, config, issue, allow_empty=allow_empty)
    transitions.schedule(issue, when, now)
    # A moment recorded as not sent (missed when the clock jumped over it, then set back) is
    # history now: left, its (job, moment) pair would make every poll take this send as fired.
    session.execute(delete(JobRun).where(JobRun.job_id == send_job_id(issue.id), JobRun.scheduled_for == when,
                                         JobRun.outcome != "sent"))
    return reached


def unschedule_send(session: Session, issue: Issue) -> None:
    """`issues cancel N` of a scheduled issue: it becomes a draft again."""
    if issue.status != "scheduled":
        raise StateError(f"issue {issue.id} is {issue.status}, not scheduled",
                         ja=f"号（ID {issue.id}）は{STATUS_JA[issue.status]}で、送信予約されていません")
    issues.cancel(session, issue.id)


def last_send_run(session: Session, issue: Issue) -> JobRun | None:
    """What happened to the issue's latest timed send (e.g. "missed"), for `issues status`; None
    once it is history: the issue was scheduled again since, or, for a send that did not
    happen, the issue is no longer the draft that record explains (it was sent by hand)."""
    run = session.scalar(
        select(JobRun).where(JobRun.job_id == send_job_id(issue.id)).order_by(JobRun.scheduled_for.desc())
    )
    if run is None or not _news(run, issue.schedule_set_at):
        return None
    return run if run.outcome == "sent" or issue.status == "draft" else None


def _news(run: JobRun, schedule_set_at: dt.datetime | None) -> bool:
    """A timed send's record still says something about its issue: no schedule was set after it.
    (A schedule is always set before the time it is for, so its own firing's record is later.)"""
    return schedule_set_at is None or run.scheduled_for > schedule_set_at


def sends_not_made(session: Session, issue_id: int | None = None) -> dict[int, JobRun]:
    """Drafts (or the one draft `issue_id`) whose latest timed send did not happen (missed:
    `mailmag run` was not running; failed), by issue id: the console shows why a scheduled
    issue is a draft again (not once it has been scheduled again, and cancelled)."""
    query = select(Issue.id, Issue.schedule_set_at).where(Issue.status == "draft")
    if issue_id is not None:
        query = query.where(Issue.id == issue_id)
    drafts: dict[int, dt.datetime | None] = {id_: at for id_, at in session.execute(query)}
    if not drafts:
        return {}
    by_job = {send_job_id(issue_id): issue_id for issue_id in drafts}
    latest: dict[int, JobRun] = {}
    runs = select(JobRun).where(JobRun.job_id.in_(by_job)).order_by(JobRun.scheduled_for)
    for run in session.scalars(runs):
        latest[by_job[run.job_id]] = run
    return {issue_id: run for issue_id, run in latest.items()
            if run.outcome in ("missed", "failed") and _news(run, drafts[issue_id])}


def fire_due_sends(services: Services, now: dt.datetime, *, jump: Jump | None = None) -> list[Fired]:
    """Send every scheduled issue whose time has come; one that is too late becomes a draft
    (`jump`: the clock's latest jump forward, which may be why)."""
    with services.session() as session:
        due = session.execute(
            select(Issue.id, Issue.scheduled_at)
            .where(Issue.status == "scheduled", Issue.scheduled_at <= now)
            .order_by(Issue.scheduled_at)
        ).all()
    results = []
    for issue_id, at in due:
        assert at is not None  # the WHERE above: scheduled_at <= now
        action = _send_action(services.config, issue_id, at, now, jump)
        fired = _once(services, send_job_id(issue_id), at, action, on_failure=_back_to_draft(issue_id))
        if fired is not None:
            results.append(fired)
    return results


def _send_action(config: Config, issue_id: int, at: dt.datetime, now: dt.datetime,
                 jump: Jump | None) -> Action:
    grace = config.schedule.grace_seconds

    def action(session: Session) -> tuple[str, str] | None:
        issue = session.scalar(select(Issue).where(Issue.id == issue_id).with_for_update())
        if issue is None or issue.status != "scheduled" or issue.scheduled_at != at:
            return None  # unscheduled or moved since we looked: not a firing
        if (now - at).total_seconds() > grace:
            transitions.unschedule(issue)
            late = (_jumped_over(at, jump, config)
                    or f"mailmag run was not running until {shown(now, config.zone)}")
            return "missed", (
                f"issue {issue.id} was due at {shown(at, config.zone)} but {late} (more than grace_seconds = "
                f"{grace}): not sent, it is a draft again; send it with `mailmag issues send {issue.id}`"
            )
        # The audience was checked when it was scheduled: an empty one now still goes to the archive.
        added = issues.start_sending(session, config, issue, allow_empty=True)
        return "sent", (f"issue {issue.id} (第{issue.number}号) due at {shown(at, config.zone)}: "
                        f"{added} recipients queued")

    return action


def _jumped_over(at: dt.datetime, jump: Jump | None, config: Config) -> str | None:
    """Why a moment was found late, if the clock jumped over it while `run` was running."""
    if jump is None or not jump[0] < at <= jump[1]:
        return None
    return (f"the system clock jumped forward from {shown(jump[0], config.zone)} to "
            f"{shown(jump[1], config.zone)} while mailmag run was running")


def _back_to_draft(issue_id: int) -> Callable[[Session], None]:
    def undo(session: Session) -> None:
        issue = session.get(Issue, issue_id)
        if issue is not None and issue.status == "scheduled":
            transitions.unschedule(issue)

    return undo


# --- automatic issues -------------------------------------------------------------------------


def add_auto(session: Session, cron: str, name: str | None, config: Config, topic: str | None = None,
             now: dt.datetime | None = None) -> AutoSchedule:
    """`schedule add --cron …`; the crontab line and the topic are checked here, once."""
    cron = " ".join(cron.split())
    if next_fire_time(cron_trigger(cron, config.zone), now or utcnow()) is None:
        raise InvalidInput(f"the cron expression {cron!r} never fires (no such date, e.g. 31 February): "
                           "check the day and month fields",
                           ja=f"crontab の行「{cron}」に当たる日時がありません"
                              "（2月31日のように存在しない日付です）。日と月の欄をご確認ください")
    topic = topics.check_code(topic, config.topics)
    schedule = AutoSchedule(name=(name or "").strip() or cron, cron=cron, topic=topic)
    session.add(schedule)
    session.flush()
    return schedule


def remove_auto(session: Session, schedule_id: int) -> str:
    """`schedule remove ID`, returning its name; the running scheduler drops its job at its next poll."""
    # Write first, read nothing before: on SQLite a read-then-write transaction fails at once
    # ("database is locked") whenever `mailmag run` is writing.
    name = session.scalar(
        delete(AutoSchedule).where(AutoSchedule.id == schedule_id).returning(AutoSchedule.name)
    )
    if name is None:
        raise NotFound(f"no automatic issue with id {schedule_id}", fixes=[Fix("list_schedules")],
                       ja=f"自動発行（ID {schedule_id}）はありません")
    # Its history goes with it (ids are never given twice, so nothing else would ever read it).
    session.execute(delete(JobRun).where(JobRun.job_id == auto_job_id(schedule_id)))
    return name


def list_auto(session: Session, config: Config, now: dt.datetime) -> list[AutoInfo]:
    result = []
    for schedule in session.scalars(select(AutoSchedule).order_by(AutoSchedule.id)):
        last = session.scalar(
            select(JobRun).where(JobRun.job_id == auto_job_id(schedule.id))
            .order_by(JobRun.scheduled_for.desc())
        )
        trigger, cursor = cron_trigger(schedule.cron, config.zone), _cursor(session, schedule)
        # After a clock step back, a moment already handled lies ahead of `now`; it does not fire
        # again, so the next one is after it (helper-66 F1: `schedule list` showed the handled one).
        upcoming = trigger.next_after(cursor) if cursor >= now else next_fire_time(trigger, now)
        late = _auto_overdue(trigger, cursor, now, config)
        result.append(AutoInfo(schedule.id, schedule.name, schedule.cron, upcoming, last, schedule.topic,
                               late, _troubles(session, schedule.id, last, now)))
    return result


# How far back `schedule list` and the console look for moments that went wrong (the console
# says "この1週間").
TROUBLE_DAYS = 7


def _troubles(session: Session, schedule_id: int, last: JobRun | None, now: dt.datetime) -> list[JobRun]:
    """The moments of the last TROUBLE_DAYS that were missed, failed or held, newest first, other
    than the last one (shown as such): a miss followed by a sent moment was seen in the log only
    (helper-90)."""
    query = (select(JobRun).where(JobRun.job_id == auto_job_id(schedule_id),
                                  JobRun.outcome.in_(("missed", "failed", "held")),
                                  JobRun.scheduled_for >= now - dt.timedelta(days=TROUBLE_DAYS))
             .order_by(JobRun.scheduled_for.desc()))
    return [run for run in session.scalars(query) if last is None or run.id != last.id]


def overdue_work(session: Session, config: Config, now: dt.datetime) -> list[tuple[str, Overdue]]:
    """Every timed send and automatic issue whose moment `run` should have handled by now, named
    as doctor says them ("issue 3", "automatic issue 1"), oldest first."""
    found = [(f"issue {issue.id}", late) for issue in session.scalars(
        select(Issue).where(Issue.status == "scheduled").order_by(Issue.scheduled_at))
        if (late := overdue_send(issue, now, config)) is not None]
    found += [(f"automatic issue {info.id}", info.overdue) for info in list_auto(session, config, now)
              if info.overdue is not None]
    return sorted(found, key=lambda pair: pair[1].due_at)


def fire_due_autos(services: Services, now: dt.datetime, schedule_id: int | None = None, *,
                   jump: Jump | None = None) -> list[Fired]:
    """Every moment of each automatic issue (or just one) due since it was last handled.

    The moments since the last recorded run (or since the schedule was added) are walked
    oldest first: within the grace period each composes and sends, older ones are "missed".
    """
    with services.session() as session:
        query = select(AutoSchedule).order_by(AutoSchedule.id)
        if schedule_id is not None:
            query = query.where(AutoSchedule.id == schedule_id)
        schedules = list(session.scalars(query))
        cursors = {s.id: _cursor(session, s) for s in schedules}
    results = []
    for schedule in schedules:
        trigger = cron_trigger(schedule.cron, services.config.zone)
        for count, moment in enumerate(fire_times(trigger, cursors[schedule.id], now)):
            if count >= _BACKLOG_LIMIT:
                break
            fired = fire_auto(services, schedule.id, moment, now, jump)
            if fired is not None:
                results.append(fired)
                if fired.outcome == "deferred":
                    break  # later moments wait: the cursor must not pass this one
    return results


def forget_misses_ahead(session: Session, now: dt.datetime) -> int:
    """After a clock step back: moments of automatic issues recorded missed that now lie ahead
    (the clock had jumped past them) are forgotten, so each fires when its time comes (helper-66
    F7: they stayed missed). Only those after the schedule's last other record: firing walks on
    from the last record, and an earlier one forgotten would be lost from the history, not fired.
    A timed send missed so is a draft again, as its record says; scheduling it again is the way."""
    forgotten = 0
    for schedule_id in list(session.scalars(select(AutoSchedule.id))):
        job_id = auto_job_id(schedule_id)
        handled = session.scalar(select(func.max(JobRun.scheduled_for))
                                 .where(JobRun.job_id == job_id, JobRun.outcome != "missed"))
        ahead = [JobRun.job_id == job_id, JobRun.outcome == "missed", JobRun.scheduled_for > now]
        if handled is not None:
            ahead.append(JobRun.scheduled_for > handled)
        forgotten += rowcount(session.execute(delete(JobRun).where(*ahead)))
    return forgotten


def _cursor(session: Session, schedule: AutoSchedule) -> dt.datetime:
    job_id = auto_job_id(schedule.id)
    last = session.scalar(select(func.max(JobRun.scheduled_for)).where(JobRun.job_id == job_id))
    return max(last, schedule.created_at) if last else schedule.created_at


def fire_auto(
    services: Services, schedule_id: int, scheduled_for: dt.datetime, now: dt.datetime,
    jump: Jump | None = None,
) -> Fired | None:
    """One moment of an automatic issue: compose from the approved items and send, or say why not."""
    config = services.config
    grace = config.schedule.grace_seconds

    def action(session: Session) -> tuple[str, str] | None:
        auto = session.get(AutoSchedule, schedule_id)
        if auto is None:
            return None  # removed meanwhile
        if (now - scheduled_for).total_seconds() > grace:
            jumped = _jumped_over(scheduled_for, jump, config)
            late = f", but {jumped} (more than grace_seconds = {grace})" if jumped else (
                f" while mailmag run was not running (more than grace_seconds = {grace} before "
                f"{shown(now, config.zone)})")
            return "missed", (f"due at {shown(scheduled_for, config.zone)}{late}: no issue composed; "
                              "the approved items wait for the next one")
        return _compose_and_send(session, config, auto.topic)

    return _once(services, auto_job_id(schedule_id), scheduled_for, action)


def _items(issue: Issue) -> str:
    count = len(issue.entries)
    return "1 item" if count == 1 else f"{count} items"


def _compose_and_send(session: Session, config: Config, topic: str | None) -> tuple[str, str]:
    waiting = approved_waiting(session)
    minimum = config.schedule.min_items
    if waiting < minimum:
        return "skipped", (
            f"{waiting} approved item(s) not yet in an issue, fewer than [schedule] min_items = "
            f"{minimum}: no issue composed"
        )
    composed = issues.compose(session, config, topic=topic)
    issue = composed.issue
    if issues.audience(session, issue) == 0:
        session.delete(issue)
        return "skipped", (f"no active subscriber matches {topics.describe(topic, config.topics)}: "
                           "no issue composed; the approved items wait for the next one")
    if composed.clipped:  # the footer's unsubscribe link would be clipped off: a person decides
        return "held", (f"issue {issue.id} composed from {_items(issue)} and kept as a draft, "
                        f"not sent: {'; '.join(map(str, composed.clipped))}; then send it with "
                        f"`mailmag issues send {issue.id}`")
    added = issues.start_sending(session, config, issue)
    detail = (f"issue {issue.id} (第{issue.number}号) composed from {_items(issue)}: "
              f"{added} recipients queued")
    if composed.warnings:
        detail += "; to look at: " + "; ".join(map(str, composed.warnings))
    return "sent", detail


def approved_waiting(session: Session) -> int:
    """Approved items in no live issue: what `issues.compose` would take by default."""
    in_issues = select(IssueItem.item_id).join(Issue).where(Issue.status != "cancelled")
    return session.scalar(
        select(func.count()).select_from(Item).where(Item.status == "approved", Item.id.not_in(in_issues))
    ) or 0


# --- at most once -----------------------------------------------------------------------------


def _once(
    services: Services,
    job_id: str,
    scheduled_for: dt.datetime,
    action: Action,
    on_failure: Callable[[Session], None] | None = None,
) -> Fired | None:
    """Run `action` for (job_id, scheduled_for) unless some process already did; record the outcome.

    None when another caller won, or the action found nothing to do. A MailmagError (or a bug)
    is recorded as "failed" so it is not retried forever; a database outage is not recorded
    and propagates, so the next poll tries again. An action that loses a race is tried
    again from the start, up to ATTEMPTS times, then left for the next poll ("deferred").
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _attempt(services, job_id, scheduled_for, action, on_failure)
        except _LostRace as race:
            lost = race.reason
            log.info("%s for %s lost a race (attempt %d of %d): %s", job_id, scheduled_for, attempt,
                     ATTEMPTS, lost)
    zone = services.config.zone
    return _logged(Fired(job_id, scheduled_for, "deferred", (
        f"due at {shown(scheduled_for, zone)}: lost a race with another change {ATTEMPTS} times "
        f"({lost}); the next poll tries again")))


class _LostRace(Exception):
    """The action collided with a concurrent writer; starting again will see its work."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _attempt(
    services: Services,
    job_id: str,
    scheduled_for: dt.datetime,
    action: Action,
    on_failure: Callable[[Session], None] | None,
) -> Fired | None:
    run = JobRun(job_id=job_id, scheduled_for=scheduled_for, outcome="failed", detail="")
    session = services.sessions()
    try:
        session.add(run)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            return None  # another scheduler or poll got there first
        result = action(session)
        if result is None:
            session.rollback()
            return None
        run.outcome, run.detail = result
        session.commit()
    except Exception as exc:
        session.rollback()
        race = _race(exc)
        if race is not None:
            raise _LostRace(str(race.orig).splitlines()[0]) from exc
        if isinstance(exc, OperationalError):
            raise
        detail = str(exc) if isinstance(exc, MailmagError) else f"{type(exc).__name__}: {exc}"
        detail_ja = exc.text("ja") if isinstance(exc, MailmagError) and exc.ja else ""
        if not isinstance(exc, MailmagError):
            log.exception("%s for %s crashed", job_id, scheduled_for)
        return _record_failure(services.sessions, job_id, scheduled_for, detail, on_failure, detail_ja)
    finally:
        session.close()
    return _logged(Fired(job_id, scheduled_for, run.outcome, run.detail))


def _race(exc: BaseException) -> DBAPIError | None:
    """The database error by which a concurrent writer caused `exc`, if it did: a unique key taken
    meanwhile, a serialization failure or a deadlock, raised as such or behind a domain error
    (compose's "composed at the same moment elsewhere"). Other integrity errors are bugs."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DBAPIError):
            code = getattr(seen.orig, "sqlstate", None)
            if code in _RETRYABLE_SQLSTATES or (isinstance(seen, IntegrityError) and _unique(seen, code)):
                return seen
        seen = seen.__cause__
    return None


def _unique(error: IntegrityError, sqlstate: str | None) -> bool:
    if sqlstate is not None:
        return sqlstate == _UNIQUE_VIOLATION
    return "UNIQUE constraint failed" in str(error.orig)  # SQLite


def _record_failure(
    sessions: sessionmaker[Session],
    job_id: str,
    scheduled_for: dt.datetime,
    detail: str,
    on_failure: Callable[[Session], None] | None,
    detail_ja: str = "",
) -> Fired | None:
    try:
        with sessions.begin() as session:
            session.add(JobRun(job_id=job_id, scheduled_for=scheduled_for, outcome="failed", detail=detail,
                               detail_ja=detail_ja))
            session.flush()
            if on_failure is not None:
                on_failure(session)
    except IntegrityError:
        return None
    return _logged(Fired(job_id, scheduled_for, "failed", detail))


def _logged(fired: Fired) -> Fired:
    level = logging.INFO if fired.outcome in ("sent", "skipped") else logging.WARNING
    log.log(level, "%s %s: %s", fired.job_id, fired.outcome, fired.detail)
    return fired

