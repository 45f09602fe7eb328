"""Several workers on one queue: 1, 2 and 4 `mailmag worker --once` processes on PostgreSQL.

    .venv/bin/python benchmarks/workers.py                   # 20 000 subscribers, 1/2/4 workers
    .venv/bin/python benchmarks/workers.py -n 5000 --workers 1,2

For each worker count: a fresh PostgreSQL schema, N subscribers, the ~30 KB issue enqueued,
then W real `mailmag worker --once --concurrency K` processes started together on the same
queue (claims use SELECT … FOR UPDATE SKIP LOCKED). Reported: wall time from start to the
last exit (process start-up included), throughput between the first and the last `sent_at`,
how the messages were shared between the workers, and the proof that nobody got the issue
twice: the sink received exactly N messages, every delivery is `sent`, and each was claimed
exactly once (attempts = 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common


def prepare(db_url: str, size: int) -> None:
    from mailmag.content import issues

    services = common.open_services(common.make_config(db_url), init=True)
    common.add_subscribers(services, size)
    common.compose_issue(services)
    with services.session() as session:
        issues.start_sending(session, services.config, issues.get(session, 1))
    services.close()


def outbox_proof(db_url: str) -> dict[str, Any]:
    """What the outbox says: rows per status, rows claimed more than once, the sent_at span."""
    from sqlalchemy import func, select

    from mailmag.models import Delivery

    services = common.open_services(common.make_config(db_url))
    with services.session() as session:
        rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
        statuses = dict(rows)
        claimed_twice = session.scalar(select(func.count()).where(Delivery.attempts != 1))
        first, last = session.execute(select(func.min(Delivery.sent_at), func.max(Delivery.sent_at))).one()
    services.close()
    return {"statuses": statuses, "claimed_twice": claimed_twice, "span": (last - first).total_seconds()}


def run(args: argparse.Namespace, sink: common.Sink, workers: int, folder: Path) -> dict[str, Any]:
    with common.temp_database("postgresql") as db_url:
        common.in_fresh_process(prepare, db_url, args.subscribers)
        config = common.make_config(db_url, sink.port, concurrency=args.concurrency,
                                    batch_size=args.batch_size)
        path = common.config_file(folder / f"workers-{workers}.toml", config)
        env = {**os.environ, "MAILMAG_SECRET_KEY": common.SECRET, "PYTHONPATH": str(common.ROOT)}
        before = sink.messages()
        started = time.perf_counter()
        processes = [
            subprocess.Popen([sys.executable, "-m", "mailmag", "--config", str(path), "worker", "--once"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(workers)
        ]
        outputs = [process.communicate() for process in processes]
        wall = time.perf_counter() - started
        failed = [(p.returncode, e) for p, (_out, e) in zip(processes, outputs, strict=True) if p.returncode]
        if failed:
            raise SystemExit(f"a worker failed: {failed[0]}")
        shares = [int(re.search(r"sent (\d+)", out).group(1)) for out, _err in outputs]
        received = common.wait_for_sink(sink, before + args.subscribers) - before
        proof = outbox_proof(db_url)
    n = args.subscribers
    ok = received == n and sum(shares) == n and proof["statuses"] == {"sent": n}
    if not ok or proof["claimed_twice"]:
        raise SystemExit(f"{workers} workers: duplicates or losses: sink {received}, "
                         f"workers {shares}, {proof}")
    return {"workers": workers, "wall": wall, "span": proof["span"], "shares": shares, "received": received,
            "statuses": proof["statuses"], "claimed_twice": proof["claimed_twice"], "load": common.load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--subscribers", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("-k", "--concurrency", type=int, default=4, help="SMTP connections per worker")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mailmag-bench-") as folder, common.Sink() as sink:
        print(common.header("benchmarks/workers.py", "postgresql", sink), flush=True)
        print(f"{args.subscribers:,} subscribers, {args.concurrency} connections per worker", flush=True)
        for workers in (int(w) for w in args.workers.split(",")):
            r = run(args, sink, workers, Path(folder))
            results.append(r)
            print(f"{workers} worker{'s' if workers > 1 else ' '}  {args.subscribers / r['wall']:6.0f} msg/s "
                  f"(wall {r['wall']:5.1f} s with start-up)  {args.subscribers / r['span']:6.0f} msg/s "
                  f"(first to last sent_at)  shares {'+'.join(map(str, r['shares']))}  "
                  f"sink got {r['received']:,}, "
                  f"claimed twice: {r['claimed_twice']}  [{r['load']}]", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
