"""`mailmag run` as real processes: timed sends into aiosmtpd, restarts, missed jobs, two nodes."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clocked import mailmag_command
from conftest import SENDER_TOML
from sqlalchemy import select, text, update
from test_schedule import add_subscribers, approve_news, draft_issue
from test_worker_process import _boundaries, _children, _gone

from mailmag import db
from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import load_config
from mailmag.content import issues
from mailmag.models import ConsentEvent, Issue, JobRun, Subscriber, utcnow
from mailmag.scheduling import jobs
from mailmag.scheduling import node as nodes
from mailmag.services import Services

pytestmark = pytest.mark.slow  # each test starts one or two `mailmag run` processes

SECRET = "test-secret-key-0123456789-abcdefghijk"
DEADLINE = 30.0


def wait_until(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Run:
    """One `mailmag run` process; its log (stderr) goes to a file the test reads."""

    def __init__(self, config_file: Path, log: Path, *args: str, session: bool = False) -> None:
        """`session`: in a process group of its own, as systemd starts it (for os.killpg)."""
        self.log = log
        env = {**os.environ, "MAILMAG_SECRET_KEY": SECRET, "PYTHONFAULTHANDLER": "1"}
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                mailmag_command("--config", str(config_file), "run", *args),
                stdout=subprocess.DEVNULL, stderr=stderr, env=env, start_new_session=session,
            )

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, line: str) -> None:
        wait_until(lambda: line in self.text() or self.process.poll() is not None, f"'{line}' in the log")
        assert line in self.text(), self.text()

    def stop(self) -> int:
        """SIGTERM, as systemd stops it: a clean exit."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack
            self.process.wait()
            raise AssertionError(f"`mailmag run` did not stop on SIGTERM:\n{self.text()}") from None


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(config_file: Path, *args: str, session: bool = False) -> Run:
        run = Run(config_file, tmp_path / f"run{len(runs) + 1}.log", *args, session=session)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def configure(tmp_path: Path, db_url: str, smtp_port: int, grace_seconds: int = 3600
              ) -> tuple[Path, Services]:
    """A configuration file for `run` (aiosmtpd relay, fast polls) and services on its database."""
    path = tmp_path / "mailmag.toml"
    path.write_text(
        f'[mailmag]\nbase_url = "https://news.example.jp"\n\n[database]\nurl = "{db_url}"\n\n{SENDER_TOML}\n'
        f'[smtp]\ntransport = "smtp"\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "none"\n'
        f'timeout_seconds = 5.0\n\n[schedule]\npoll_seconds = 0.5\ngrace_seconds = {grace_seconds}\n',
        encoding="utf-8",
    )
    services = Services(load_config(path, env={"MAILMAG_SECRET_KEY": SECRET}))
    db.init_db(services.engine)
    return path, services


@pytest.fixture
def node(tmp_path: Path, db_url: str, smtp_server) -> Iterator[tuple[Path, Services]]:  # type: ignore[no-untyped-def]
    path, services = configure(tmp_path, db_url, smtp_server.port)
    yield path, services
    services.close()


def schedule_in(services: Services, number: int, seconds: float) -> None:
    with services.session() as session:
        jobs.schedule_send(session, issues.get(session, number), utcnow() + dt.timedelta(seconds=seconds),
                           config=services.config, allow_empty=True)


def status(services: Services, number: int) -> str | None:
    with services.session() as session:
        return session.scalar(select(Issue.status).where(Issue.id == number))


def runs(services: Services) -> list[tuple[str, str]]:
    with services.session() as session:
        rows = session.execute(select(JobRun.job_id, JobRun.outcome).order_by(JobRun.id))
        return [tuple(row) for row in rows]


