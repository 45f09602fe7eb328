"""Real `mailmag worker` processes: SIGKILL at each point, and two workers on one queue."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from clocked import mailmag_command
from conftest import SECRET
from sqlalchemy import select
from test_dispatch import prepare_send

from mailmag import db
from mailmag.config import load_config
from mailmag.delivery import outbox
from mailmag.models import Delivery, utcnow
from mailmag.services import Services


def write_config(path: Path, db_url: str, port: int, lease_seconds: int = 1) -> Path:
    path.write_text(
        f'[mailmag]\nbase_url = "https://news.example.jp"\n'
        f'[database]\nurl = "{db_url}"\n'
        f'[smtp]\ntransport = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        f"rate_per_second = 0.0\ntimeout_seconds = 30.0\n"
        f"[dispatch]\nlease_seconds = {lease_seconds}\nbatch_size = 20\n",
        encoding="utf-8",
    )
    return path


pytestmark = pytest.mark.slow  # real worker processes, killed and restarted

_STARTED: list[subprocess.Popen] = []


def start_worker(config: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MAILMAG_SECRET_KEY": SECRET}
    process = subprocess.Popen(
        mailmag_command("--config", str(config), "worker", *args),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def _reap_workers() -> Iterator[None]:
    """No worker outlives its test, whatever the test's outcome."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture
def setup(tmp_path, db_url, smtp_server):  # type: ignore[no-untyped-def]
    path = write_config(tmp_path / "mailmag.toml", db_url, smtp_server.port)
    services = Services(load_config(path, env={"MAILMAG_SECRET_KEY": SECRET}))
    db.init_db(services.engine)
    yield path, services
    services.close()


def states(services: Services) -> dict[str, int]:
    with services.session() as session:
        return {s: n for s, n in vars(outbox.counts(session, 1)).items()}


def finish(config: Path, services: Services) -> None:
    """A fresh worker after the dead one's leases expired drains the queue."""
    time.sleep(1.1)  # lease_seconds = 1 in write_config
    done = subprocess.run(
        mailmag_command("--config", str(config), "worker", "--once"),
        env={**os.environ, "MAILMAG_SECRET_KEY": SECRET}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("stage", ["ehlo", "data_end"])
def test_worker_killed_after_claim_or_during_data_loses_nobody(setup, smtp_server, stage):
    config, services = setup
    prepare_send(services, 5)
    smtp_server.stall(stage)
    worker = start_worker(config, "--once", "--concurrency", "1")
    wait_for(lambda: states(services)["sending"] == 5)
    assert smtp_server.stalled.wait(30)  # the worker is inside the stalled stage: kill it there
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    smtp_server.clear_faults()
    finish(config, services)
    final = states(services)
    assert (final["sent"], final["queued"], final["sending"]) == (5, 0, 0)
    assert sorted(smtp_server.recipients()) == [f"user{i}@example.jp" for i in range(5)]
    with services.session() as session:
        # Only the row that may have been in flight (the first of the batch) counts toward giving up,
        # and its record says it may have gone twice, though its second send was a plain 250.
        assert sorted(session.scalars(select(Delivery.lease_expiries))) == [0, 0, 0, 0, 1]
        charged = session.scalar(select(Delivery.last_reply).where(Delivery.lease_expiries == 1))
        assert charged.startswith("ambiguous before; 250 ")
    status = subprocess.run(mailmag_command("--config", str(config), "issues", "status", "1"),
                            env={**os.environ, "MAILMAG_SECRET_KEY": SECRET}, capture_output=True, text=True)
    assert "may have arrived more than once: 1 " in status.stdout, status.stdout + status.stderr


def test_a_worker_once_after_a_killed_one_says_what_the_dead_one_holds(tmp_path, db_url, smtp_server):
    """`worker --once` right after a worker was killed: the dead one's rows are leased until its
    lease passes; the new run must say so, not just "sent 0" as if the list were done."""
    config = write_config(tmp_path / "m.toml", db_url, smtp_server.port, lease_seconds=600)
    services = Services(load_config(config, env={"MAILMAG_SECRET_KEY": SECRET}))
    db.init_db(services.engine)
    try:
        prepare_send(services, 5)
        smtp_server.stall("ehlo")
        worker = start_worker(config, "--once", "--concurrency", "1")
        wait_for(lambda: states(services)["sending"] == 5)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        smtp_server.clear_faults()
        again = start_worker(config, "--once")
        out, err = again.communicate(timeout=60)
        assert again.returncode == 0, err
        assert out.strip() == "sent 0, failed 0, deferred 0"
        note = (r"^note: 5 messages are held by another worker, or by one that stopped without handing "
                r"them back: they return to the queue by \d{4}-\d\d-\d\d \d\d:\d\d")
        assert re.search(note, err, re.M)
        assert states(services)["sending"] == 5  # nothing taken from a worker that may be alive
    finally:
        services.close()


@contextmanager
def result_writes_blocked(db_url: str) -> Iterator[Callable[[], bool]]:
    """Hold a lock that makes the worker's result commit wait (the window after the 250).

    Yields `waiting()`: True once the worker is seen waiting on the lock. PostgreSQL shows it
    (pg_blocking_pids); SQLite's busy wait cannot be seen from outside, so there it is True at
    once and the test checks afterwards that no result was written.
    """
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield lambda: True
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import psycopg

    schema = db_url.rpartition("%3D")[2]
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname=test options=-csearch_path={schema}") as conn:
        conn.execute("SELECT id FROM deliveries FOR UPDATE")
        holder = conn.info.backend_pid

        def waiting() -> bool:
            with psycopg.connect("host=127.0.0.1 user=postgres dbname=test") as probe:
                query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
                row = probe.execute(query, (holder,)).fetchone()
                return bool(row and row[0])

        yield waiting
        # A killed client's backend would still run its waiting UPDATE once the lock is free
        # (in autocommit that commits it): end that backend too, as a crashed machine would, and
        # wait until it has ended (the timeout argument), or a loaded server may let it take
        # the freed lock and commit before it sees the signal.
        conn.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                     " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))")
        conn.rollback()


