"""Dispatch benchmark: mailmag's worker against the loopback ceiling and a naive sender, in one run.

    .venv/bin/python benchmarks/dispatch.py                     # 20 000 subscribers, SQLite
    .venv/bin/python benchmarks/dispatch.py --db postgresql     # the same on PostgreSQL
    .venv/bin/python benchmarks/dispatch.py --dkim              # every message DKIM-signed (2048-bit)
    .venv/bin/python benchmarks/dispatch.py -n 2000 --naive 50  # a quick run

Creates N subscribers in a temporary database, composes a ~30 KB Japanese issue from the demo
items, enqueues it and runs `make_dispatcher(concurrency=K).run(once=True)` into a loopback SMTP sink,
with the state of every message committed as in production. In the same run it measures:

- the ceiling: plain smtplib, K threads each on one persistent connection, sending a pre-built
  message of the same size to the same sink (the fastest a Python sender goes on this machine);
- the naive sender: per recipient Jinja2 + premailer + EmailMessage + a new SMTP connection;
- the floor (after mailmag's run; `--no-floor` leaves it out): the raw ceiling's sender with
  each result committed through mailmag's own result write, and nothing else. What it leaves
  of the raw ceiling is the database's own cost; what mailmag reaches of it is mailmag's.

Each of them runs in a fresh process, so CPU time and peak RSS are its own.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

# --- the measured senders, each run in a fresh process ---------------------------------------------


def run_mailmag(db_url: str, port: int, concurrency: int, batch_size: int, dkim_key: str,
                processes: int = 1) -> dict[str, Any]:
    """mailmag's own worker, as `mailmag worker --once [--processes N]` runs it, timed from first
    claim to last commit (with N > 1: from the first process's start to the last one's end,
    their CPU and peak RSS included)."""
    from mailmag.delivery.transports import make_transport
    from mailmag.scheduling.processes import run_processes
    from mailmag.scheduling.sending import make_dispatcher

    config = common.make_config(db_url, port, concurrency=concurrency, batch_size=batch_size,
                                dkim_key=dkim_key)
    before, jiffies = common.Usage.now(children=True), common.cpu_jiffies()
    if processes > 1:
        started = time.perf_counter()
        stats = run_processes(config, processes, concurrency, once=True, stop=threading.Event())
    else:
        services = common.open_services(config)
        dispatcher = make_dispatcher(services, make_transport(config), concurrency=concurrency)
        started = time.perf_counter()
        stats = dispatcher.run(once=True)
        services.close()
    seconds = time.perf_counter() - started
    after, steal = common.Usage.now(children=True), common.steal_share(jiffies, common.cpu_jiffies())
    return {"sent": stats.sent, "failed": stats.failed, "deferred": stats.deferred, "seconds": seconds,
            "cpu": after.cpu - before.cpu, "peak_rss_mb": after.peak_rss_mb, "processes": processes,
            "steal": steal}


def run_ceiling(port: int, message: bytes, count: int, threads: int, raw: bool = False) -> dict[str, Any]:
    """Plain smtplib: `threads` threads, one persistent connection each, one pre-built message.

    `raw`: the same commands without `sendmail`'s per-message work (its dot-stuffing regex
    over the whole message): MAIL, RCPT, DATA and the pre-built bytes, stuffed once. Nothing
    is done per message at all, so this is the loopback's real ceiling for a Python sender.
    """
    per_thread = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    content = stuffed(message)

    def send(smtp: smtplib.SMTP, recipient: str) -> None:
        if not raw:
            smtp.sendmail("bounces@example.jp", [recipient], message)
            return
        envelope(smtp, recipient)
        content_sent(smtp, content)

    def blast(thread: int, n: int) -> None:
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.ehlo()
            for i in range(n):
                send(smtp, f"r{thread}.{i}@example.jp")

    return in_threads([functools.partial(blast, i, n) for i, n in enumerate(per_thread)], count)


def stuffed(message: bytes) -> bytes:
    """The message as it goes after DATA: dot-stuffed, with the final dot."""
    return re.sub(rb"(?m)^\.", b"..", message) + b".\r\n"


def envelope(smtp: smtplib.SMTP, recipient: str) -> None:
    """MAIL, RCPT and DATA, one command a round trip, each reply checked."""
    for verb, arg, ok in (("mail", "FROM:<bounces@example.jp>", 250), ("rcpt", f"TO:<{recipient}>", 250),
                          ("data", "", 354)):
        code, reply = smtp.docmd(verb, arg)
        if code != ok:
            raise smtplib.SMTPResponseException(code, reply)


def content_sent(smtp: smtplib.SMTP, content: bytes) -> str:
    """The stuffed content and the relay's 250, as `code text`."""
    smtp.send(content)
    code, reply = smtp.getreply()
    if code != 250:
        raise smtplib.SMTPResponseException(code, reply)
    return f"{code} {reply.decode()}"


