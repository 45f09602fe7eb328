"""Shared set-up for the benchmarks: a temporary database, subscribers, a realistic issue, an SMTP sink.

Nothing here is timed except where a function says so; the benchmarks time mailmag's own
calls (compose, enqueue, dispatch) and run them in fresh processes so that CPU time and peak
RSS belong to mailmag alone, not to the set-up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing
import os
import platform
import random
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from a checkout, installed or not
    sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select  # noqa: E402

from mailmag import db  # noqa: E402
from mailmag.config import (  # noqa: E402
    Config,
    DatabaseConfig,
    DispatchConfig,
    DkimConfig,
    GeneralConfig,
    SenderConfig,
    SmtpConfig,
)
from mailmag.content import issues, items, orgs  # noqa: E402
from mailmag.models import Item, Subscriber, utcnow  # noqa: E402
from mailmag.services import Services  # noqa: E402

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SECRET = "benchmark-secret-key-0123456789abcdef"
DATA = ROOT / "mailmag" / "data"
SMTP_SINK = "/usr/sbin/smtp-sink"
# A sender of our own: compose refuses config.example.toml's example values (特定電子メール法).
SENDER = SenderConfig(from_="magazine@example.jp", postal_address="〒730-0011 広島県広島市中区基町10-52",
                      contact="jimukyoku@example.jp")

SURNAMES = ("佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本", "中村", "小林", "加藤",
            "吉田", "山田", "佐々木", "山口", "松本", "井上", "木村", "林", "清水", "山崎")
GIVEN = ("太郎", "花子", "一郎", "美咲", "健太", "陽子", "大輔", "直美", "翔太", "由美",
         "誠", "恵子", "拓也", "裕子", "和也", "真由美")
DOMAINS = ("example.jp", "example.co.jp", "example.ac.jp", "example.go.jp", "example.or.jp")


# --- what the numbers were measured on ----------------------------------------------------------


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = found.group(1) if found else ""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), {memory:.0f} GiB, "
            f"Python {platform.python_version()}, Linux {platform.release()}")


def load() -> str:
    """The load average now: other work on the machine skews every number."""
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def cpu_jiffies() -> tuple[int, int] | None:
    """(total, steal) jiffies of all the machine's CPUs so far, from /proc/stat's `cpu` line.

    On a virtual machine the hypervisor steals CPU time in bursts; no process's own CPU time
    shows it, so two phases of one run can differ by it alone. None without /proc/stat or
    without its steal column (the 8th number).
    """
    ticks = _cpu_ticks()
    return None if ticks is None else (sum(ticks), ticks[7])


def _cpu_ticks() -> list[int] | None:
    """/proc/stat's `cpu` line: user, nice, system, idle, iowait, irq, softirq, steal (guest
    time, the 9th and 10th, is already in user and nice); None without it."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return [int(field) for field in fields[1:9]]


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time stolen between two `cpu_jiffies()` readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


def _ticks(stat: str) -> tuple[str, int]:
    """(command, CPU ticks) of one /proc/PID/stat line, with those of its children that have ended."""
    command = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return command, sum(int(field) for field in fields[11:15])  # utime, stime, cutime, cstime


@dataclass
class Machine:
    """Where the machine's CPU went, read from /proc: the sender's own CPU is only part of what a
    message costs. The sink, PostgreSQL and the kernel (loopback TCP, the WAL's fsyncs) share the
    same few CPUs, so on a small machine the rate follows the sum (benchmarks/README.md, Round 17).

    Groups: the process reading it, with its children that have ended (the measured phase,
    read from inside its own process: `worker --processes N`'s have ended by the second reading);
    the sink's processes; PostgreSQL's (the postmaster's ended children are its exited
    backends); and the rest of the busy time: the kernel's own threads and interrupts, and any
    other process.
    """

    ticks: dict[str, int]
    busy: int
    idle: int

    @classmethod
    def now(cls, sink_pids: set[int]) -> Machine | None:
        fields = _cpu_ticks()
        if fields is None:
            return None
        try:
            own = _ticks(Path("/proc/self/stat").read_text())[1]
        except (OSError, ValueError, IndexError):
            return None
        ticks = {"sender": own, "sink": 0, "postgresql": 0}
        for path in Path("/proc").glob("[0-9]*/stat"):
            try:
                command, spent = _ticks(path.read_text())
            except (OSError, ValueError, IndexError):
                continue  # it ended meanwhile
            if int(path.parent.name) in sink_pids:
                ticks["sink"] += spent
            elif command.startswith("postgres"):
                ticks["postgresql"] += spent
        idle = fields[3] + fields[4]  # idle, iowait
        return cls(ticks, sum(fields) - idle - fields[7], idle)  # steal is nobody's here

    def since(self, before: Machine | None, count: int) -> dict[str, float] | None:
        """µs a message of each group between two readings, 'elsewhere', and the busy share."""
        if before is None or count <= 0:
            return None
        tick = 1e6 / os.sysconf("SC_CLK_TCK") / count
        spent = {name: (self.ticks[name] - before.ticks[name]) * tick for name in self.ticks}
        busy, idle = (self.busy - before.busy) * tick, (self.idle - before.idle) * tick
        spent["elsewhere"] = max(busy - sum(spent.values()), 0.0)
        spent["busy_share"] = busy / (busy + idle) if busy + idle else 0.0
        return spent