def test_a_timed_send_a_few_seconds_ahead_fires_once_and_delivers(node, smtp_server, start_run):
    config_file, services = node
    add_subscribers(services, 3)
    number = draft_issue(services)
    run = start_run(config_file)
    run.wait_for("scheduler started")
    schedule_in(services, number, 1.5)
    wait_until(lambda: status(services, number) == "sent", "the issue to be sent")
    assert run.stop() == 0
    assert sorted(smtp_server.recipients()) == [f"member{i}@example.jp" for i in range(3)]
    assert runs(services) == [(f"send-issue-{number}", "sent")]
    assert "scheduler stopped" in run.text()
    # each line's time in [mailmag] timezone, as its 'due at … JST' (helper-81: the machine's UTC)
    [started] = [line for line in run.text().splitlines() if "scheduler started" in line]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} JST INFO ", started), started


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL: the two-node test
def test_a_send_scheduled_before_a_restart_fires_after_it(node, smtp_server, start_run):
    config_file, services = node
    add_subscribers(services, 2)
    number = draft_issue(services)
    first = start_run(config_file)
    first.wait_for("scheduler started")
    schedule_in(services, number, 3)
    assert first.stop() == 0
    assert status(services, number) == "scheduled" and smtp_server.messages == []
    second = start_run(config_file)
    wait_until(lambda: status(services, number) == "sent", "the issue to be sent")
    assert second.stop() == 0
    assert sorted(smtp_server.recipients()) == ["member0@example.jp", "member1@example.jp"]
    assert runs(services) == [(f"send-issue-{number}", "sent")]


def test_what_came_due_while_run_was_down_fires_within_grace_else_is_reported_missed(
    tmp_path, db_url, smtp_server, start_run
):
    config_file, services = configure(tmp_path, db_url, smtp_server.port, grace_seconds=90)
    add_subscribers(services, 2)
    recent, old = draft_issue(services), draft_issue(services)
    approve_news(services, 2)  # for the automatic issue
    with services.session() as session:  # scheduled, then `run` stayed down past the moments
        for number, late in ((recent, 60), (old, 7200)):
            session.execute(update(Issue).where(Issue.id == number)
                            .values(status="scheduled", scheduled_at=utcnow() - dt.timedelta(seconds=late)))
        schedule = jobs.add_auto(session, "* * * * *", "毎分", services.config)
        schedule.created_at = utcnow() - dt.timedelta(minutes=4)
    run = start_run(config_file)
    wait_until(lambda: [status(services, n) for n in (recent, old, 3)] == ["sent", "draft", "sent"],
               "the recent send and the automatic issue to go out, the old send to be a draft again")
    assert run.stop() == 0
    outcomes = runs(services)
    assert [o for o in outcomes if o[0].startswith("send")] == [  # oldest moment first
        (f"send-issue-{old}", "missed"), (f"send-issue-{recent}", "sent")]
    auto = [outcome for job, outcome in outcomes if job == f"auto-{schedule.id}"]
    # Minutes more than 90 s old are reported missed; the first one within grace composes and
    # sends issue 3; a later one (nothing approved is left) is skipped.
    first_sent = auto.index("sent")
    assert first_sent >= 2 and set(auto[:first_sent]) == {"missed"}
    assert set(auto[first_sent + 1:]) <= {"skipped"}
    assert f"send-issue-{old} missed: issue {old} was due at" in run.text()
    # Issue 1 and issue 3 went to both subscribers, issue 2 to no one.
    assert len(smtp_server.messages) == 4 and len(set(smtp_server.recipients())) == 2
    services.close()


def test_two_nodes_on_postgresql_fire_once_and_a_standby_takes_over(tmp_path, pg_url, smtp_server, start_run):
    config_file, services = configure(tmp_path, pg_url, smtp_server.port)
    add_subscribers(services, 3)
    first_issue, second_issue = draft_issue(services), draft_issue(services)
    leader = start_run(config_file)
    leader.wait_for("scheduler started")
    standby = start_run(config_file)
    standby.wait_for("scheduler standby")
    schedule_in(services, first_issue, 1)
    wait_until(lambda: status(services, first_issue) == "sent", "the first issue to be sent")
    leader.process.kill()  # dies without a word: its database session, and the lock, go with it
    leader.process.wait()
    standby.wait_for("scheduler started")
    schedule_in(services, second_issue, 1)
    wait_until(lambda: status(services, second_issue) == "sent", "the second issue to be sent")
    assert standby.stop() == 0
    assert runs(services) == [(f"send-issue-{first_issue}", "sent"), (f"send-issue-{second_issue}", "sent")]
    # Each subscriber got each issue once, whichever node delivered it.
    assert len(smtp_server.recipients()) == 6
    assert len(set(smtp_server.recipients())) == 3
    services.close()