def in_threads(senders: list[Callable[[], None]], count: int) -> dict[str, Any]:
    """Run each sender in a thread of its own, timed together; the first error is raised."""
    errors: list[BaseException] = []

    def run(sender: Callable[[], None]) -> None:
        try:
            sender()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(sender,)) for sender in senders]
    before, jiffies = common.Usage.now(), common.cpu_jiffies()
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    after, steal = common.Usage.now(), common.steal_share(jiffies, common.cpu_jiffies())
    if errors:
        raise errors[0]
    return measured(count, seconds, before, after, steal)


def reset_for_floor(db_url: str, issue_id: int = 1) -> list[int]:
    """Put the sent rows back under a lease, as a claim leaves them, for run_floor (not measured)."""
    from sqlalchemy import select, text, update

    from mailmag.models import Delivery

    services = common.open_services(common.make_config(db_url))
    with services.engine.begin() as connection:
        connection.execute(update(Delivery).where(Delivery.issue_id == issue_id)
                           .values(status="sending", lease_owner=FLOOR_OWNER))
        ids = list(connection.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id)
                                      .order_by(Delivery.id)))
    if services.engine.dialect.name == "postgresql":  # as fresh as the table mailmag's run began on
        with services.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE deliveries"))
    services.close()
    return ids


FLOOR_OWNER = "floor"


def run_floor(db_url: str, port: int, message: bytes, ids: list[int], threads: int) -> dict[str, Any]:
    """The raw ceiling's sender, plus what the contract asks of every sender: each result
    committed before its connection's next message goes, through mailmag's own result write
    (results.sent_writer: one prepared UPDATE in autocommit, begun at the 250 and awaited
    before the next message's final dot, while the relay reads its content, as the worker
    does). Nothing else is done: no claim, no personalizing. What the database's own cost
    leaves of the raw ceiling, on the same wire (one command a round trip: mailmag, which
    pipelines its envelope, can go past it).
    """
    from mailmag.delivery import results
    from mailmag.models import utcnow

    services = common.open_services(common.make_config(db_url))
    body, end = stuffed(message)[:-3], b".\r\n"

    def blast(share: list[int]) -> None:
        with services.engine.connect() as connection, smtplib.SMTP("127.0.0.1", port) as smtp:
            write = results.sent_writer(connection)
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the dot goes on its own
            smtp.ehlo()
            for delivery_id in share:
                envelope(smtp, f"r{delivery_id}@example.jp")
                smtp.send(body)
                # the previous result, committed while the relay reads this content (as mailmag's is)
                if write.started is not None and not write.finish():
                    raise RuntimeError(f"delivery {write.started} was not written")
                write.start(delivery_id, FLOOR_OWNER, content_sent(smtp, end), utcnow())
            if write.started is not None and not write.finish():
                raise RuntimeError("the last delivery was not written")

    try:
        return in_threads([functools.partial(blast, ids[i::threads]) for i in range(threads)], len(ids))
    finally:
        services.close()