def machine_text(spent: dict[str, float] | None, sender: str) -> list[str]:
    """The line under a phase: where the machine's CPU went, a message at a time."""
    if spent is None:
        return []
    database = f", PostgreSQL {spent['postgresql']:.0f}" if spent["postgresql"] >= 1 else ""
    return [f"  the machine {spent['busy_share'] * 100:.0f} % busy; CPU µs a message: {sender} "
            f"{spent['sender']:.0f}, the sink {spent['sink']:.0f}{database}, "
            f"elsewhere {spent['elsewhere']:.0f} (the kernel's threads and interrupts, other processes)"]


def now_text() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# --- measuring a phase in a process of its own ---------------------------------------------------


@dataclass
class Usage:
    """CPU seconds and peak RSS of one process (resource.getrusage): with `children`, plus those
    of its children that have ended (the sending processes of `worker --processes`)."""

    cpu: float
    peak_rss_mb: float

    @classmethod
    def now(cls, children: bool = False) -> Usage:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu, rss = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        if children:
            ended = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu, rss = cpu + ended.ru_utime + ended.ru_stime, max(rss, ended.ru_maxrss)
        return cls(cpu, rss / 1024)


def _child(queue: multiprocessing.Queue, function: Callable[..., Any], args: tuple) -> None:
    try:
        queue.put(("ok", function(*args)))
    except BaseException as exc:  # report it to the parent, which raises it
        import traceback

        queue.put(("error", f"{exc!r}\n{traceback.format_exc()}"))


def in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """Run `function(*args)` in a new interpreter (spawn) and return its result.

    Spawned, not forked: the child starts with nothing of the parent's memory, so its peak
    RSS and CPU time are those of the measured work and the imports it needs.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, function, args))
    process.start()
    while True:
        try:
            status, result = queue.get(timeout=1)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"the measured process died (exit code {process.exitcode})") from None
    process.join()
    if status == "error":
        raise RuntimeError(f"the measured process failed: {result}")
    return result


# --- the database ---------------------------------------------------------------------------------


@contextlib.contextmanager
def temp_database(kind: str, directory: Path | None = None) -> Iterator[str]:
    """A fresh empty database URL: a SQLite file in a temporary folder, or a private PostgreSQL schema."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="mailmag-bench-", dir=directory) as folder:
            yield f"sqlite:///{folder}/mailmag.db"
        return
    if kind != "postgresql":
        raise SystemExit(f"--db must be sqlite or postgresql, not {kind!r}")
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        raise SystemExit(f"no PostgreSQL at 127.0.0.1:5432 (database test, trust auth): {exc}") from exc
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def make_config(db_url: str, port: int = 25, *, concurrency: int = 4, batch_size: int = 200,
                dkim_key: str = "", lease_seconds: int = 300) -> Config:
    """SMTP to the loopback sink without TLS or rate limits: the benchmark measures mailmag, not policy."""
    return Config(
        mailmag=GeneralConfig(base_url="https://news.example.jp"),
        sender=SENDER,
        database=DatabaseConfig(url=db_url),
        smtp=SmtpConfig(transport="smtp", host="127.0.0.1", port=port, security="none",
                        max_connections=concurrency, rate_per_second=0.0, rate_per_hour=0,
                        messages_per_connection=100_000, timeout_seconds=60.0),
        dispatch=DispatchConfig(lease_seconds=lease_seconds, batch_size=batch_size),
        dkim=DkimConfig(selector="bench", private_key_file=dkim_key) if dkim_key else DkimConfig(),
        secret_key=SECRET,
    )


