"""Fault benchmark: throughput through a faulty relay, and killed workers, with the proof nothing was lost.

    .venv/bin/python benchmarks/faults.py                    # 5 000 subscribers, SQLite
    .venv/bin/python benchmarks/faults.py --db postgresql    # the same on PostgreSQL
    .venv/bin/python benchmarks/faults.py -n 1000 --kills 4  # a quick run

Three runs, each on a fresh database with N subscribers and the ~30 KB issue, into the
fault-injecting aiosmtpd server of tests/smtp_server.py (one process: its ceiling is the
same for all three):

1. clean: two `mailmag worker --once --concurrency K` processes, no fault;
2. faulty: the same, while the relay drops 2 % of the connections after the final dot
   (before its reply: the worker cannot know whether the relay kept it, so it retries
   under [retry] like any temporary failure) and says 421 to one RCPT in 1 000; [retry]
   backoff 1 s, [smtp] throttle_seconds 1 s;
3. killed: the faults of 2 and two real `mailmag worker` processes (lease 3 s), one of
   them SIGKILLed every --kill-every seconds until --kills kills, each restarted at once;
   then `worker --once` until nothing is left.

Every dispatcher runs as `mailmag worker` processes, so the server has this process to
itself. Throughput is messages over the span between the first and the last `sent_at`. The
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
    from mailmag.delivery import outbox

    services = common.open_services(common.make_config(db_url), init=True)
    common.add_subscribers(services, size)
    common.compose_issue(services)
    with services.session() as session:
        outbox.send_issue(session, issues.get(session, 1), services.config)
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
    env = {**os.environ, "MAILMAG_SECRET_KEY": common.SECRET}
    return subprocess.Popen([sys.executable, "-m", "mailmag", "--config", str(config), "worker", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def killed_run(db_url: str, port: int, concurrency: int, kills: int, every: float, folder: Path) -> int:
    """Two workers, one SIGKILLed every `every` seconds and restarted; then drained. Returns kills done."""
    worker_settings = settings(db_url, port, concurrency, lease_seconds=3)
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
        first, last = session.execute(select(func.min(Delivery.sent_at), func.max(Delivery.sent_at))).one()
        ambiguous = session.scalar(select(func.count()).where(Delivery.last_reply.contains("ambiguous")))
    services.close()
    received = Counter(server.recipients())
    span = (last - first).total_seconds() if first and last else 0.0
    return {"states": states, "received": len(received), "not_received": size - len(received),
            "duplicates": sum(received.values()) - len(received), "ambiguous": ambiguous,
            "throughput": size / span if span else 0.0}


def one_run(kind: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    server = SmtpServer().start()
    try:
        if kind != "clean":
            faulty(server, args.drop_rate, args.rate_421)
        with common.temp_database(args.db) as db_url:
            prepare(db_url, args.n)
            kills = 0
            if kind == "killed":
                kills = killed_run(db_url, server.port, args.concurrency, args.kills, args.kill_every, folder)
            else:
                worker_settings = settings(db_url, server.port, args.concurrency)
                config = write_worker_config(folder / "mailmag.toml", worker_settings)
                drain(config, db_url, server.port, args.concurrency)
            result = proof(db_url, server, args.n)
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
    for kind, r in results.items():
        print(f"{kind:7} {r['throughput']:7.0f} msg/s ({r['throughput'] / clean:4.0%} of clean)  "
              f"kills {r['kills']:2}  states {r['states']}  not received {r['not_received']}  "
              f"ambiguous {r['ambiguous']}  duplicates {r['duplicates']} "
              f"(window: ≤ {r['kills'] * args.concurrency})")
    print(f"{common.load()} at the end")


if __name__ == "__main__":
    main()