def test_worker_killed_after_the_250_before_the_commit_resends_only_that_message(
    setup, smtp_server, db_url
):
    """The documented window: the relay has the message, our row does not say so yet."""
    config, services = setup
    prepare_send(services, 4)
    # The server holds its 250 for the first message until the test has blocked result writes.
    stored, proceed = threading.Event(), threading.Event()
    original_store = smtp_server._store

    def store_then_wait(*args):  # type: ignore[no-untyped-def]
        number = original_store(*args)
        if number == 1:
            stored.set()
            proceed.wait(30)
        return number

    smtp_server._store = store_then_wait
    worker = start_worker(config, "--once", "--concurrency", "1")
    assert stored.wait(30)
    with result_writes_blocked(db_url) as waiting:
        proceed.set()  # the 250 goes out; the worker's commit of "sent" now waits on the lock
        wait_for(waiting)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert states(services)["sent"] == 0  # the relay has message 1, our rows do not say so: the window
    finish(config, services)
    final = states(services)
    assert (final["sent"], final["queued"], final["sending"]) == (4, 0, 0)
    recipients = smtp_server.recipients()
    # Exactly one message went twice: the one whose 250 arrived but whose result was lost.
    assert recipients.count("user0@example.jp") == 2
    assert sorted(set(recipients)) == [f"user{i}@example.jp" for i in range(4)]
    assert len(recipients) == 5


def test_two_workers_share_one_queue_without_a_duplicate(tmp_path, pg_url, smtp_server):
    config = write_config(tmp_path / "mailmag.toml", pg_url, smtp_server.port, lease_seconds=300)
    # 20 messages a second each: alone, one worker needs 6 s for the 120, so both are surely at it.
    config.write_text(config.read_text().replace("rate_per_second = 0.0", "rate_per_second = 20.0"))
    services = Services(load_config(config, env={"MAILMAG_SECRET_KEY": SECRET}))
    db.init_db(services.engine)
    try:
        prepare_send(services, 120)
        workers = [start_worker(config, "--once", "--concurrency", "2") for _ in range(2)]
        outputs = [w.communicate(timeout=120) for w in workers]
        assert all(w.returncode == 0 for w in workers), outputs
        recipients = smtp_server.recipients()
        assert len(recipients) == len(set(recipients)) == 120
        assert states(services)["sent"] == 120
        # Both processes did part of the work: the race this test is about took place.
        sent_by = [int(out.split()[1].rstrip(",")) for out, _ in outputs]
        assert sum(sent_by) == 120 and min(sent_by) > 0, sent_by
    finally:
        services.close()