def config_file(path: Path, config: Config) -> Path:
    """The same settings as a TOML file, for `mailmag worker` processes."""
    smtp, dispatch = config.smtp, config.dispatch
    key = config.dkim
    dkim = f'[dkim]\nselector = "{key.selector}"\nprivate_key_file = "{key.private_key_file}"\n'
    dkim = dkim if key.selector else ""
    path.write_text(
        f'[mailmag]\nbase_url = "{config.mailmag.base_url}"\n'
        f'[sender]\nfrom = "{SENDER.from_}"\npostal_address = "{SENDER.postal_address}"\n'
        f'contact = "{SENDER.contact}"\n'
        f'[database]\nurl = "{config.database.url}"\n'
        f'[smtp]\ntransport = "smtp"\nhost = "{smtp.host}"\nport = {smtp.port}\nsecurity = "none"\n'
        f"max_connections = {smtp.max_connections}\nrate_per_second = 0.0\n"
        f"messages_per_connection = {smtp.messages_per_connection}\n"
        f"timeout_seconds = {smtp.timeout_seconds}\n"
        f"[dispatch]\nlease_seconds = {dispatch.lease_seconds}\nbatch_size = {dispatch.batch_size}\n{dkim}",
        encoding="utf-8",
    )
    return path


def open_services(config: Config, *, init: bool = False) -> Services:
    services = Services(config)
    if init:
        db.init_db(services.engine)
    return services


def add_subscribers(services: Services, count: int, *, chunk: int = 20_000, seed: int = 1) -> float:
    """`count` active subscribers with Japanese names, inserted in chunks; returns seconds taken.

    Chunks of executemany keep the benchmark's own memory flat whatever the count.
    """
    rng = random.Random(seed)
    started = time.perf_counter()
    now = utcnow()
    table = Subscriber.__table__
    with services.engine.connect() as connection:
        first = connection.scalar(select(Subscriber.id).order_by(Subscriber.id.desc()).limit(1)) or 0
        for start in range(first, first + count, chunk):
            rows = []
            for i in range(start, min(start + chunk, first + count)):
                email = f"member{i:07d}@{DOMAINS[i % len(DOMAINS)]}"
                rows.append(dict(
                    email=email, email_key=email, name=f"{rng.choice(SURNAMES)} {rng.choice(GIVEN)}",
                    organization="", lang="ja", topics=[], status="active", status_reason="",
                    created_at=now, updated_at=now, confirmed_at=now,
                ))
            connection.execute(insert(table), rows)
            connection.commit()
    return time.perf_counter() - started


# --- a realistic Japanese issue -------------------------------------------------------------------


def _padding_fields(n: int) -> tuple[str, dict[str, Any]]:
    """The n-th extra item: a news item written like the council's notices."""
    body = (
        f"中国地域産学官コラボレーション会議では，第{n}回の地域技術交流会の結果を取りまとめました。"
        "大学・高専・公設試験研究機関と企業の皆様から，研究シーズの紹介や共同研究の事例について"
        "多数のご発表をいただきました。\n\n"
        "- 発表件数：大学・高専から12件，公設試験研究機関から8件\n"
        "- 参加者数：延べ約180名（前年度比 約1.2倍）\n"
        "- 次回は島根県松江市での開催を予定しています\n\n"
        "当日の資料は会員ページに掲載しております。ご不明な点は事務局までお問い合わせください。"
    )
    return "news", {"title": f"地域技術交流会（第{n}回）の開催結果について", "body": body,
                    "url": f"https://www.example.jp/news/{2027}/{n:03d}"}


def compose_issue(services: Services, target_html_kb: float = 30.0) -> tuple[int, int]:
    """Load the demo orgs and items, pad with news items to ~target_html_kb of HTML, approve.

    Returns (issue id, HTML bytes). The issue is a composed draft (Jinja2 + premailer): it has no
    number (第N号) until it is sent.
    Composition is what `compose_time` measures; this only finds how many items make ~30 KB.
    """
    from mailmag.content import render

    today = dt.date(2027, 4, 1)  # the demo items' events lie ahead of this date
    with services.session() as session:
        orgs.add_file(session, DATA / "demo_orgs.toml")
        demo = items.add_files(session, sorted((DATA / "demo_items").glob("*.md")), today=today)
        chosen = list(demo.items)
        extra = 0
        while _html_size(services, render, chosen, today) < target_html_kb * 1024:
            extra += 1
            kind, fields = _padding_fields(extra)
            chosen.append(items.submit(session, "cef", kind, fields, today=today))
        items.approve(session, [item.id for item in chosen])
    with services.session() as session:
        composed = issues.compose(session, services.config, today=today)
        html = next(r.html for r in composed.issue.renderings if r.lang == "ja")
        return composed.issue.id, len(html.encode())


