"""More sending threads than the shared database pool holds (5 + 10): nobody waits forever."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_dispatch import prepare_send

from mailmag import db
from mailmag.config import DispatchConfig
from mailmag.delivery import outbox
from mailmag.delivery.transports import make_transport
from mailmag.scheduling.sending import make_dispatcher
from mailmag.services import Services

THREADS = 20


@pytest.fixture
def many_threads(config, smtp_server) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    # Batches of 2, so every one of the 20 threads has a batch in hand at the same time.
    services = Services(smtp_server.configure(config, rate_per_second=0.0)
                        .replace(dispatch=DispatchConfig(batch_size=2)))
    db.init_db(services.engine)
    yield services
    services.close()


def test_twenty_threads_whose_every_message_is_deferred_finish_the_run(many_threads, smtp_server):
    # Each thread holds a connection for its results while each deferral writes through a
    # session of the shared pool: drawing both from that pool, 15 threads could wait forever.
    issue = prepare_send(many_threads, 60)
    smtp_server.fail_next("rcpt", 451, "4.3.0 try again later", times=None)
    dispatcher = make_dispatcher(many_threads, make_transport(many_threads.config), concurrency=THREADS)
    stats = dispatcher.run(once=True)
    assert (stats.sent, stats.deferred) == (0, 60)
    with many_threads.session() as session:
        counts = outbox.counts(session, issue.id)
    assert (counts.queued, counts.sending, counts.sent) == (60, 0, 0)


@pytest.mark.slow  # twenty sending threads
def test_twenty_threads_send_every_message_once(many_threads, smtp_server):
    issue = prepare_send(many_threads, 60)
    transport = make_transport(many_threads.config)
    stats = make_dispatcher(many_threads, transport, concurrency=THREADS).run(once=True)
    assert stats.sent == 60
    assert sorted(smtp_server.recipients()) == sorted(f"user{i}@example.jp" for i in range(60))
    with many_threads.session() as session:
        assert outbox.counts(session, issue.id).sent == 60
