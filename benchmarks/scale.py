"""Scale benchmark: compose, enqueue and claim times, and peak memory, at 10k / 100k / 1M subscribers.

    .venv/bin/python benchmarks/scale.py                          # 10 000, 100 000, 1 000 000 on SQLite
    .venv/bin/python benchmarks/scale.py --db postgresql
    .venv/bin/python benchmarks/scale.py --sizes 10000,100000     # a quicker run
    .venv/bin/python benchmarks/scale.py --send-up-to 1000000     # also drain the 1M list (minutes)

For each size, one process creates the subscribers and composes the issue (set-up, timed only
for information); then a fresh process, whose CPU and peak RSS are reported, does what
mailmag does with the list: compose (Jinja2 + premailer), enqueue (`issues send`: one
INSERT…SELECT), a claim at the head of the queue, in the middle and at the tail (a claim must
cost the same wherever it is: pages by index, never OFFSET), and, for lists up to
--send-up-to, drains the whole queue into a loopback SMTP sink with the real worker.
Peak RSS must not grow with the list.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import common

CLAIM_POINTS = (0.0, 0.5, 0.999)  # how much of the list has been sent when a claim is timed


def set_up(db_url: str, size: int) -> dict[str, Any]:
    services = common.open_services(common.make_config(db_url), init=True)
    seconds = common.add_subscribers(services, size)
    _issue_id, html_bytes = common.compose_issue(services)
    services.close()
    return {"subscribers_seconds": seconds, "html_bytes": html_bytes}


def measure(db_url: str, port: int, size: int, send: bool, concurrency: int) -> dict[str, Any]:
    """Everything mailmag does with the list, in this (fresh) process: CPU and peak RSS are its own."""
    from mailmag.content import issues

    services = common.open_services(common.make_config(db_url, port, concurrency=concurrency))
    result: dict[str, Any] = {"compose_seconds": common.compose_time(services, repeat=3)}
    with services.session() as session:
        issue = issues.get(session, 1)
        started = time.perf_counter()
        result["queued"] = issues.start_sending(session, services.config, issue)
        session.commit()
        result["enqueue_seconds"] = time.perf_counter() - started
        issue_id = issue.id
    result["rss_after_enqueue_mb"] = common.Usage.now().peak_rss_mb
    if send:
        result.update(_drain(services, concurrency))
    else:
        result["claims"] = _time_claims(services, issue_id, size)
    result["cpu"] = common.Usage.now().cpu
    result["peak_rss_mb"] = common.Usage.now().peak_rss_mb
    services.close()
    return result


def _time_claims(services: Any, issue_id: int, size: int) -> list[dict[str, float]]:
    """One batch claimed (and the completion check a worker runs with it) at the head, middle, tail."""
    from sqlalchemy import update

    from mailmag.content import transitions
    from mailmag.delivery import outbox
    from mailmag.models import Delivery, utcnow

    timings = []
    batch = services.config.dispatch.batch_size
    for point in CLAIM_POINTS:
        done = int(size * point)
        with services.engine.begin() as connection:  # set-up: pretend the head of the list was sent
            connection.execute(update(Delivery).where(Delivery.issue_id == issue_id, Delivery.id <= done,
                                                      Delivery.status != "sent").values(status="sent"))
        if services.engine.dialect.name == "postgresql" and done:
            # A real send updates rows one by one over minutes while autovacuum keeps up; one bulk
            # UPDATE of half the table leaves dead index entries that only the next vacuum clears.
            with services.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT")
                connection.exec_driver_sql("VACUUM ANALYZE deliveries")
        started = time.perf_counter()
        with services.session() as session:
            claimed = outbox.claim(session, f"bench-{point}", batch, utcnow(), 300)
        claim_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with services.session() as session:
            transitions.complete_issues(session)
        complete_seconds = time.perf_counter() - started
        if len(claimed) != min(batch, size - done):
            raise SystemExit(f"claim at {point:.1%} returned {len(claimed)} rows")
        timings.append({"point": point, "claim_ms": claim_seconds * 1000,
                        "complete_ms": complete_seconds * 1000})
    return timings


def _drain(services: Any, concurrency: int) -> dict[str, Any]:
    from mailmag.delivery.transports import make_transport
    from mailmag.scheduling.sending import make_dispatcher

    started = time.perf_counter()
    stats = make_dispatcher(services, make_transport(services.config), concurrency=concurrency).run(once=True)
    return {"sent": stats.sent, "send_seconds": time.perf_counter() - started}


def run_size(args: argparse.Namespace, sink: common.Sink, size: int) -> dict[str, Any]:
    with common.temp_database(args.db) as db_url:
        setup = common.in_fresh_process(set_up, db_url, size)
        send = size <= args.send_up_to
        before = sink.messages()
        result = common.in_fresh_process(measure, db_url, sink.port, size, send, args.concurrency)
        if send and (result["sent"] != size or common.wait_for_sink(sink, before + size) - before != size):
            raise SystemExit(f"{size}: sent {result['sent']}, the sink got {sink.messages() - before}")
    return {"size": size, **setup, **result, "load": common.load()}


def line(r: dict[str, Any]) -> str:
    text = (f"{r['size']:>9,}  compose {r['compose_seconds'] * 1000:5.0f} ms  "
            f"enqueue {r['enqueue_seconds']:6.2f} s ({r['size'] / r['enqueue_seconds']:>9,.0f} rows/s)  ")
    if "claims" in r:
        text += "claim " + " / ".join(f"{c['claim_ms']:.1f}" for c in r["claims"]) + " ms  "
        text += "complete " + " / ".join(f"{c['complete_ms']:.1f}" for c in r["claims"]) + " ms  "
    else:
        rate = r["sent"] / r["send_seconds"]
        text += f"sent {r['sent']:,} in {r['send_seconds']:.1f} s ({rate:,.0f} msg/s)  "
    return text + f"peak RSS {r['peak_rss_mb']:.0f} MB  [{r['load']}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--send-up-to", type=int, default=0,
                        help="also drain lists up to this size through the sink (0: time claims only)")
    parser.add_argument("-k", "--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with common.Sink() as sink:
        print(common.header("benchmarks/scale.py", args.db, sink), flush=True)
        points = ", ".join(f"{p:.1%}" for p in CLAIM_POINTS)
        print(f"{'subscribers':>9}  claims and completion checks at {points} sent (one batch of 200 each)",
              flush=True)
        for size in sizes:
            results.append(run_size(args, sink, size))
            print(line(results[-1]), flush=True)
    smallest, largest = results[0], results[-1]
    ratio = largest["peak_rss_mb"] / smallest["peak_rss_mb"]
    print(f"peak RSS at {largest['size']:,} / at {smallest['size']:,} = {ratio:.2f}  (target ≤ 1.5)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
