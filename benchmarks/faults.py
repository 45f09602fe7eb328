"""Fault benchmark: throughput through a faulty relay, and killed workers, with the proof nothing was lost.

    .venv/bin/python benchmarks/faults.py                    # 5 000 subscribers, SQLite
    .venv/bin/python benchmarks/faults.py --db postgresql    # the same on PostgreSQL
    .venv/bin/python benchmarks/faults.py -n 1000 --kills 4  # a quick run

Three runs, each on a fresh database with N subscribers and the ~30 KB issue, into the
fault-injecting aiosmtpd server of tests/smtp_server.py (one process: its ceiling is the
same for all three):

1. clean: two `mailmag worker --concurrency K` processes, no fault;
2. faulty: the same, while the relay drops 2 % of the connections after the final dot
   (before its reply: the worker cannot know whether the relay kept it, so it retries
   under [retry] like any temporary failure) and says 421 to one RCPT in 1 000; [retry]
   backoff 1 s, [smtp] throttle_seconds 1 s;
3. killed: the faults of 2 and two real `mailmag worker` processes (lease 3 s), one of
   them SIGKILLed every --kill-every seconds until --kills kills, each restarted at once.

Every dispatcher runs as `mailmag worker` processes, so the server has this process to
itself; the workers are stopped (SIGTERM) once nothing is pending. Throughput is messages
over the span between the first and the last `sent_at`; it includes the last deferred
messages' [retry] backoff and the worker's poll, so "99 %" is also shown: 99 % of the
messages over the span from the first `sent_at` to the one of the message at 99 %. The
proof: the states of the deliveries (none `dead`, none `failed`), who never received the issue
(nobody), the deliveries marked `ambiguous` (dropped after the final dot at least once: the
relay here keeps nothing it dropped, a real one might), and the duplicates (a message the
relay accepted whose result a killed worker never recorded: at most one per connection per
kill).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common

sys.path.insert(0, str(common.ROOT / "tests"))

from smtp_server import SmtpServer


def faulty(server: SmtpServer, drop_rate: float, rate_421: float, seed: int = 7) -> None:
    """Random faults: a drop before the reply to the final dot, a 421 at RCPT."""
    chance = random.Random(seed)
    original = server._fault

    async def fault(smtp, stage, address=None):  # type: ignore[no-untyped-def]
        if stage == "data_end" and chance.random() < drop_rate:
            server.drop("data_end")
        elif stage == "rcpt" and chance.random() < rate_421:
            server.fail_next("rcpt", 421, "4.7.0 too busy, closing")
        return await original(smtp, stage, address)

    server._fault = fault  # type: ignore[method-assign]


def prepare(db_url: str, size: int) -> None:
    from mailmag.content import issues

    services = common.open_services(common.make_config(db_url), init=True)
    common.add_subscribers(services, size)
    common.compose_issue(services)
    with services.session() as session:
        issues.start_sending(session, services.config, issues.get(session, 1))
    services.close()


def settings(db_url: str, port: int, concurrency: int, lease_seconds: int = 300):  # type: ignore[no-untyped-def]
    from mailmag.config import RetryConfig

    config = common.make_config(db_url, port, concurrency=concurrency, lease_seconds=lease_seconds)
    smtp = config.smtp.__class__(**{**vars(config.smtp), "throttle_seconds": 1.0, "retry_relay_seconds": 1.0})
    return config.replace(smtp=smtp, retry=RetryConfig(backoff_seconds=1, max_backoff_seconds=2))


def drain(config: Path, db_url: str, port: int, concurrency: int) -> None:
    """Two `mailmag worker --once` processes at a time (as in the killed run), until nothing is left."""
    services = common.open_services(settings(db_url, port, concurrency))
    command = [sys.executable, "-m", "mailmag", "--config", str(config), "worker", "--once",
               "--concurrency", str(concurrency)]
    env = {**os.environ, "MAILMAG_SECRET_KEY": common.SECRET}
    try:
        while pending(services):
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            workers = [subprocess.Popen(command, env=env, **quiet) for _ in range(2)]
            for process in workers:
                process.wait(timeout=600)
    finally:
        services.close()


def pending(services) -> int:  # type: ignore[no-untyped-def]
    from mailmag.delivery import outbox

    with services.session() as session:
        return outbox.counts(session, 1).pending


def write_worker_config(path: Path, config) -> Path:  # type: ignore[no-untyped-def]
    common.config_file(path, config)
    with path.open("a", encoding="utf-8") as file:
        file.write("[retry]\nbackoff_seconds = 1\nmax_backoff_seconds = 2\n")
    text = path.read_text(encoding="utf-8").replace(
        "[dispatch]\n", "throttle_seconds = 1.0\nretry_relay_seconds = 1.0\n[dispatch]\n")
    path.write_text(text, encoding="utf-8")
    return path


def worker(config: Path, *args: str) -> subprocess.Popen:
    """A `mailmag worker`; its log goes to worker.log beside the config (a pipe nobody reads
    would block the worker once full)."""
    env = {**os.environ, "MAILMAG_SECRET_KEY": common.SECRET}
    with (config.parent / "worker.log").open("a", encoding="utf-8") as log:
        return subprocess.Popen([sys.executable, "-m", "mailmag", "--config", str(config), "worker", *args],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)


def served_run(db_url: str, port: int, concurrency: int, kills: int, every: float, folder: Path) -> int:
    """Two long-running workers (as deployed), one SIGKILLed every `every` seconds and restarted
    until `kills` kills; stopped once nothing is pending, then drained. Returns kills done.

    Long-running, not `--once`: a `--once` worker exits while deferred messages wait for
    their retry, and starting the next one (seconds on a loaded machine) was measured as
    the relay's faults."""
    worker_settings = settings(db_url, port, concurrency, lease_seconds=3 if kills else 300)
    config = write_worker_config(folder / "mailmag.toml", worker_settings)
    workers = [worker(config, "--concurrency", str(concurrency)) for _ in range(2)]
    services = common.open_services(settings(db_url, port, concurrency))
    done = 0
    try:
        while done < kills and pending(services):
            time.sleep(every)
            victim = workers[done % 2]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            workers[done % 2] = worker(config, "--concurrency", str(concurrency))
            done += 1
        while pending(services):
            time.sleep(0.2)
        for process in workers:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        time.sleep(3.5)  # the killed workers' leases expire
        drain(config, db_url, port, concurrency)
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
        services.close()
    return done


