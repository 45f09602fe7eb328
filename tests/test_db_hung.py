"""A PostgreSQL server that hangs (a frozen VM, a stuck disk, a SIGSTOPped postmaster).

Its kernel still acknowledges, so libpq's connect_timeout, tcp_user_timeout and keepalives never
fire: a worker sat silent and /healthz hung for as long as the server slept. Each wait now gives
up after [database] answer_timeout_seconds (/healthz after a few seconds); the caller meets a
database that went away, and nothing is lost or doubled. The server here is the real one behind
a proxy that freezes (hung_database.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import logging
import threading
from collections.abc import Iterator

import pytest
from hung_database import FreezingProxy
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from test_delivery_faults import EVERYONE, make_services, run_once
from test_dispatch import counts, prepare_send
from test_web_unsubscribe import reader, state, unsubscribe_path  # noqa: F401 - reader is a fixture
from web_support import Client, LiveServer, one_click

from mailmag import db, web
from mailmag.config import DatabaseConfig
from mailmag.services import Services
from mailmag.web import create_app

pytest_plugins = ["web_fixtures"]
pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

# A lock wait (busy) may last its time; a silence longer than `answer` is given up on.
QUICK = {"busy_timeout_seconds": 0.5, "answer_timeout_seconds": 1.5, "connect_timeout_seconds": 2}


@pytest.fixture
def proxy() -> Iterator[FreezingProxy]:
    proxy = FreezingProxy()
    yield proxy
    proxy.close()


def through(proxy: FreezingProxy, database: DatabaseConfig, **settings: float) -> DatabaseConfig:
    return dataclasses.replace(database, url=proxy.url(database.url), **{**QUICK, **settings})


@contextlib.contextmanager
def web_app_through(proxy: FreezingProxy, config, **database) -> Iterator[tuple[Services, LiveServer]]:  # type: ignore[no-untyped-def]
    """The web app served over HTTP, its database reached through `proxy` (thawed at the end)."""
    hung = Services(dataclasses.replace(config, database=through(proxy, config.database, **database)))
    app = create_app(hung)
    server = LiveServer(app)
    try:
        yield hung, server
    finally:
        proxy.thaw()
        server.close()
        app.extensions["mailmag"].mailer.close()
        hung.close()


def in_thread(work) -> list:  # type: ignore[no-untyped-def]
    """work()'s result or exception, after at most 30 s (a hang is a failure, not a stuck suite)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert outcome, "still waiting for a server that does not answer"
    return outcome


def test_a_statement_on_a_hung_server_gives_up_and_the_next_works_once_it_answers(config, proxy):
    engine = db.engine_for(through(proxy, config.database))

    def select_one() -> int:
        with engine.connect() as connection:
            return connection.execute(text("SELECT 1")).scalar_one()

    try:
        assert select_one() == 1  # a pooled connection, as a worker or a page holds one
        proxy.freeze()
        [error] = in_thread(select_one)
        assert isinstance(error, OperationalError)
        assert "gave no answer" in str(error.orig), error  # a ping, then a new connection
        proxy.thaw()
        assert select_one() == 1  # the dead connection was replaced
    finally:
        proxy.thaw()
        engine.dispose()


def test_healthz_and_a_one_click_answer_503_while_the_database_hangs(config, web_services, reader, proxy):  # noqa: F811
    """/healthz answers a load balancer in seconds; a one-click unsubscribe is 503 with Retry-After
    (the provider tries again), and it changed nothing."""
    with web_app_through(proxy, config) as (_hung, server):
        assert Client(server.url).get("/healthz").status == 200
        proxy.freeze()
        [health] = in_thread(lambda: Client(server.url).get("/healthz"))
        assert (health.status, health.text) == (503, "database unavailable\n")
        [reply] = in_thread(lambda: one_click(server.url, unsubscribe_path(web_services, reader)))
        assert reply.status == 503 and reply.headers["Retry-After"] == "60"
        proxy.thaw()
        assert Client(server.url).get("/healthz").status == 200
    assert state(web_services, reader)["status"] == "active"


