"""Web benchmark: the public pages of `mailmag serve` with 1 000 sent issues and 4 000 events.

    .venv/bin/python benchmarks/web.py                      # SQLite
    .venv/bin/python benchmarks/web.py --db postgresql
    .venv/bin/python benchmarks/web.py --issues 200 --events 800 --requests 20   # a quicker run

Set-up (not timed): one real issue is composed from the demo items (~30 KB of HTML); 1 000
sent issues carry its rendering, and 4 000 event items spread over three years around today
are spread over them, four to an issue. Then a real `mailmag serve` process is started and:

- the median latency of `/archive/`, `/archive/N`, `/feed.atom` and `/events.ics` is measured
  with one client, request after request (after a warm-up);
- 32 clients request the four pages in turn at once, while one more client times `/healthz`;
- the peak RSS of the `serve` process (VmHWM) is read at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
from sqlalchemy import insert, select

from mailmag.models import Issue, IssueItem, Item, Org, Rendering, utcnow

PATHS = ["/archive/", "/archive/N", "/feed.atom", "/events.ics"]  # N: the middle issue


def set_up(db_url: str, issue_count: int, event_count: int) -> tuple[int, int]:
    """Sent issues with one real rendering each, and events spread over them; returns
    (HTML bytes of a rendering, the middle issue's number)."""
    services = common.open_services(common.make_config(db_url), init=True)
    number, html_bytes = common.compose_issue(services)  # the draft's id: the sent issues are 第2号 on
    today = utcnow().date()
    rng = random.Random(1)
    with services.session() as session:
        rendering = session.scalar(select(Rendering).where(Rendering.lang == "ja"))
        org_id = session.scalar(select(Org.id).limit(1))
        now = utcnow()
        session.execute(insert(Issue), [
            {"number": number + n, "title": f"第{number + n}号", "status": "sent",
             "created_at": now, "rendered_at": now, "sent_at": now - dt.timedelta(days=issue_count - n)}
            for n in range(1, issue_count + 1)])
        ids = {n: i for n, i in session.execute(select(Issue.number, Issue.id).where(Issue.number > number))}
        session.execute(insert(Rendering), [
            {"issue_id": i, "lang": "ja", "subject": f"{rendering.subject} ({n})", "html": rendering.html,
             "text": rendering.text, "rendered_at": now} for n, i in ids.items()])
        session.execute(insert(Item), [
            {"org_id": org_id, "kind": "event", "title": f"産学官連携セミナー {k}", "body": "",
             "date": today + dt.timedelta(days=rng.randint(-730, 365)), "time_text": "13:30〜17:00",
             "venue": "広島国際会議場", "url": f"https://example.jp/events/{k}", "status": "published",
             "channel": "cli", "created_at": now, "updated_at": now} for k in range(event_count)])
        ours = select(Item.id).where(Item.kind == "event", Item.title.like("産学官%"))
        events = list(session.scalars(ours))
        numbers = sorted(ids)
        session.execute(insert(IssueItem), [
            {"issue_id": ids[numbers[k // 4 % len(numbers)]], "item_id": item_id, "position": k % 4}
            for k, item_id in enumerate(events)])
    services.close()
    return html_bytes, number + issue_count // 2


def _get(port: int, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        connection.close()


def medians(port: int, requests: int) -> dict[str, tuple[float, float]]:
    """(first, median) latency in ms of each page, one request at a time. The first request
    builds the listing; later ones are served from the page cache until the data changes."""
    result = {}
    for path in PATHS:
        status, first = _get(port, path)
        assert status == 200, (path, status)
        _get(port, path)
        result[path] = (first * 1000, statistics.median(_get(port, path)[1] for _ in range(requests)) * 1000)
    return result


def concurrent(port: int, clients: int, rounds: int) -> dict[str, float]:
    """`clients` threads each request every page `rounds` times; /healthz is timed meanwhile."""
    latencies: list[float] = []
    health: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def client(offset: int) -> None:
        for n in range(rounds * len(PATHS)):
            path = PATHS[(n + offset) % len(PATHS)]
            status, seconds = _get(port, path)
            latencies.append(seconds)
            if status != 200:
                failures.append(f"{path}: {status}")

    def prober() -> None:
        while not done.is_set():
            health.append(_get(port, "/healthz")[1])
            time.sleep(0.05)

    probe = threading.Thread(target=prober)
    probe.start()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done.set()
    probe.join()
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return {"requests": len(latencies), "seconds": elapsed, "median_ms": statistics.median(latencies) * 1000,
            "healthz_max_ms": max(health) * 1000}


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024


def run(db_url: str, args: argparse.Namespace) -> dict[str, Any]:
    html_bytes, middle = set_up(db_url, args.issues, args.events)
    PATHS[1] = f"/archive/{middle}"
    folder = Path(db_url.removeprefix("sqlite:///")).parent if db_url.startswith("sqlite") else Path("/tmp")
    config = common.config_file(folder / f"web-bench-{time.time_ns()}.toml", common.make_config(db_url))
    process = subprocess.Popen(
        [sys.executable, "-m", "mailmag", "--config", str(config), "serve", "--port", "0"],
        stderr=subprocess.PIPE, text=True, cwd=common.ROOT,
        env={"MAILMAG_SECRET_KEY": common.SECRET, "PATH": "/usr/bin:/bin"},
    )
    try:
        line = process.stderr.readline()
        port = int(re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line).group(1))
        single = medians(port, args.requests)
        load = common.load()
        crowd = concurrent(port, args.clients, args.rounds)
        rss = _peak_rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()
        config.unlink()
    return {"html_bytes": html_bytes, "medians_ms": single, "load": load, "concurrent": crowd,
            "peak_rss_mb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--issues", type=int, default=1000)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="times each client requests every page")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"{common.machine()}; {common.now_text()}; {common.load()}", file=sys.stderr)
    with common.temp_database(args.db) as db_url:
        result = run(db_url, args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.issues} sent issues ({result['html_bytes'] / 1024:.1f} KB of HTML each), "
          f"{args.events} events, {args.db}; {result['load']} before the concurrent run")
    for path, (first, median) in result["medians_ms"].items():
        print(f"  {path:<15} median {median:7.1f} ms (first request {first:.0f} ms)")
    crowd = result["concurrent"]
    print(f"  {args.clients} clients: {crowd['requests']} requests in {crowd['seconds']:.1f} s, median "
          f"{crowd['median_ms']:.0f} ms, slowest /healthz meanwhile {crowd['healthz_max_ms']:.0f} ms")
    print(f"  peak RSS of serve: {result['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
