"""A firing that loses a race to another writer tries again; it is never the operator's failure."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clocked import offset_seconds
from conftest import SECRET, SENDER_TOML
from sqlalchemy import select, text
from test_schedule import add_auto, add_subscribers, approve_news, issue_count

from mailmag import db
from mailmag.config import load_config
from mailmag.content import issues
from mailmag.models import Issue, JobRun, utcnow
from mailmag.scheduling import jobs
from mailmag.scheduling.when import cron_trigger, next_fire_time
from mailmag.services import Services

# The firing process: the scheduler's due-firings function, the clock given on the command line,
# and the wall clock moved as far as this test's (clocked.offset_seconds): items it compares
# with what this process wrote must not look as if they came from the future.
FIRE = """
import datetime as dt, json, logging, sys, time_machine
time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=float(sys.argv[3])), tick=True).start()
logging.basicConfig(level=logging.INFO)
from mailmag.config import load_config
from mailmag.scheduling import jobs
from mailmag.services import Services
services = Services(load_config(sys.argv[1]))
fired = jobs.fire_due_autos(services, dt.datetime.fromisoformat(sys.argv[2]))
print(json.dumps([[f.outcome, f.detail] for f in fired]))
"""


def recorded(services: Services) -> list[tuple[dt.datetime, str, str]]:
    with services.session() as session:
        return [tuple(row) for row in session.execute(
            select(JobRun.scheduled_for, JobRun.outcome, JobRun.detail).order_by(JobRun.id))]


def issues_and_items(services: Services) -> list[tuple[int, int | None, str, list[int]]]:
    with services.session() as session:
        return [(i.id, i.number, i.status, [e.item_id for e in i.entries])
                for i in session.scalars(select(Issue).order_by(Issue.id))]


def wait_until_blocked_by(services: Services, backend: int, process: subprocess.Popen) -> None:
    """Until some other session waits for a lock `backend` holds (the firing's INSERT of the number)."""
    deadline = time.monotonic() + 30
    while True:
        with services.engine.connect() as connection:
            waiting = connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                {"pid": backend},
            ).scalar()
        if waiting:
            return
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the firing process never reached the issue number"
        time.sleep(0.05)


