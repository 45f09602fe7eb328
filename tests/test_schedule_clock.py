"""`mailmag run` while the system clock steps: set back (NTP correcting a clock that was ahead)
or jumped forward. The node runs in this process, on a clock the test moves (time-machine);
APScheduler waits by elapsed time, which no clock step changes, as on a real machine."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator

import pytest
import time_machine
from sqlalchemy import select, update
from test_run import configure, runs, schedule_in, status, wait_until
from test_schedule import add_subscribers, approve_news, draft_issue

from mailmag.content import issues
from mailmag.delivery import outbox
from mailmag.delivery.dispatch import worker_host
from mailmag.models import Delivery, JobRun, utcnow
from mailmag.scheduling import jobs
from mailmag.scheduling import node as nodes
from mailmag.services import Services

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the clock, not the database

MONDAY_MORNING = dt.datetime(2026, 12, 7, 1, 0, tzinfo=dt.UTC)  # 10:00 in Japan


@pytest.fixture
def running(tmp_path, db_url, smtp_server, caplog) -> Iterator[tuple[Services, time_machine.Coordinates]]:  # type: ignore[no-untyped-def]
    """A node (scheduler and worker, polls every 0.5 s, grace 90 s) on a clock the test moves."""
    caplog.set_level(logging.INFO, logger="mailmag.scheduling")
    _config_file, services = configure(tmp_path, db_url, smtp_server.port, grace_seconds=90)
    add_subscribers(services, 2)
    with time_machine.travel(MONDAY_MORNING, tick=True) as clock:
        node = nodes.Node(services)
        thread = threading.Thread(target=node.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: "scheduler started" in caplog.text, "the scheduler to start")
            yield services, clock
        finally:
            node.stop.set()
            thread.join(timeout=30)
            services.close()
    assert not thread.is_alive()


@sqlite_only
def test_a_clock_set_back_does_not_put_the_scheduler_to_sleep(running, smtp_server, caplog):
    """helper-61: after a 31 min step back nothing fired for 20+ min; hours back would have made
    timed sends missed. The scheduler looks again within a poll of the step."""
    services, clock = running
    number = draft_issue(services)
    threading.Event().wait(1.0)  # the poll job has run on the old clock, twice
    clock.shift(dt.timedelta(minutes=-31))
    schedule_in(services, number, 2)  # due two seconds ahead, on the clock as it is now
    wait_until(lambda: status(services, number) == "sent", "the timed send to go out")
    assert runs(services) == [(f"send-issue-{number}", "sent")]
    assert sorted(smtp_server.recipients()) == ["member0@example.jp", "member1@example.jp"]
    assert caplog.text.count("the system clock was set back by 31 min") == 1


@sqlite_only
def test_a_send_the_clock_jumped_over_is_missed_and_says_the_clock_jumped(running, smtp_server, caplog):
    """Past grace it is missed, as ever; but `run` was running: the reason is the clock."""
    services, clock = running
    number = draft_issue(services)
    schedule_in(services, number, 60)
    clock.shift(dt.timedelta(minutes=10))
    wait_until(lambda: status(services, number) == "draft", "the send to be recorded missed")
    assert runs(services) == [(f"send-issue-{number}", "missed")]
    with services.session() as session:
        detail = session.scalar(select(JobRun.detail))
    assert "the system clock jumped forward from 2026-12-07 10:00 JST to 2026-12-07 10:10 JST " \
           "while mailmag run was running" in detail, detail
    assert "not running" not in detail
    assert smtp_server.messages == []
    wait_until(lambda: "the system clock jumped forward by 10 min" in caplog.text, "the jump to be logged")


@sqlite_only
def test_a_clock_set_back_while_an_issue_sends_does_not_hold_the_rest_for_the_step(running, smtp_server,
                                                                                    caplog):
    """helper-66: the queued rows' next tries were stamped on the old clock; a 9 h step back (a
    hardware clock on JST) held the rest of the issue for 9 h. They move back by the step."""
    services, clock = running
    number = draft_issue(services)
    with services.session() as session:
        issues.start_sending(session, services.config, issues.get(session, number))
        # not yet due when the clock steps: a relay's 4xx a moment ago, say
        session.execute(update(Delivery).values(next_attempt_at=utcnow() + dt.timedelta(seconds=3)))
    clock.shift(dt.timedelta(hours=-9))
    wait_until(lambda: status(services, number) == "sent", "the rest of the issue to go out")
    assert sorted(smtp_server.recipients()) == ["member0@example.jp", "member1@example.jp"]
    assert caplog.text.count("the system clock was set back by 9 h") == 1


@sqlite_only
def test_an_automatic_issue_the_clock_jumped_over_fires_when_its_time_comes_after_the_step_back(
        running, smtp_server, caplog):
    """helper-66 F7: 10:01 was missed when the clock jumped to 10:05; NTP set it back, and at 10:01
    nothing fired. The node that runs the scheduler forgets misses ahead of the clock it steps to."""
    services, clock = running
    approve_news(services, 1)
    with services.session() as session:
        jobs.add_auto(session, "1 10 * * *", None, services.config)  # 10:01 JST; the node is at 10:00
    clock.shift(dt.timedelta(minutes=5))
    wait_until(lambda: runs(services) == [("auto-1", "missed")], "10:01 to be recorded missed")
    wait_until(lambda: "jumped forward by 5 min: timed sends" in caplog.text, "run to see the jump")
    clock.shift(dt.timedelta(minutes=-4, seconds=-10))  # ~10:00:55
    wait_until(lambda: runs(services) == [("auto-1", "sent")], "10:01 to fire when it comes")
    wait_until(lambda: sorted(smtp_server.recipients()) == ["member0@example.jp", "member1@example.jp"],
               "the automatic issue to go out")
    assert "automatic issues' moments missed ahead of now fire when they come" in caplog.text


@sqlite_only
def test_a_dead_workers_lease_stamped_on_a_clock_ahead_expires_after_the_step_back(running, smtp_server):
    """helper-67: a worker on this machine died while the clock was 9 h ahead; after the step back
    its lease lay 9 h ahead, and its rows stayed held for 9 h. This machine's leases move back by
    the step; another machine's, on its own clock, stay."""
    services, clock = running
    number = draft_issue(services)
    with services.session() as session:
        issues.start_sending(session, services.config, issues.get(session, number))
        first, second = session.scalars(select(Delivery.id).order_by(Delivery.id)).all()
        held = {"status": "sending", "lease_expires_at": utcnow() + dt.timedelta(seconds=2)}
        session.execute(update(Delivery).where(Delivery.id == first)
                        .values(lease_owner=f"{worker_host()}:1:dead00", **held))
        session.execute(update(Delivery).where(Delivery.id == second)
                        .values(lease_owner="elsewhere.example.jp:1:live00",
                                **{**held, "lease_expires_at": utcnow() + dt.timedelta(hours=1)}))
    clock.shift(dt.timedelta(hours=-9))
    wait_until(lambda: smtp_server.recipients() == ["member0@example.jp"], "the dead worker's row to go")
    with services.session() as session:
        other = session.get(Delivery, second)
        assert (other.status, other.lease_owner) == ("sending", "elsewhere.example.jp:1:live00")