def run_naive(db_url: str, port: int, count: int) -> dict[str, Any]:
    """What most scripts do: render and inline per recipient, build an EmailMessage, connect, send."""
    import datetime as dt
    from email.message import EmailMessage
    from email.utils import formataddr, make_msgid

    from sqlalchemy import select

    from mailmag import links, placeholders
    from mailmag.content import issues, render
    from mailmag.models import Subscriber

    config = common.make_config(db_url, port)
    services = common.open_services(config)
    with services.session() as session:
        issue = issues.get(session, 1)
        spec = render.IssueSpec(1, None, dt.date(2027, 4, 1), [entry.item for entry in issue.entries])
        env = render.make_environment(config.templates_path)
        columns = (Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.link_key)
        recipients = session.execute(select(*columns)
                                     .order_by(Subscriber.id).limit(count)).all()
        before, jiffies = common.Usage.now(), common.cpu_jiffies()
        started = time.perf_counter()
        for subscriber_id, email, name, key in recipients:
            edition = render.render_edition(env, config, spec, "ja")  # Jinja2 (html + text) + premailer
            base = config.mailmag.base_url
            values = {"name": name, "email": email,
                      "unsubscribe_url": links.unsubscribe_url(base, common.SECRET, subscriber_id, key),
                      "preferences_url": links.preferences_url(base, common.SECRET, subscriber_id, key)}
            message = EmailMessage()
            message["From"] = formataddr((config.sender.name, config.sender.from_))
            message["To"] = formataddr((name, email))
            message["Subject"] = edition.subject
            message["Message-ID"] = make_msgid(domain="example.jp")
            message["List-Unsubscribe"] = f"<{values['unsubscribe_url']}>"
            message.set_content(placeholders.substitute(edition.text, values, escape=False))
            html = placeholders.substitute(edition.html, values, escape=True)
            message.add_alternative(html, subtype="html")
            with smtplib.SMTP("127.0.0.1", port) as smtp:
                smtp.send_message(message, from_addr="bounces@example.jp", to_addrs=[email])
        seconds = time.perf_counter() - started
        after, steal = common.Usage.now(), common.steal_share(jiffies, common.cpu_jiffies())
    services.close()
    return measured(count, seconds, before, after, steal)


def run_peer(sink: common.Sink, prepared: dict[str, Any], count: int, folder: Path) -> dict[str, Any]:
    """django-newsletter 1.2.1 (benchmarks/peer_django_newsletter.py, in a venv of its own), same sink.

    Its messages/s are what the sink received in its `submit_newsletter` wall time.
    """
    html = folder / "issue.html"
    html.write_text(prepared["html"], encoding="utf-8")
    script = Path(__file__).with_name("peer_django_newsletter.py")
    before = sink.messages()
    command = [sys.executable, str(script), "--port", str(sink.port), "--html", str(html),
               "--subject", prepared["subject"], "-n", str(count)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"skipped": (done.stderr.strip().splitlines() or ["?"])[-1]}
    if "skipped" not in result:
        result["sent"] = common.wait_for_sink(sink, before + count) - before
    return result


# --- set-up and report ---------------------------------------------------------------------------


def sample_message(services: Any) -> bytes:
    """One personalized message of the issue, as the worker builds it: the ceiling sends its size."""
    from sqlalchemy import select

    from mailmag.delivery import messages
    from mailmag.delivery.dkim import load_dkim
    from mailmag.models import Delivery, Issue, Rendering, Subscriber

    with services.session() as session:
        rendering = session.scalar(select(Rendering).where(Rendering.lang == "ja"))
        number = session.scalar(select(Issue.number).where(Issue.id == rendering.issue_id))
        skeleton = messages.prepare(rendering, number, services.config,
                                    dkim=load_dkim(services.config))
        row = session.execute(select(Delivery.id, Delivery.subscriber_id, Delivery.email, Subscriber.name,
                                     Delivery.message_id).join(Subscriber).limit(1)).one()
    return messages.personalize(skeleton, messages.Recipient(*row), common.SECRET)[1]