def test_healthz_answers_within_its_time_when_its_pooled_connection_hangs(config, proxy, monkeypatch):
    """helper-65: the ping of a pooled connection waited HEALTH_SECONDS, then the pool's new
    connection had seconds of its own: 5 s became 8, past a load balancer's own timeout. The
    check's seconds are now one budget for both."""
    monkeypatch.setattr(web, "HEALTH_SECONDS", 2.0)
    with web_app_through(proxy, config) as (_hung, server):

        def balancer_check() -> tuple[int, bytes]:  # a load balancer that waits 3.5 s for an answer
            port = int(server.url.rsplit(":", 1)[1])
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3.5)
            try:
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        assert balancer_check()[0] == 200  # the pool now holds a connection
        proxy.freeze()
        [health] = in_thread(balancer_check)
        assert health == (503, b"database unavailable\n"), health
        proxy.thaw()
        assert balancer_check()[0] == 200


def test_while_one_page_hangs_on_the_database_the_next_gives_up_in_health_seconds(config, web_services,
                                                                                     reader, proxy,  # noqa: F811
                                                                                     monkeypatch):
    """helper-65: every page on a frozen server held its thread for answer_timeout_seconds, until
    /healthz waited behind them. Once one wait is overdue past HEALTH_SECONDS, a new request
    waits no longer than that: its visitor gets the 503 page, and the thread comes free."""
    monkeypatch.setattr(web, "HEALTH_SECONDS", 1.0)
    page = unsubscribe_path(web_services, reader)
    first: list = []
    with web_app_through(proxy, config, answer_timeout_seconds=6.0) as (hung, server):
        assert Client(server.url).get(page).status == 200
        for engine in {hung.engine, hung.read_engine}:  # two connections in each pool, as on a busy site
            with engine.connect() as one, engine.connect() as two:
                one.execute(text("SELECT 1")), two.execute(text("SELECT 1"))
        proxy.freeze()
        stuck = threading.Thread(target=lambda: first.append(Client(server.url).get(page)), daemon=True)
        stuck.start()
        stuck.join(timeout=2.0)  # overdue past HEALTH_SECONDS, within its own 6 s
        assert not first, "the first page should still be waiting for the frozen server"
        [second] = in_thread(lambda: Client(server.url).get(page))
        assert second.status == 503 and second.headers["Retry-After"] == "60"
        # its own HEALTH_SECONDS, not 6 s: the first still waits
        assert not first, "the second page waited as long as the first"
        stuck.join(timeout=15)
        assert first and first[0].status == 503
        proxy.thaw()
        assert Client(server.url).get(page).status == 200  # wary no more
    assert state(web_services, reader)["status"] == "active"


def test_a_worker_whose_database_hangs_says_so_once_and_sends_each_message_once(config, smtp_server, proxy,
                                                                                 caplog):
    """The database freezes when the relay has message 4, for longer than the answer timeout:
    one line when it goes, one when it is back, and every reader gets the issue once."""
    services = make_services(config, smtp_server, database=through(proxy, config.database))
    issue = prepare_send(services, 12)
    original_store = smtp_server._store

    def store_then_hang(*args):  # type: ignore[no-untyped-def]
        number = original_store(*args)
        if number == 4:
            proxy.freeze()
            threading.Timer(4.0, proxy.thaw).start()
        return number

    smtp_server._store = store_then_hang
    caplog.set_level(logging.WARNING, logger="mailmag.delivery.dispatch")
    try:
        [dispatcher] = in_thread(lambda: run_once(services, concurrency=1))
        assert dispatcher.stats.sent == 12
        assert sorted(smtp_server.recipients()) == sorted(EVERYONE[:12])  # nobody twice
        c = counts(services, issue)
        assert (c.sent, c.pending, c.failed, c.dead) == (12, 0, 0, 0)
        lines = [r.getMessage() for r in caplog.records]
        assert sum("database unavailable" in line and "gave no answer" in line for line in lines) == 1, lines
        assert sum("database available again" in line for line in lines) == 1, lines
    finally:
        proxy.thaw()
        services.close()