def test_a_jump_undone_by_a_step_back_is_not_blamed_for_a_later_miss():
    """helper-66: after +5 min and then -5 min, a send missed because `run` was frozen was said
    to have been jumped over."""
    with time_machine.travel(MONDAY_MORNING, tick=True) as clock:
        watch = nodes.ClockWatch()
        clock.shift(dt.timedelta(minutes=5))
        assert watch.look() > 290 and watch.jump() is not None
        clock.shift(dt.timedelta(minutes=-5))
        assert watch.look() < -290
        assert watch.jump() is None


def test_elapsed_time_counts_a_suspend():
    """helper-63: time.monotonic() stops while the machine sleeps (a laptop's lid, a paused VM) and
    the wall clock does not, so a suspend read as a jump forward, and a send missed while asleep
    was blamed on the jump, not on `run` not running. Linux's boot clock counts the sleep."""
    if not hasattr(time, "CLOCK_BOOTTIME"):
        pytest.skip("no CLOCK_BOOTTIME on this system: monotonic it is")
    assert abs(nodes.elapsed() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0


@sqlite_only
def test_a_standby_node_leaves_the_queue_to_the_scheduler_node(tmp_path, db_url, smtp_server, caplog):
    """helper-63: every `run` moved queued rows back when the clock stepped, so two on one machine
    moved them twice, and a standby node said "the scheduler looks again now" of a scheduler it
    does not run. The node holding the scheduler moves them. helper-69 F2: a standby node's machine
    kept a dead worker's lease for the length of the step; each node moves its machine's leases."""
    caplog.set_level(logging.INFO, logger="mailmag.scheduling")
    _config_file, services = configure(tmp_path, db_url, smtp_server.port, grace_seconds=90)
    add_subscribers(services, 2)
    number = draft_issue(services)
    other = nodes.scheduler_lock(services.engine)
    assert other.acquire()  # another node runs the scheduler
    with time_machine.travel(MONDAY_MORNING, tick=True) as clock:
        with services.session() as session:
            issues.start_sending(session, services.config, issues.get(session, number))
            session.execute(update(Delivery).values(next_attempt_at=utcnow() + dt.timedelta(hours=1)))
            queued, leased = session.scalars(select(Delivery.id).order_by(Delivery.id)).all()
            session.execute(update(Delivery).where(Delivery.id == leased).values(
                status="sending", lease_owner=f"{worker_host()}:1:dead00",
                lease_expires_at=utcnow() + dt.timedelta(seconds=30)))
            planned = session.get(Delivery, queued).next_attempt_at
        node = nodes.Node(services, worker=False)
        thread = threading.Thread(target=node.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: "scheduler standby" in caplog.text, "the node to stand by")
            clock.shift(dt.timedelta(hours=-9))
            wait_until(lambda: "set back by 9 h" in caplog.text, "the step to be seen")
            time.sleep(0.5)
        finally:
            node.stop.set()
            thread.join(timeout=30)
            other.release()
        with services.session() as session:
            assert session.get(Delivery, queued).next_attempt_at == planned
            lease = session.get(Delivery, leased).lease_expires_at
            assert lease.replace(tzinfo=None) < (utcnow() + dt.timedelta(seconds=31)).replace(tzinfo=None)
    assert "this machine's leases move back by as much (the scheduler's node moves the queue)" in caplog.text
    assert "looks again now" not in caplog.text
    services.close()


@sqlite_only
def test_sending_goes_on_soon_after_a_step_back_not_at_the_next_poll(tmp_path, db_url, smtp_server, caplog):
    """helper-69 F2: after a step back, the rest of an issue waited for `run`'s next poll (here a
    minute) to have its next tries moved back, and the idle worker for its own. `run` looks at
    the clock every second, and an idle worker looks again soon after a step back."""
    _config_file, configured = configure(tmp_path, db_url, smtp_server.port, grace_seconds=120)
    services = Services(configured.config.replace(schedule=dataclasses.replace(
        configured.config.schedule, poll_seconds=60.0)))
    configured.close()
    add_subscribers(services, 2)
    number = draft_issue(services)
    with time_machine.travel(MONDAY_MORNING, tick=True) as clock:
        with services.session() as session:
            issues.start_sending(session, services.config, issues.get(session, number))
            session.execute(update(Delivery).values(next_attempt_at=utcnow() + dt.timedelta(seconds=2)))
        node = nodes.Node(services)
        thread = threading.Thread(target=node.run, daemon=True)
        thread.start()
        try:
            clock.shift(dt.timedelta(hours=-9))
            wait_until(lambda: status(services, number) == "sent", "the rest of the issue to go out",
                       timeout=20)  # the old code waited for the poll a minute later
        finally:
            node.stop.set()
            thread.join(timeout=30)
            services.close()
    assert sorted(smtp_server.recipients()) == ["member0@example.jp", "member1@example.jp"]


def test_a_lease_renewed_on_the_new_clock_before_run_looks_is_not_moved_back(tmp_path, db_url, smtp_server):
    """helper-69: after a 1 h step back, a live worker's keeper renewed its lease on the new clock
    before `run`'s poll saw the step; the step moved that fresh lease 1 h back, into the past, the
    same worker expired it, and the message on the wire went twice. Only a lease more than a lease
    ahead was stamped on the old clock."""
    _config_file, services = configure(tmp_path, db_url, smtp_server.port)
    add_subscribers(services, 2)
    number = draft_issue(services)
    lease = services.config.dispatch.lease_seconds
    now = utcnow()
    with services.session() as session:
        issues.start_sending(session, services.config, issues.get(session, number))
        renewed, stale = session.scalars(select(Delivery.id).order_by(Delivery.id)).all()
        fresh_at = now + dt.timedelta(seconds=lease - 1)
        session.execute(update(Delivery).where(Delivery.id == renewed).values(
            status="sending", lease_owner=f"{worker_host()}:1:live00", lease_expires_at=fresh_at))
        session.execute(update(Delivery).where(Delivery.id == stale).values(
            status="sending", lease_owner=f"{worker_host()}:1:dead00",
            lease_expires_at=now + dt.timedelta(hours=1, seconds=2)))
    with services.session() as session:
        outbox.leases_set_back(session, dt.timedelta(hours=1), now, worker_host(), lease)
    with services.session() as session:
        kept, moved = (session.get(Delivery, id_) for id_ in (renewed, stale))
        assert (kept.status, _naive(kept.lease_expires_at)) == ("sending", _naive(fresh_at))
        assert _naive(moved.lease_expires_at) == _naive(now + dt.timedelta(seconds=2))
    services.close()


def _naive(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=None)