def prepare(db_url: str, args: argparse.Namespace, dkim_key: str) -> dict[str, Any]:
    """Subscribers, the issue, its composition time, and the timed enqueue (`issues send`)."""
    from sqlalchemy import select

    from mailmag.content import issues
    from mailmag.models import Rendering

    services = common.open_services(common.make_config(db_url, dkim_key=dkim_key), init=True)
    setup_seconds = common.add_subscribers(services, args.subscribers)
    _issue_id, html_bytes = common.compose_issue(services)
    compose_seconds = common.compose_time(services)
    with services.session() as session:
        issue = issues.get(session, 1)
        started = time.perf_counter()
        queued = issues.start_sending(session, services.config, issue)
        session.commit()
        enqueue_seconds = time.perf_counter() - started
    message = sample_message(services)
    with services.session() as session:
        html, subject = session.execute(select(Rendering.html, Rendering.subject)
                                        .where(Rendering.lang == "ja")).one()
    services.close()
    return {"setup_seconds": setup_seconds, "html_bytes": html_bytes, "compose_seconds": compose_seconds,
            "queued": queued, "enqueue_seconds": enqueue_seconds, "message": message, "html": html,
            "subject": subject}


def verify(db_url: str, expected: int) -> dict[str, int]:
    """Every delivery sent exactly once, per the outbox: status sent and claimed once."""
    from sqlalchemy import func, select

    from mailmag.models import Delivery

    services = common.open_services(common.make_config(db_url))
    with services.session() as session:
        rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
        by_status = dict(rows)
        retried = session.scalar(select(func.count()).select_from(Delivery).where(Delivery.attempts != 1))
    services.close()
    if by_status.get("sent") != expected or retried:
        raise SystemExit(f"the outbox does not show {expected} messages sent once each: {by_status}, "
                         f"{retried} with attempts != 1")
    return by_status