def test_sigterm_finishes_the_message_in_flight_and_hands_the_rest_back(setup, smtp_server):
    """A clean stop: nothing stays leased, nothing is lost, the worker exits 0."""
    config, services = setup
    text = config.read_text().replace("rate_per_second = 0.0", "rate_per_second = 1.0")
    config.write_text(text)
    prepare_send(services, 5)
    worker = start_worker(config, "--concurrency", "1")  # not --once: it would wait for more
    wait_for(lambda: len(smtp_server.messages) >= 1)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "stopping (SIGTERM)" in err
    final = states(services)
    assert final["sending"] == 0
    assert final["sent"] == len(smtp_server.messages) >= 1
    assert final["sent"] + final["queued"] == 5
    assert out.strip() == f"sent {final['sent']}, failed 0, deferred 0"
    with services.session() as session:
        # Handed back, not counted as an attempt: the next worker starts them afresh.
        queued = session.scalars(select(Delivery.attempts).where(Delivery.status == "queued")).all()
        assert set(queued) <= {0}


# --- `worker --processes N`: several sending processes under one worker --------------------


def _boundaries(smtp_server) -> set[bytes]:  # type: ignore[no-untyped-def]
    """The MIME boundaries of the received mail: each sending process prepares its own skeleton,
    with a boundary of its own, so their number is the number of processes that sent."""
    return {re.search(rb'boundary="([^"]+)"', m.data).group(1) for m in smtp_server.messages}  # type: ignore[union-attr]


def _children(worker: subprocess.Popen) -> list[int]:
    """The pids of the worker's sending processes (Linux's /proc/PID/task/TID/children)."""
    task = Path(f"/proc/{worker.pid}/task")
    return [int(pid) for tid in task.iterdir() for pid in (tid / "children").read_text().split()]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status == "Z"  # ended, waiting to be reaped


def _limited(config: Path, per_second: float) -> None:
    config.write_text(config.read_text().replace("rate_per_second = 0.0", f"rate_per_second = {per_second}"))


def test_two_sending_processes_send_every_message_once(setup, smtp_server):
    config, services = setup
    _limited(config, 30.0)  # 15 a second each (the rate is shared out): both are surely at it
    prepare_send(services, 60)
    worker = start_worker(config, "--once", "--processes", "2", "--concurrency", "2")
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert out.strip() == "sent 60, failed 0, deferred 0"  # the processes' counts, summed
    recipients = smtp_server.recipients()
    assert sorted(recipients) == sorted(f"user{i}@example.jp" for i in range(60))
    assert states(services)["sent"] == 60
    assert len(_boundaries(smtp_server)) == 2  # two processes sent, not one


def _two_sending(setup, smtp_server):  # type: ignore[no-untyped-def]
    """A worker of two processes (not --once) sending 20 messages at 2 a second, both at it."""
    config, services = setup
    _limited(config, 2.0)
    prepare_send(services, 20)
    worker = start_worker(config, "--processes", "2", "--concurrency", "2")
    wait_for(lambda: len(smtp_server.messages) >= 2)
    return config, services, worker


def test_sigterm_stops_every_sending_process_and_hands_their_rows_back(setup, smtp_server):
    _config, services, worker = _two_sending(setup, smtp_server)
    children = _children(worker)
    assert len(children) == 2
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert all(_gone(pid) for pid in children)
    final = states(services)
    assert final["sending"] == 0  # nothing left leased: the next worker starts at once
    assert final["sent"] == len(smtp_server.messages) >= 2
    assert final["sent"] + final["queued"] == 20
    assert out.strip() == f"sent {final['sent']}, failed 0, deferred 0"