def test_a_firing_that_races_issues_send_for_the_number_takes_the_next_and_sends(tmp_path: Path, pg_url: str):
    """Two processes on PostgreSQL: the secretariat starts sending draft 1 (item 1), which takes
    第1号, while the automatic firing composes issue 2 from what is left and reaches for the same
    number; the firing waits, loses the number, takes 第2号 and sends. (The number is given when
    sending starts, so this is the moment two writers can collide.)"""
    path = tmp_path / "mailmag.toml"
    path.write_text(f'[mailmag]\nbase_url = "https://news.example.jp"\n[database]\nurl = "{pg_url}"\n'
                    f'{SENDER_TOML}'
                    f'[smtp]\ntransport = "file"\nfile_dir = "{tmp_path / "outbox"}"\n', encoding="utf-8")
    services = Services(load_config(path, env={"MAILMAG_SECRET_KEY": SECRET}))
    try:
        db.init_db(services.engine)
        add_subscribers(services, 2)
        first, second = approve_news(services, 2)
        with services.session() as session:
            draft = issues.compose(session, services.config, item_ids=[first]).issue.id
        created = utcnow()
        add_auto(services, "* * * * *", created)
        moment = next_fire_time(cron_trigger("* * * * *", services.config.zone), created)
        rival = services.sessions()  # `issues send 1`, caught between taking 第1号 and its COMMIT
        issues.start_sending(rival, services.config, issues.get(rival, draft))
        backend = rival.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
        firing = subprocess.Popen(
            [sys.executable, "-c", FIRE, str(path), (moment + dt.timedelta(seconds=5)).isoformat(),
             f"{offset_seconds():.6f}"],
            env={**os.environ, "MAILMAG_SECRET_KEY": SECRET}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until_blocked_by(services, backend, firing)
            rival.commit()
            rival.close()
            out, err = firing.communicate(timeout=60)
        finally:
            rival.close()  # also when the test fails: an open transaction would block the schema's DROP
            if firing.poll() is None:
                firing.kill()
                firing.communicate()
        assert firing.returncode == 0, err
        detail = "issue 2 (第2号) composed from 1 item: 2 recipients queued"
        assert json.loads(out) == [["sent", detail]]
        assert recorded(services) == [(moment, "sent", detail)]
        assert issues_and_items(services) == [(1, 1, "sending", [first]), (2, 2, "sending", [second])]
        assert jobs.fire_due_autos(services, moment + dt.timedelta(seconds=10)) == []
    finally:
        services.close()


def _colliding_compose(calls: list[int]):  # type: ignore[no-untyped-def]
    """Stands in for compose while another writer keeps taking the number: a real unique violation."""
    def compose_and_send(session, config, topic):  # type: ignore[no-untyped-def]
        calls.append(1)
        session.add(Issue(number=1, title="同じ号番号", status="draft"))
        session.flush()

    return compose_and_send


def test_a_firing_that_keeps_losing_is_left_unrecorded_for_the_next_poll(services, monkeypatch):
    add_subscribers(services, 2)
    approve_news(services, 2)
    with services.session() as session:  # 第1号 is taken: every INSERT of number 1 collides
        issues.start_sending(session, services.config, issues.compose(session, services.config,
                                                                      item_ids=[1]).issue)
    at = dt.datetime(2027, 1, 4, 0, 0, tzinfo=dt.UTC)
    add_auto(services, "0 * * * *", at - dt.timedelta(hours=2, minutes=30))
    calls: list[int] = []
    monkeypatch.setattr(jobs, "_compose_and_send", _colliding_compose(calls))
    fired = jobs.fire_due_autos(services, at + dt.timedelta(seconds=5))
    # The walk stops at the moment that lost: the hour after it waits, the cursor does not pass it.
    assert [(f.scheduled_for, f.outcome) for f in fired] == [
        (at - dt.timedelta(hours=2), "missed"), (at - dt.timedelta(hours=1), "missed"), (at, "deferred")]
    assert fired[-1].detail.startswith(
        "due at 2027-01-04 09:00 JST: lost a race with another change 3 times (")
    assert fired[-1].detail.endswith("); the next poll tries again")
    assert "run the command again" not in fired[-1].detail
    assert len(calls) == jobs.ATTEMPTS
    assert [outcome for _, outcome, _ in recorded(services)] == ["missed", "missed"]
    assert issue_count(services) == 1
    monkeypatch.undo()  # the other writer is done
    (again,) = jobs.fire_due_autos(services, at + dt.timedelta(seconds=40))
    assert (again.scheduled_for, again.outcome) == (at, "sent")
    # (Its id depends on the backend: PostgreSQL does not give back the ids of the rolled-back tries.)
    assert again.detail.endswith(" (第2号) composed from 1 item: 2 recipients queued")
    assert [outcome for _, outcome, _ in recorded(services)] == ["missed", "missed", "sent"]


def test_an_integrity_error_that_is_no_race_is_recorded_as_failed_once(services, monkeypatch):
    """A NOT NULL violation is a bug: trying again would not help, so it is not retried."""
    calls: list[int] = []

    def broken(session, config, topic):  # type: ignore[no-untyped-def]
        calls.append(1)
        session.add(Issue(title=None, status="draft"))  # an issue without a title
        session.flush()

    monkeypatch.setattr(jobs, "_compose_and_send", broken)
    at = dt.datetime(2027, 1, 4, 0, 0, tzinfo=dt.UTC)
    add_auto(services, "0 * * * *", at - dt.timedelta(minutes=30))
    (fired,) = jobs.fire_due_autos(services, at + dt.timedelta(seconds=5))
    assert fired.outcome == "failed" and fired.detail.startswith("IntegrityError: ")
    assert len(calls) == 1
    assert [outcome for _, outcome, _ in recorded(services)] == ["failed"]


@pytest.mark.parametrize("attempts_lost", [1, 3])
def test_a_timed_send_that_loses_a_race_stays_scheduled_until_it_wins(services, monkeypatch, attempts_lost):
    from mailmag.content import transitions

    add_subscribers(services, 2)
    approve_news(services, 1)
    at = dt.datetime(2027, 1, 4, 0, 0, tzinfo=dt.UTC)
    with services.session() as session:
        issue = issues.compose(session, services.config).issue
        issue_id = issue.id
        jobs.schedule_send(session, issue, at, now=at - dt.timedelta(hours=1), config=services.config)
    real_start = transitions.start_sending
    calls: list[int] = []

    def start_sending(session, issue, domain, language):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) <= attempts_lost:  # another writer takes the number just given meanwhile
            session.add(Issue(number=issue.number, title="同じ号番号", status="draft"))
            session.flush()
        return real_start(session, issue, domain, language)

    monkeypatch.setattr(transitions, "start_sending", start_sending)
    (fired,) = jobs.fire_due_sends(services, at + dt.timedelta(seconds=5))
    if attempts_lost < jobs.ATTEMPTS:
        assert (fired.outcome, fired.detail) == (
            "sent", f"issue {issue_id} (第1号) due at 2027-01-04 09:00 JST: 2 recipients queued")
        assert len(calls) == attempts_lost + 1
        return
    assert fired.outcome == "deferred"
    assert recorded(services) == []
    with services.session() as session:
        assert issues.get(session, issue_id).status == "scheduled"
    (fired,) = jobs.fire_due_sends(services, at + dt.timedelta(seconds=35))
    assert fired.outcome == "sent"
    assert [outcome for _, outcome, _ in recorded(services)] == ["sent"]


def test_a_firing_whose_every_try_at_a_number_collides_waits_for_the_next_poll(services, monkeypatch):
    """Sending takes the next 第N号 a few times itself; when even that keeps colliding, the automatic
    firing is the system's problem again: tried anew, then left for the next poll, never "failed"."""
    add_subscribers(services, 2)
    approve_news(services, 2)
    with services.session() as session:  # 第1号 is taken
        issues.start_sending(session, services.config, issues.compose(session, services.config,
                                                                      item_ids=[1]).issue)
    at = dt.datetime(2027, 1, 4, 0, 0, tzinfo=dt.UTC)
    add_auto(services, "0 * * * *", at - dt.timedelta(minutes=30))
    monkeypatch.setattr(issues, "next_number", lambda session: 1)  # others keep taking each number read
    (fired,) = jobs.fire_due_autos(services, at + dt.timedelta(seconds=5))
    assert fired.outcome == "deferred" and fired.detail.endswith("); the next poll tries again")
    assert "run the command again" not in fired.detail
    assert recorded(services) == [] and issue_count(services) == 1
    monkeypatch.undo()
    (again,) = jobs.fire_due_autos(services, at + dt.timedelta(seconds=40))
    assert again.outcome == "sent"
    assert again.detail.endswith(" (第2号) composed from 1 item: 2 recipients queued")
    assert [outcome for _, outcome, _ in recorded(services)] == ["sent"]