def test_a_node_that_lost_the_lock_fires_nothing_while_a_standby_takes_over(tmp_path, pg_url, smtp_server):
    """The failover gap: a node's lock goes with its database session (PostgreSQL restarted, the
    network cut) and its main loop learns it at its next look, up to poll_seconds later, while a
    standby may take the scheduler over at once. The old node's jobs fire nothing meanwhile."""
    _config_file, services = configure(tmp_path, pg_url, smtp_server.port)
    add_subscribers(services, 2)
    number = draft_issue(services)
    schedule_in(services, number, 0.5)
    time.sleep(0.6)  # due now
    leader = nodes.Node(services, worker=False)
    assert leader.lock.acquire()
    nodes._node = leader  # as `run` sets it: the scheduler's jobs find their node there
    try:
        pid = leader.lock.connection.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with services.engine.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}).scalar()
        standby = nodes.AdvisoryLock(services.engine)
        assert standby.acquire()  # the server let the lock go with the session
        nodes.poll_job()  # the old node's scheduler, before its main loop has looked
        assert status(services, number) == "scheduled" and runs(services) == []
        standby.release()
        assert leader.lock.acquire()  # the scheduler again: the same job fires
        nodes.poll_job()
        assert runs(services) == [(f"send-issue-{number}", "sent")]
    finally:
        nodes._node = None
        leader.lock.release()
        services.close()


def test_the_sqlite_scheduler_lock_file_goes_when_run_stops(tmp_path, smtp_server, start_run):
    config_file, services = configure(tmp_path, f"sqlite:///{tmp_path / 'mailmag.db'}", smtp_server.port)
    lock = tmp_path / "mailmag.db.scheduler.lock"
    run = start_run(config_file)
    run.wait_for("scheduler started")
    assert lock.exists()  # held while it runs
    assert run.stop() == 0
    assert not lock.exists()  # no mailmag.db.scheduler.lock left beside the database
    again = start_run(config_file)  # and the next run takes the scheduler as before
    again.wait_for("scheduler started")
    assert again.stop() == 0 and not lock.exists()
    services.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_scheduler_purges_unconfirmed_subscribers(node, start_run):
    """Everything periodic runs on `mailmag run`'s scheduler, the hourly purge too (it ran in a
    thread of `serve` before): it runs once when the scheduler starts, then every hour."""
    config_file, services = node
    with services.session() as session:
        for email, age in (("stale@example.jp", 200), ("recent@example.jp", 2)):
            _, person = subscribers.add(session, subscribers.parse_address(email), Consent("web-form"))
            person.status, person.created_at = "pending", utcnow() - dt.timedelta(hours=age)
            session.execute(update(ConsentEvent).where(ConsentEvent.subscriber_id == person.id)
                            .values(at=utcnow() - dt.timedelta(hours=age)))

    def emails() -> set[str]:
        with services.session() as session:
            return set(session.scalars(select(Subscriber.email)))

    run = start_run(config_file)
    run.wait_for("scheduler started")
    wait_until(lambda: emails() == {"recent@example.jp"}, "the stale pending subscriber to be purged")
    assert run.stop() == 0
    assert "purged 1 unconfirmed subscribers" in run.text()


# `mailmag run --processes N`: the service's delivery in N sending processes (more CPU cores).

def _two_processes(config_file: Path, start_run, retry_seconds: float = 60.0,  # type: ignore[no-untyped-def]
                   session: bool = False) -> Run:
    """`run --processes 2` at 30 messages a second in all (so both processes are surely at it)."""
    config_file.write_text(config_file.read_text().replace(
        "timeout_seconds = 5.0\n",
        f"timeout_seconds = 5.0\nrate_per_second = 30.0\nretry_relay_seconds = {retry_seconds}\n"))
    run = start_run(config_file, "--processes", "2", "--concurrency", "2", session=session)
    run.wait_for("scheduler started")
    return run


def _expected(n: int) -> list[str]:
    return sorted(f"member{i}@example.jp" for i in range(n))