def proof(db_url: str, server: SmtpServer, size: int) -> dict[str, Any]:
    from sqlalchemy import func, select

    from mailmag.models import Delivery

    services = common.open_services(common.make_config(db_url))
    with services.session() as session:
        states = dict(session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all())
        times = sorted(session.scalars(select(Delivery.sent_at).where(Delivery.sent_at.is_not(None))))
        ambiguous = session.scalar(select(func.count()).where(Delivery.last_reply.contains("ambiguous")))
    services.close()
    received = Counter(server.recipients())
    span = (times[-1] - times[0]).total_seconds() if times else 0.0
    most = int(len(times) * 0.99)
    span_99 = (times[most - 1] - times[0]).total_seconds() if most > 1 else 0.0
    return {"states": states, "received": len(received), "not_received": size - len(received),
            "duplicates": sum(received.values()) - len(received), "ambiguous": ambiguous,
            "throughput": size / span if span else 0.0,
            "throughput_99": most / span_99 if span_99 else 0.0}


def one_run(kind: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    server = SmtpServer().start()
    try:
        if kind != "clean":
            faulty(server, args.drop_rate, args.rate_421)
        with common.temp_database(args.db) as db_url:
            prepare(db_url, args.n)
            kills = args.kills if kind == "killed" else 0
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            kills = served_run(db_url, server.port, args.concurrency, kills, args.kill_every, folder)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = proof(db_url, server, args.n)
            # the workers' own CPU (they are this process's children): far steadier than the
            # wall clock on a shared machine, so it tells work from waiting
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            result["worker_cpu_ms_per_message"] = cpu * 1000 / args.n
            result["kills"] = kills
            return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="subscribers (default 5000)")
    parser.add_argument("--db", default="sqlite", help="sqlite or postgresql")
    parser.add_argument("--concurrency", type=int, default=2, help="connections per worker (default 2)")
    parser.add_argument("--drop-rate", type=float, default=0.02)
    parser.add_argument("--rate-421", type=float, default=0.001)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--kill-every", type=float, default=1.5, help="seconds between two kills")
    args = parser.parse_args()
    print(f"{common.machine()}; {common.load()} at start; {common.now_text()}")
    print(f"{args.n} subscribers, {args.db}, {args.concurrency} connections per worker, drops "
          f"{args.drop_rate:.1%}, 421 {args.rate_421:.2%}")
    with tempfile.TemporaryDirectory(prefix="mailmag-faults-") as folder:
        results = {kind: one_run(kind, args, Path(folder)) for kind in ("clean", "faulty", "killed")}
    clean = results["clean"]["throughput"] or 1.0
    clean_99 = results["clean"]["throughput_99"] or 1.0
    for kind, r in results.items():
        print(f"{kind:7} {r['throughput']:7.0f} msg/s ({r['throughput'] / clean:4.0%} of clean; 99 %: "
              f"{r['throughput_99']:4.0f} msg/s, {r['throughput_99'] / clean_99:4.0%}; worker CPU "
              f"{r['worker_cpu_ms_per_message']:.2f} ms/msg)  "
              f"kills {r['kills']:2}  states {r['states']}  not received {r['not_received']}  "
              f"ambiguous {r['ambiguous']}  duplicates {r['duplicates']} "
              f"(window: ≤ {r['kills'] * args.concurrency})")
    print(f"{common.load()} at the end")


if __name__ == "__main__":
    main()