def _html_size(services: Services, render: Any, chosen: list[Item], today: dt.date) -> int:
    env = render.make_environment(services.config.templates_path)
    spec = render.IssueSpec(1, None, today, chosen)
    return len(render.render_edition(env, services.config, spec, "ja").html.encode())


def compose_time(services: Services, repeat: int = 5) -> float:
    """Best of `repeat` renders of every edition (Jinja2 + premailer), as `issues render` does it."""
    from mailmag.content import render

    with services.session() as session:
        issue = issues.get(session, 1)
        ordered = [entry.item for entry in issue.entries]
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            env = render.make_environment(services.config.templates_path)
            render.render_issue(env, services.config, render.IssueSpec(1, None, dt.date(2027, 4, 1), ordered))
            best = min(best, time.perf_counter() - started)
    return best


# --- the loopback sink ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.recv(100)  # the greeting
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Sink:
    """An SMTP server that accepts and discards everything, counting messages.

    Postfix's C `smtp-sink` when installed (it must drop root: `-u nobody`); else aiosmtpd in
    one process per core sharing the port (SO_REUSEPORT), which tops out far lower.
    """

    def __init__(self, prefer: str = "smtp-sink") -> None:
        self.port = free_port()
        self.kind = "smtp-sink" if prefer == "smtp-sink" and Path(SMTP_SINK).exists() else "aiosmtpd"
        # Lives as long as the sink: the sink's counters are written into it.
        self._log = tempfile.NamedTemporaryFile(prefix="mailmag-sink-", suffix=".log", delete=False)  # noqa: SIM115
        self._processes: list[Any] = []

    def __enter__(self) -> Sink:
        if self.kind == "smtp-sink":
            user = ["-u", "nobody"] if os.geteuid() == 0 else []
            self._processes.append(subprocess.Popen(
                [SMTP_SINK, *user, "-c", "-4", "-m", "1000", f"127.0.0.1:{self.port}", "1000"],
                stdout=self._log, stderr=subprocess.STDOUT,
            ))
        else:
            context = multiprocessing.get_context("spawn")
            for _ in range(os.cpu_count() or 1):
                process = context.Process(target=_aiosmtpd_main, args=(self.port, self._log.name),
                                          daemon=True)
                process.start()
                self._processes.append(process)
        _wait_listening(self.port)
        return self

    def __exit__(self, *_exc: object) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.wait() if isinstance(process, subprocess.Popen) else process.join()
        self._log.close()
        os.unlink(self._log.name)

    def pids(self) -> set[int]:
        return {process.pid for process in self._processes}

    def messages(self) -> int:
        """Messages accepted so far (after the final dot)."""
        with open(self._log.name, "rb") as log:
            text = log.read().decode("ascii", "replace")
        if self.kind == "smtp-sink":
            found = re.findall(r"mesg=(\d+)", text)
            return int(found[-1]) if found else 0
        return text.count("\n")

    @property
    def name(self) -> str:
        return "Postfix smtp-sink" if self.kind == "smtp-sink" else f"aiosmtpd × {os.cpu_count()} processes"


def _aiosmtpd_main(port: int, log_path: str) -> None:
    """One aiosmtpd sink process; every process listens on the same port (SO_REUSEPORT)."""
    import asyncio

    from aiosmtpd.smtp import SMTP

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            log.write("m\n")
            return "250 2.0.0 Ok: queued"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(Handler(), hostname="sink"), "127.0.0.1", port,
                                          reuse_port=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def wait_for_sink(sink: Sink, expected: int, timeout: float = 10.0) -> int:
    """The sink's count once it reaches `expected` (or after `timeout`): its log may trail a little."""
    deadline = time.monotonic() + timeout
    count = sink.messages()
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = sink.messages()
    return count


def make_dkim_key(folder: Path) -> str:
    """A fresh 2048-bit RSA key as PEM, the size a real deployment should use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return str(path)


def header(title: str, db_kind: str, sink: Sink | None = None) -> str:
    sink_text = f", sink: {sink.name}" if sink else ""
    return f"# {title}\n# {now_text()}; {machine()}\n# database: {db_kind}{sink_text}; {load()}"