def watched(sink: common.Sink, function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """A phase in a fresh process, with where the whole machine's CPU went meanwhile ("machine")."""
    return common.in_fresh_process(_watched, sink.pids(), function, args)


def _watched(sink_pids: set[int], function: Callable[..., dict[str, Any]], args: tuple) -> dict[str, Any]:
    import mailmag.delivery.transports
    import mailmag.scheduling.processes
    import mailmag.scheduling.sending  # noqa: F401 (imported before the first reading: not the phase's)

    before = common.Machine.now(sink_pids)
    result = function(*args)
    after = common.Machine.now(sink_pids)
    result["machine"] = after.since(before, result["sent"]) if after is not None else None
    return result


def measured(count: int, seconds: float, before: common.Usage, after: common.Usage,
             steal: float | None) -> dict[str, Any]:
    cpu = after.cpu - before.cpu
    return {"sent": count, "seconds": seconds, "cpu": cpu, "peak_rss_mb": after.peak_rss_mb, "steal": steal}


def rate(result: dict[str, Any]) -> float:
    return result["sent"] / result["seconds"]


def cpu_us(result: dict[str, Any]) -> float:
    return result["cpu"] / result["sent"] * 1e6


def steal_text(result: dict[str, Any]) -> str:
    """The phase's stolen share for its line; nothing where /proc/stat could not tell."""
    return "" if result["steal"] is None else f"   steal {result['steal'] * 100:.0f} %"


def steal_warning(mailmag: dict[str, Any], raw_ceiling: dict[str, Any], when: str) -> list[str]:
    """A line when the hypervisor stole much more in one of the two runs the target ratio divides:
    the ratio then measures the machine as much as mailmag."""
    ours, theirs = mailmag["steal"], raw_ceiling["steal"]
    if ours is None or theirs is None or abs(ours - theirs) <= 0.10:
        return []
    return [f"warning: mailmag / raw ceiling compares phases with different stolen time: "
            f"mailmag steal {ours * 100:.0f} %, raw ceiling ({when}) steal {theirs * 100:.0f} %"]


def peer_lines(peer: dict[str, Any] | None, mailmag: dict[str, Any]) -> list[str]:
    if peer is None:
        return []
    if "skipped" in peer:
        return [f"django-newsletter 1.2.1: skipped ({peer['skipped']})"]
    return [f"django-newsletter {peer['version']} (Django {peer['django']}), {peer['sent']} subscriptions "
            f"{rate(peer):6.1f} msg/s   {peer['seconds']:6.2f} s   CPU {cpu_us(peer):5.0f} µs/msg",
            f"mailmag / django-newsletter = {rate(mailmag) / rate(peer):.0f}×   (target ≥ 20×)"]


def floor_lines(floor: dict[str, Any] | None, mailmag: dict[str, Any],
                raw_ceiling: dict[str, Any]) -> list[str]:
    if floor is None:
        return []
    return [f"raw ceiling + each result committed     {rate(floor):8.0f} msg/s   {floor['seconds']:6.2f} s   "
            f"CPU {cpu_us(floor):5.0f} µs/msg{steal_text(floor)}",
            *common.machine_text(floor.get("machine"), "sender"),
            f"  its share of the raw ceiling = {rate(floor) / rate(raw_ceiling):.2f}   "
            f"(the database's cost alone); mailmag / it = {rate(mailmag) / rate(floor):.2f}"]


def naive_lines(naive: dict[str, Any] | None, mailmag: dict[str, Any]) -> list[str]:
    if naive is None:
        return []
    return [f"naive sender, {naive['sent']} recipients       {rate(naive):8.1f} msg/s   "
            f"{naive['seconds']:6.2f} s   CPU {cpu_us(naive):5.0f} µs/msg{steal_text(naive)}",
            f"mailmag / naive = {rate(mailmag) / rate(naive):.0f}×"]


def report(args: argparse.Namespace, sink: common.Sink, prepared: dict[str, Any], mailmag: dict[str, Any],
           ceilings: list[dict[str, Any]], raw: list[dict[str, Any]], naive: dict[str, Any] | None,
           peer: dict[str, Any] | None, header: str, floor: dict[str, Any] | None = None) -> dict[str, Any]:
    ceiling, raw_ceiling = max(ceilings, key=rate), max(raw, key=rate)
    raw_when = ("before", "after")[raw.index(raw_ceiling)]
    k = args.concurrency
    processes = f" in {args.processes} processes" if args.processes > 1 else ""
    raw_target = "≥ 0.5, DKIM-signed" if args.dkim else "≥ 0.7"
    lines = [
        header,
        f"issue: {prepared['html_bytes'] / 1024:.1f} KB HTML, {len(prepared['message']) / 1024:.1f} KB per "
        f"message{' (DKIM-signed, RSA 2048)' if args.dkim else ''}; subscribers: {args.subscribers:,} "
        f"(created in {prepared['setup_seconds']:.1f} s, not measured)",
        f"compose (Jinja2 + premailer, ja + en, best of 5)   {prepared['compose_seconds'] * 1000:8.0f} ms",
        f"enqueue {prepared['queued']:,} recipients (INSERT…SELECT)     "
        f"{prepared['enqueue_seconds']:8.2f} s",
        f"mailmag worker, {k} connections{processes}      {rate(mailmag):8.0f} msg/s   "
        f"{mailmag['seconds']:6.2f} s   "
        f"CPU {cpu_us(mailmag):5.0f} µs/msg   peak RSS {mailmag['peak_rss_mb']:.0f} MB{steal_text(mailmag)}",
        *common.machine_text(mailmag.get("machine"), "mailmag"),
        *(f"ceiling, smtplib × {k} threads ({when})  {rate(c):8.0f} msg/s   {c['seconds']:6.2f} s   "
          f"CPU {cpu_us(c):5.0f} µs/msg   peak RSS {c['peak_rss_mb']:.0f} MB{steal_text(c)}"
          for when, c in zip(("before", "after"), ceilings, strict=False)),
        *(line for when, c in zip(("before", "after"), raw, strict=False) for line in (
            f"raw ceiling, no per-msg work ({when})  {rate(c):8.0f} msg/s   {c['seconds']:6.2f} s   "
            f"CPU {cpu_us(c):5.0f} µs/msg{steal_text(c)}", *common.machine_text(c.get("machine"), "sender"))),
        *floor_lines(floor, mailmag, raw_ceiling),
        *naive_lines(naive, mailmag),
        *peer_lines(peer, mailmag),
        f"mailmag / smtplib sendmail ceiling (faster of the two) = {rate(mailmag) / rate(ceiling):.2f}",
        f"mailmag / raw ceiling (faster of the two) = {rate(mailmag) / rate(raw_ceiling):.2f}   "
        f"(target {raw_target})",
        f"mailmag CPU per message = {cpu_us(mailmag):.0f} µs   "
        f"(target ≤ 300{', unsigned' if args.dkim else ''})",
        *steal_warning(mailmag, raw_ceiling, raw_when),
        f"{common.load()} at the end",
    ]
    print("\n".join(lines), flush=True)
    return {
        "db": args.db, "sink": sink.name, "subscribers": args.subscribers, "concurrency": k,
        "dkim": args.dkim,
        "html_bytes": prepared["html_bytes"], "message_bytes": len(prepared["message"]),
        "compose_seconds": prepared["compose_seconds"], "enqueue_seconds": prepared["enqueue_seconds"],
        "mailmag": mailmag, "ceilings": ceilings, "raw_ceilings": raw, "naive": naive,
        "ratio_ceiling": rate(mailmag) / rate(ceiling),
        "ratio_raw_ceiling": rate(mailmag) / rate(raw_ceiling),
        "ratio_naive": rate(mailmag) / rate(naive) if naive else None,
        "floor": floor, "ratio_floor": rate(mailmag) / rate(floor) if floor else None,
        "peer": peer, "ratio_peer": rate(mailmag) / rate(peer) if peer and "skipped" not in peer else None,
        "report": "\n".join(lines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--subscribers", type=int, default=20_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("-k", "--concurrency", type=int, default=4, help="SMTP connections (threads)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--processes", type=int, default=1,
                        help="mailmag's sending processes (worker --processes), sharing the K connections")
    parser.add_argument("--naive", type=int, default=300,
                        help="recipients for the naive sender (0: leave it out)")
    parser.add_argument("--peer", type=int, default=2000,
                        help="subscriptions for the django-newsletter peer (0: leave it out)")
    parser.add_argument("--dkim", action="store_true", help="sign every message (2048-bit RSA)")
    parser.add_argument("--sink", choices=("smtp-sink", "aiosmtpd"), default="smtp-sink")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the raw ceiling with each result committed (after mailmag's run)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mailmag-bench-") as folder, \
            common.temp_database(args.db) as db_url, common.Sink(args.sink) as sink:
        header = common.header("benchmarks/dispatch.py", args.db, sink)
        print("running…", common.load(), flush=True)
        dkim_key = common.make_dkim_key(Path(folder)) if args.dkim else ""
        prepared = prepare(db_url, args, dkim_key)
        message, k, n = prepared["message"], args.concurrency, prepared["queued"]
        ceilings = [common.in_fresh_process(run_ceiling, sink.port, message, n, k)]
        raw = [watched(sink, run_ceiling, sink.port, message, n, k, True)]
        before = sink.messages()
        mailmag = watched(sink, run_mailmag, db_url, sink.port, k, args.batch_size, dkim_key, args.processes)
        received = common.wait_for_sink(sink, before + n) - before
        ceilings.append(common.in_fresh_process(run_ceiling, sink.port, message, n, k))
        raw.append(watched(sink, run_ceiling, sink.port, message, n, k, True))
        naive = (common.in_fresh_process(run_naive, db_url, sink.port, min(args.naive, n))
                 if args.naive else None)
        peer = run_peer(sink, prepared, args.peer, Path(folder)) if args.peer else None
        verify(db_url, n)
        if received != n:
            raise SystemExit(f"the sink received {received} messages from mailmag, not {n}")
        floor = (watched(sink, run_floor, db_url, sink.port, message, reset_for_floor(db_url), k)
                 if args.floor else None)
        results = report(args, sink, prepared, mailmag, ceilings, raw, naive, peer, header, floor)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