def test_a_worker_killed_outright_takes_its_sending_processes_with_it(setup, smtp_server):
    """kill -9 of the worker: its processes must not go on sending unseen; they stop as on
    SIGTERM (finishing the message in flight) and hand their rows back."""
    _config, services, worker = _two_sending(setup, smtp_server)
    children = _children(worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_for(lambda: all(_gone(pid) for pid in children), timeout=30)
    _out, err = worker.communicate(timeout=30)  # the processes wrote here too
    assert "Traceback" not in err  # a report nobody reads is no crash
    sent_then = len(smtp_server.messages)
    time.sleep(1.5)  # a process still sending would add to the count at 1 a second
    assert len(smtp_server.messages) == sent_then
    final = states(services)
    assert final["sending"] == 0
    assert final["sent"] == sent_then and final["sent"] + final["queued"] == 20


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_stopped_worker_waits_for_its_processes_without_spinning(setup, smtp_server):
    """After SIGTERM the worker waits for its processes to finish their messages in flight (here
    a relay that takes 4 s to answer the final dot); meanwhile it must sleep, not use a core."""
    config, services = setup
    prepare_send(services, 6)
    smtp_server.delay("data_end", 4.0, times=2)  # each process's first message
    worker = start_worker(config, "--processes", "2", "--concurrency", "2")
    wait_for(lambda: states(services)["sending"] >= 2)
    time.sleep(0.5)  # both are inside the delayed final dot
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    before = _cpu_seconds(worker.pid)
    time.sleep(2.0)
    assert _cpu_seconds(worker.pid) - before < 0.5  # a loop that spins takes the whole 2 s
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    final = states(services)
    assert final["sending"] == 0 and final["sent"] + final["queued"] == 6
    assert out.strip() == f"sent {final['sent']}, failed 0, deferred 0"


# A stop that reaches the worker while it starts its processes: the Python script below is the
# worker's own sequence (its signal handler installed, then run_processes) with the stop already
# set, so the processes are told to stop while they are still being started.
_STOPPED_WHILE_STARTING = """
import signal, sys, threading
from mailmag.config import load_config
from mailmag.scheduling.processes import run_processes
stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda _signum, _frame: stop.set())  # what the worker installs: a fork inherits it
stop.set()
stats = run_processes(load_config(sys.argv[1]), 2, 2, once=False, stop=stop)
print(stats.sent)
"""


def test_a_stop_while_the_processes_start_reaches_every_one(setup):
    """An empty queue and no --once: a process that missed the stop would wait for mail forever
    (and the worker with it)."""
    config, _services = setup
    for _ in range(3):  # the window is a few milliseconds after each fork
        done = subprocess.run([sys.executable, "-c", _STOPPED_WHILE_STARTING, str(config)],
                              env={**os.environ, "MAILMAG_SECRET_KEY": SECRET},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "0"


def test_a_sending_process_killed_outright_stops_the_worker(setup, smtp_server):
    """kill -9 (the OOM killer) of one sending process: the worker must not go on at half its
    strength unseen; the others stop, hand their rows back, and the worker says why and fails
    (so its service manager restarts it)."""
    config, services, worker = _two_sending(setup, smtp_server)
    victim, other = _children(worker)
    os.kill(victim, signal.SIGKILL)
    _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 1
    assert err.strip().splitlines()[-1].startswith("Error: a sending process ended without a report")
    assert _gone(other)
    time.sleep(1.1)  # the killed process's lease (1 s) passes
    final = states(services)
    # the killed process's one connection may have had its message accepted, unrecorded (README)
    assert final["sent"] <= len(smtp_server.messages) <= final["sent"] + 1
    assert final["sent"] + final["queued"] + final["sending"] == 20
    finish(config, services)
    received = smtp_server.recipients()
    assert set(received) == {f"user{i}@example.jp" for i in range(20)} and len(received) <= 21


def test_a_sending_process_stopped_alone_stops_the_worker_with_its_reason(setup, smtp_server):
    """SIGTERM to one sending process (the wrong pid; a tool that signals every mailmag process it
    finds, one by one): it stops cleanly, and the others must stop too. The worker was not asked to
    stop, though: it says which process stopped and fails, rather than end with 0, half-sent."""
    _config, services, worker = _two_sending(setup, smtp_server)
    children = _children(worker)
    names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in children}
    assert sorted(names.values()) == ["mailmag-send-1", "mailmag-send-2"]  # as `ps -o pid,comm` shows them
    victim = children[0]
    os.kill(victim, signal.SIGTERM)
    _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 1
    last = err.strip().splitlines()[-1]
    number = names[victim].rsplit("-", 1)[1]
    assert last.startswith(f"Error: sending process {number} of 2 (pid {victim}) stopped on its own"), err
    assert f"to stop mailmag, signal pid {worker.pid}" in last
    assert all(_gone(pid) for pid in children)
    final = states(services)
    assert final["sending"] == 0  # both stopped cleanly: every row they held is back in the queue
    assert final["sent"] == len(smtp_server.messages) and final["sent"] + final["queued"] == 20
    assert final["queued"] > 0  # half-sent: what exit status 0 used to hide


def test_a_relay_refusal_in_one_process_stops_them_all(setup, smtp_server):
    """"Relaying denied" stops one dispatcher with an error; with several processes the others
    must stop as well (as one process's threads all do), not go on sending without the worker
    saying anything."""
    _config, services, worker = _two_sending(setup, smtp_server)
    children = _children(worker)
    smtp_server.fail_next("rcpt", 554, "5.7.1 Relay access denied", times=1)
    _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 1
    assert len(err.strip().splitlines()) == 1 and "the relay refuses to relay our mail" in err
    assert err.strip().endswith("start delivering again (`mailmag worker`, or `mailmag run`)")
    assert all(_gone(pid) for pid in children)
    final = states(services)
    assert final["sending"] == 0 and final["failed"] == 0  # nobody marked failed for the relay's rule
    assert final["sent"] == len(smtp_server.messages) and final["sent"] + final["queued"] == 20


def test_a_configuration_error_is_the_same_one_line_with_processes(setup, smtp_server):
    config, services = setup
    prepare_send(services, 3)
    env = {**os.environ, "MAILMAG_SECRET_KEY": "too-short"}
    lines = []
    for args in ([], ["--processes", "2"]):
        done = subprocess.run(mailmag_command("--config", str(config), "worker", "--once", *args),
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        lines.append(done.stderr.strip().splitlines())
    assert len(lines[0]) == 1 and lines[0][0].startswith("Error: MAILMAG_SECRET_KEY has only 9 characters")
    assert lines[1] == lines[0]
    assert states(services)["queued"] == 3 and not smtp_server.messages


def test_processes_keep_one_hourly_limit_between_them(setup, smtp_server):
    """[smtp] rate_per_hour is the relay's limit for the whole worker, however many processes
    send: 5 an hour means 5, and a second run in the same hour sends none."""
    config, services = setup
    hourly = "rate_per_second = 0.0\nrate_per_hour = 5"
    config.write_text(config.read_text().replace("rate_per_second = 0.0", hourly))
    prepare_send(services, 12)
    for sent in (5, 0):
        worker = start_worker(config, "--once", "--processes", "2", "--concurrency", "2")
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert out.strip() == f"sent {sent}, failed 0, deferred 0"
        assert "[smtp] rate_per_hour = 5 lets the next message go in about" in err
    assert len(smtp_server.messages) == 5
    assert states(services)["queued"] == 7 and states(services)["sending"] == 0


def test_a_worker_killed_while_it_waits_out_the_hourly_limit_is_charged_nothing(setup, smtp_server):
    """Two an hour: the worker sends two and waits for the hour with the rest handed back, so a
    kill -9 then leaves no lease to expire. (Each expiry counts toward giving the row up as
    `dead`, "ambiguous", as if a worker had died with it on the wire: it never went.)"""
    config, services = setup
    hourly = "rate_per_second = 0.0\nrate_per_hour = 2"
    config.write_text(config.read_text().replace("rate_per_second = 0.0", hourly))
    prepare_send(services, 5)
    worker = start_worker(config, "--concurrency", "1")  # not --once: it would wait out the hour
    wait_for(lambda: states(services)["sent"] == 2 and states(services)["queued"] == 3)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(1.1)  # lease_seconds = 1: any lease it held has passed
    with services.session() as session:
        assert outbox.expire_leases(session, utcnow(), max_expiries=1, max_copies=1) == 0
        session.commit()
        assert sorted(session.scalars(select(Delivery.lease_expiries))) == [0] * 5
    final = states(services)
    assert (final["sent"], final["queued"], final["sending"], final["dead"]) == (2, 3, 0, 0)
    assert len(smtp_server.messages) == 2


def test_workers_killed_while_they_wait_for_per_second_turns_charge_nothing(setup, smtp_server):
    """One message a second over four connections: the threads spend the second waiting for a turn,
    with nothing claimed. Three kill -9s in such waits leave every row to be sent once, none given
    up (the attack's run: five rows that never went were `dead`, "may have arrived more than once")."""
    config, services = setup
    config.write_text(config.read_text().replace("rate_per_second = 0.0", "rate_per_second = 1.0"))
    prepare_send(services, 8)
    for _ in range(3):
        before = len(smtp_server.messages)
        worker = start_worker(config, "--concurrency", "4")
        wait_for(lambda before=before: len(smtp_server.messages) > before)
        time.sleep(0.3)  # the next turn is ~0.7 s away: every thread waits for it
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        time.sleep(1.1)  # lease_seconds = 1: whatever it held has expired
    finish(config, services)
    final = states(services)
    assert (final["sent"], final["dead"], final["queued"]) == (8, 0, 0)
    assert sorted(smtp_server.recipients()) == [f"user{i}@example.jp" for i in range(8)]
    with services.session() as session:
        assert list(session.scalars(select(Delivery.lease_expiries))) == [0] * 8


def _held_back_once(setup, smtp_server, limits: str, queued: int, sent: int, note: str) -> None:  # type: ignore[no-untyped-def]
    """`worker --once --processes 2` under `limits`: `sent` go, the rest waits, and it says so."""
    config, services = setup
    config.write_text(config.read_text().replace("rate_per_second = 0.0", limits))
    prepare_send(services, queued)
    worker = start_worker(config, "--once", "--processes", "2", "--concurrency", "2")
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert out.strip() == f"sent {sent}, failed 0, deferred 0"
    assert note in err
    assert len(smtp_server.messages) == sent
    final = states(services)
    assert final["queued"] == queued - sent and final["sending"] == 0


def test_processes_keep_one_per_second_limit_and_quote_it(setup, smtp_server):
    """One message every 100 s between two processes: the first goes, the next would wait too
    long for --once, and the worker quotes the limit as configured."""
    _held_back_once(setup, smtp_server, "rate_per_second = 0.01", queued=4, sent=1,
                    note="[smtp] rate_per_second = 0.01 lets the next message go in about 2 min")


def test_each_sending_process_names_itself_in_what_it_logs(setup, smtp_server):
    """`worker --processes 2`: a warning from one of the processes said "delivery 7: connection
    lost after the final dot", and nobody could tell which process (and so which relay
    connections) it came from."""
    config, services = setup
    prepare_send(services, 6)
    smtp_server.drop("after_data", address="user3@example.jp")
    worker = start_worker(config, "--once", "--processes", "2", "--concurrency", "2")
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert out.strip() == "sent 5, failed 0, deferred 1 (1 after the final dot: may arrive twice)"
    lost = [line for line in err.splitlines() if "connection lost after the final dot" in line]
    assert len(lost) == 1
    assert re.match(r"mailmag-send-[12]: delivery \d+: connection lost", lost[0]), lost[0]


def test_the_progress_bar_of_several_processes_ends_at_every_message(setup, smtp_server):
    """On a terminal `worker --once` shows a bar; with --processes it adds up the processes' counts."""
    config, services = setup
    prepare_send(services, 30)
    leader, follower = pty.openpty()
    worker = subprocess.Popen(
        mailmag_command("--config", str(config), "worker", "--once", "--processes", "2",
                        "--concurrency", "2"),
        env={**os.environ, "MAILMAG_SECRET_KEY": SECRET}, stdout=subprocess.PIPE, stderr=follower, text=True)
    _STARTED.append(worker)
    os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the worker has closed the terminal
        while chunk := os.read(leader, 4096):
            shown += chunk
    os.close(leader)
    assert worker.wait(timeout=60) == 0
    assert worker.stdout is not None and worker.stdout.read().strip() == "sent 30, failed 0, deferred 0"
    last = shown.decode().replace("\r", "\n").strip().splitlines()[-1]
    assert "sending" in last and "100%" in last


def test_once_holds_back_when_another_process_fills_the_hour_during_the_wait(setup, smtp_server):
    """One message every 5 s, two an hour: both processes wait on the per-second limit; the one
    that gets the second turn fills the hour, and the other, already waiting, must then hold
    back as --once does, not sleep out the hour (the attack's worker hung until killed)."""
    _held_back_once(setup, smtp_server, "rate_per_second = 0.2\nrate_per_hour = 2", queued=6, sent=2,
                    note="[smtp] rate_per_hour = 2 lets the next message go in about 60 min")


def test_a_relay_that_takes_one_connection_gets_one_from_the_whole_worker(setup, smtp_server):
    """A relay that says 421 to a second connection: each 421 takes a connection away from the
    worker as a whole, down to one, and one more is tried about once per throttle_seconds. Each
    process keeping its own last connection asked it ~4 times as often (70–82 refusals, not 17–22)."""
    config, services = setup
    config.write_text(config.read_text().replace(
        "rate_per_second = 0.0", "rate_per_second = 20.0\nthrottle_seconds = 0.3"))
    smtp_server.most_sessions = 1
    prepare_send(services, 60)
    started = time.monotonic()
    worker = start_worker(config, "--once", "--processes", "6", "--concurrency", "6")
    out, err = worker.communicate(timeout=120)
    seconds = time.monotonic() - started
    assert worker.returncode == 0, err
    assert out.strip() == "sent 60, failed 0, deferred 0"  # a refused session holds nothing back
    assert states(services)["sent"] == 60 and len(smtp_server.messages) == 60
    # five turned away as the six start, then about one try per throttle_seconds
    assert smtp_server.refused_sessions <= 5 + 1.5 * seconds / 0.3, (smtp_server.refused_sessions, seconds)