def test_run_with_two_sending_processes_delivers_each_message_once_and_stops_them_all(
        node, smtp_server, start_run):
    config_file, services = node
    add_subscribers(services, 40)
    number = draft_issue(services)
    run = _two_processes(config_file, start_run)
    children = _children(run.process)
    assert len(children) == 2
    schedule_in(services, number, 0.5)  # the scheduler (a thread of run) fires it; the processes send
    wait_until(lambda: status(services, number) == "sent", "the issue to be sent")
    assert run.stop() == 0
    assert all(_gone(pid) for pid in children)
    assert sorted(smtp_server.recipients()) == _expected(40)  # every subscriber, none twice
    assert len(_boundaries(smtp_server)) == 2  # both processes sent
    assert runs(services) == [(f"send-issue-{number}", "sent")]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_run_sending_processes_outlive_a_relay_that_refuses_us_for_a_while(node, smtp_server, start_run):
    """`worker --processes` stops on "relaying denied" (an operator is at the terminal); the service
    must not: each process tries again after [smtp] retry_relay_seconds, as a single one does."""
    config_file, services = node
    add_subscribers(services, 30)
    number = draft_issue(services)
    run = _two_processes(config_file, start_run, retry_seconds=1.0)
    children = _children(run.process)
    smtp_server.fail_next("rcpt", 554, "5.7.1 Relay access denied", times=2)
    schedule_in(services, number, 0.5)
    wait_until(lambda: status(services, number) == "sent", "the issue to be sent after the refusals")
    assert run.process.poll() is None and _children(run.process) == children  # nothing restarted
    assert "delivering again in 1.0 seconds" in run.text()
    assert "worker again" not in run.text()  # run starts again by itself: no advice to do it by hand
    assert "sending resumed: the relay answers again" in run.text()  # the log's last word is not the error
    assert run.stop() == 0
    assert sorted(smtp_server.recipients()) == _expected(30)
    with services.session() as session:  # nobody marked failed or bounced for the relay's own rule
        assert session.scalar(text("SELECT count(*) FROM deliveries WHERE status != 'sent'")) == 0
        assert session.scalar(text("SELECT count(*) FROM subscribers WHERE status != 'active'")) == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_run_stops_with_its_reason_when_a_sending_process_is_killed(node, smtp_server, start_run):
    """A service delivering with one process fewer, unseen, is worse than one that stops: run
    exits non-zero (systemd restarts it) and takes the other process with it."""
    config_file, services = node
    add_subscribers(services, 2)
    run = _two_processes(config_file, start_run)
    first, second = _children(run.process)
    os.kill(first, signal.SIGKILL)
    assert run.process.wait(timeout=DEADLINE) == 1
    assert _gone(second)
    assert "a sending process ended without a report" in run.text()
    assert "scheduler stopped" in run.text()  # wound down, not torn down


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_run_stops_with_its_reason_when_one_sending_process_is_stopped_alone(node, smtp_server, start_run):
    """SIGTERM to one sending process, not to run: the process stops cleanly, and so must run (the
    others with it), with exit status 1 and why, so that systemd restarts it. It used to end with
    0, as if asked to stop, and the issue stayed half-sent until someone looked."""
    config_file, services = node
    add_subscribers(services, 2)
    run = _two_processes(config_file, start_run)
    first, second = _children(run.process)
    os.kill(first, signal.SIGTERM)
    assert run.process.wait(timeout=DEADLINE) == 1
    assert _gone(second)
    assert f"(pid {first}) stopped on its own" in run.text()
    assert f"to stop mailmag, signal pid {run.process.pid}" in run.text()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_run_stopped_as_systemd_stops_it_ends_cleanly(node, smtp_server, start_run):
    """systemd's stop sends SIGTERM to every process of the service at once (KillMode=control-group):
    the sending processes stop on their own signal, not run's, and that is a clean stop."""
    config_file, services = node
    add_subscribers(services, 2)
    run = _two_processes(config_file, start_run, session=True)
    children = _children(run.process)
    os.killpg(run.process.pid, signal.SIGTERM)
    assert run.process.wait(timeout=DEADLINE) == 0, run.text()
    assert all(_gone(pid) for pid in children)
    assert "stopped on its own" not in run.text()


def test_run_no_worker_with_processes_is_a_usage_error(tmp_path, smtp_server):
    config_file, services = configure(tmp_path, f"sqlite:///{tmp_path / 'mailmag.db'}", smtp_server.port)
    services.close()
    command = mailmag_command("--config", str(config_file), "run", "--no-worker", "--processes", "2")
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE,
                          env={**os.environ, "MAILMAG_SECRET_KEY": SECRET})
    assert done.returncode == 2
    assert "--processes is for delivering" in done.stderr
