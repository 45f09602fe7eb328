"""What the web tests share: the app under a real HTTP server, a small HTTP client, mail helpers.

The fixtures that use these are in web_fixtures.py (test modules say pytest_plugins = ["web_fixtures"]).
The client speaks plain http.client (no redirects followed, cookies kept by hand) so a test
sees exactly what a mail provider's one-click POST or a link scanner's GET would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email
import email.policy
import http.client
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlencode, urlsplit

from flask import Flask
from sqlalchemy import func, select
from waitress import wasyncore

from mailmag import db
from mailmag.config import Config
from mailmag.models import ConsentEvent, SubscribeAttempt, Subscriber
from mailmag.services import Services
from mailmag.web.server import make_server

T = TypeVar("T")

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class LiveServer:
    """The app served as `mailmag serve` serves it (waitress, the [web] limits) on 127.0.0.1
    (a free port), in a thread."""

    def __init__(self, app: Flask, threads: int = 4) -> None:
        self.server = make_server(app, "127.0.0.1", 0, threads=threads)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        # Close every socket from inside the server's own loop (closing them from this thread
        # would pull them from under its select()); the loop ends when none is left.
        # OSError: a worker's wake-up ran the callback first, and it closed the trigger's pipe.
        with contextlib.suppress(OSError):
            self.server.trigger.pull_trigger(lambda: wasyncore.close_all(self.server._map))
        self.thread.join(timeout=5)
        self.server.task_dispatcher.shutdown()


@dataclasses.dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def csrf(self) -> str:
        match = CSRF.search(self.text)
        assert match, "no CSRF token on the page"
        return match.group(1)


class Client:
    """One visitor: keeps its cookies (or none, like a mail provider's one-click POST)."""

    def __init__(self, base_url: str, *, cookies: bool = True, user_agent: str = "test-browser/1.0",
                 source: str = "") -> None:
        """`source`: the loopback address this visitor connects from (127.0.0.2: another client)."""
        parts = urlsplit(base_url)
        self.source = (source, 0) if source else None
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.keep_cookies = cookies
        self.cookies: dict[str, str] = {}
        self.user_agent = user_agent

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        path = urlsplit(path)._replace(scheme="", netloc="").geturl() or "/"
        all_headers = {"User-Agent": self.user_agent, **(headers or {})}
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10, source_address=self.source)
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            reply = Reply(response.status, response.headers, response.read())
        finally:
            connection.close()
        if self.keep_cookies:
            for cookie in reply.headers.get_all("Set-Cookie") or []:
                name, _, rest = cookie.partition("=")
                self.cookies[name] = rest.split(";", 1)[0]
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def head(self, path: str) -> Reply:
        return self.request("HEAD", path)

    def post(self, path: str, form: dict[str, str | list[str]] | None = None, **headers: str) -> Reply:
        body = urlencode(form or {}, doseq=True).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                 **headers})

    def submit(self, path: str, form: dict[str, str | list[str]], page: str | None = None) -> Reply:
        """Open the page (for its CSRF token) and send the form, as a browser does (following a 303
        to the page it names)."""
        token = self.get(page or path).csrf()
        reply = self.post(path, {**form, "csrf_token": token})
        return self.get(reply.headers["Location"]) if reply.status == 303 else reply


def one_click(base_url: str, path: str) -> Reply:
    """What Gmail or Yahoo sends for RFC 8058: a POST with no cookie, from no browser."""
    client = Client(base_url, cookies=False, user_agent="Mail-Provider-One-Click/1.0")
    return client.post(path, {"List-Unsubscribe": "One-Click"})


def counts(services: Services) -> dict[str, int]:
    """Rows a rejected request must not change."""
    with services.session() as session:
        return {
            "subscribers": session.scalar(select(func.count()).select_from(Subscriber)),
            "consents": session.scalar(select(func.count()).select_from(ConsentEvent)),
            "attempts": session.scalar(select(func.count()).select_from(SubscribeAttempt)),
        }


def mail_text(data: bytes) -> str:
    """The text part of a received message, decoded."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content()


def link_in(data: bytes, kind: str) -> str:
    """The first https?://…/<kind>/<token> URL in a received message."""
    match = re.search(rf"https?://\S+/{kind}/[A-Za-z0-9._-]+", mail_text(data))
    assert match, f"no /{kind}/ link in the mail"
    return match.group(0)


def key_of(services: Services, subscriber_id: int) -> str:
    """A subscriber row's link key (every link made for the row carries it)."""
    with services.session() as session:
        return session.get(Subscriber, subscriber_id).link_key


def make_services(config: Config) -> Services:
    services = Services(config)
    db.init_db(services.engine)
    return services


def with_backend_killed_mid_request(database_url: str, table: str, request: Callable[[], T]) -> T:
    """request()'s result, run while `table` is locked, after its PostgreSQL backend, waiting
    on the lock, was ended by pg_terminate_backend (a restart, a failover, an administrator);
    then the lock goes. The request runs in a thread, as a visitor's would."""
    from sqlalchemy import text

    replies: list[T] = []
    elsewhere = db.make_engine(database_url)  # not one of the app's connections
    with elsewhere.connect() as locker:
        locker.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        thread = threading.Thread(target=lambda: replies.append(request()))
        thread.start()
        waiting = text("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                       f"AND query ILIKE '%{table}%' AND pid <> pg_backend_pid()")
        end = time.monotonic() + 10
        # (pg_stat_activity is read once per transaction: the snapshot is cleared for each look)
        while not (pids := locker.execute(waiting).scalars().all()) and time.monotonic() < end:
            locker.execute(text("SELECT pg_stat_clear_snapshot()"))
            time.sleep(0.05)
        assert len(pids) == 1, pids
        locker.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
        locker.rollback()  # the lock goes
    elsewhere.dispose()
    thread.join(timeout=30)
    [reply] = replies
    return reply
