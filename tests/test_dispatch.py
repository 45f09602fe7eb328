"""The worker against a real aiosmtpd server: exactly once, through faults, within limits."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import email
import email.policy
import email.utils
import multiprocessing
import os
import signal
import threading
import time
from email.header import decode_header, make_header

import pytest
import time_machine
from sqlalchemy import func, select, update

from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.content import transitions
from mailmag.delivery import outbox
from mailmag.delivery.dispatch import Dispatcher
from mailmag.delivery.ratelimit import IN_FLIGHT_WAIT_SECONDS, RateLimiter
from mailmag.delivery.transports import make_transport
from mailmag.delivery.workstate import ExpiryHold
from mailmag.errors import MailmagError, TransportError
from mailmag.models import BounceEvent, Delivery, Issue, Rendering, Subscriber, utcnow
from mailmag.placeholders import PLACEHOLDERS
from mailmag.scheduling import sending
from mailmag.scheduling.sending import make_dispatcher
from mailmag.services import Services

HTML = (
    f"<html><body><p>{PLACEHOLDERS['name']} 様</p>"
    f"<a href=\"{PLACEHOLDERS['unsubscribe_url']}\">配信停止</a></body></html>"
)
TEXT = f"{PLACEHOLDERS['name']} 様\n配信停止: {PLACEHOLDERS['unsubscribe_url']}\n"


def prepare_send(services: Services, n: int, subject: str = "【第1号】産学官連携のお知らせ") -> Issue:
    """n active subscribers and issue 1, enqueued (as `issues send` leaves it)."""
    with services.session() as session:
        for i in range(n):
            subscribers.add(session, subscribers.parse_address(f"user{i}@example.jp"),
                            Consent("cli"), name=f"利用者{i}")
        issue = Issue(number=1, title="第1号")
        session.add(issue)
        session.flush()
        session.add(Rendering(issue_id=issue.id, lang="ja", subject=subject, html=HTML, text=TEXT))
        session.flush()
        session.refresh(issue)
        transitions.start_sending(session, issue, "example.jp", "ja")
        return issue


@pytest.fixture
def smtp_services(config, smtp_server):  # type: ignore[no-untyped-def]
    from mailmag import db

    services = Services(smtp_server.configure(config, rate_per_second=0.0, throttle_seconds=0.1))
    db.init_db(services.engine)
    yield services
    services.close()


def run_worker(services: Services, *, concurrency: int = 2, clock=utcnow,  # type: ignore[no-untyped-def]
               progress=None) -> Dispatcher:
    dispatcher = make_dispatcher(services, make_transport(services.config), concurrency=concurrency,
                                 clock=clock, progress=progress)
    dispatcher.run(once=True)
    return dispatcher


def counts(services: Services, issue: Issue) -> outbox.Counts:
    with services.session() as session:
        return outbox.counts(session, issue.id)


def test_every_subscriber_gets_the_issue_exactly_once(smtp_services, smtp_server):
    issue = prepare_send(smtp_services, 25)
    dispatcher = run_worker(smtp_services, concurrency=3)
    assert sorted(smtp_server.recipients()) == sorted(f"user{i}@example.jp" for i in range(25))
    assert dispatcher.stats.sent == 25
    c = counts(smtp_services, issue)
    assert (c.sent, c.pending, c.failed) == (25, 0, 0)
    with smtp_services.session() as session:
        assert session.get(Issue, issue.id).status == "sent"
    # Connections are reused: 3 threads, 3 sessions, not 25.
    assert smtp_server.sessions <= 3


def test_a_short_list_is_shared_by_every_connection(smtp_services, smtp_server):
    """[dispatch] batch_size is 200: one thread claimed a 12-subscriber list whole and sent it
    over one connection at the relay's pace, the other three idle. Claims are sized by what is
    due, so each connection takes its share."""
    issue = prepare_send(smtp_services, 12)
    smtp_server.delay("data_end", 0.3, times=None)  # a relay that takes its time over each message
    run_worker(smtp_services, concurrency=4)
    assert counts(smtp_services, issue).sent == 12
    per_connection = collections.Counter(message.session for message in smtp_server.messages)
    # each took its share: 3 each, give or take a row PostgreSQL's SKIP LOCKED passed to another
    assert len(per_connection) == 4 and max(per_connection.values()) <= 5, per_connection


def test_the_message_is_personal_and_its_subject_japanese(smtp_services, smtp_server):
    prepare_send(smtp_services, 1)
    run_worker(smtp_services)
    (received,) = smtp_server.messages
    message = email.message_from_bytes(received.data, policy=email.policy.compat32)
    assert str(make_header(decode_header(message["Subject"]))) == "【第1号】産学官連携のお知らせ"
    text = message.get_payload()[0].get_payload(decode=True).decode("utf-8")
    assert text.startswith("利用者0 様")
    assert "https://news.example.jp/u/" in text
    assert received.envelope_from.startswith("bounces+")
    with smtp_services.session() as session:
        assert message["Message-ID"] == session.scalar(select(Delivery.message_id))


def test_4xx_defers_then_the_retry_delivers(smtp_services, smtp_server):
    issue = prepare_send(smtp_services, 3)
    smtp_server.fail_rcpt("user1@example.jp", 451, "4.3.0 try again later", times=1)
    run_worker(smtp_services)
    c = counts(smtp_services, issue)
    assert (c.sent, c.queued) == (2, 1)
    with smtp_services.session() as session:
        row = session.scalar(select(Delivery).where(Delivery.email == "user1@example.jp"))
        assert row.last_reply.startswith("451")
        # Postfix-like backoff: the first retry waits backoff_seconds (300 s by default).
        assert row.next_attempt_at - utcnow() > dt.timedelta(seconds=250)
    later = utcnow() + dt.timedelta(minutes=6)
    run_worker(smtp_services, clock=lambda: later)
    assert counts(smtp_services, issue).sent == 3
    assert sorted(smtp_server.recipients()).count("user1@example.jp") == 1


def test_550_fails_the_recipient_and_suppresses_the_address(smtp_services, smtp_server):
    issue = prepare_send(smtp_services, 2)
    smtp_server.fail_rcpt("user0@example.jp", 550, "5.1.1 no such user")
    run_worker(smtp_services, concurrency=1)  # believed once user1's message is accepted after it
    c = counts(smtp_services, issue)
    assert (c.sent, c.failed) == (1, 1)
    with smtp_services.session() as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == "user0@example.jp"))
        assert subscriber.status == "bounced"
        assert "550" in subscriber.status_reason
        assert session.scalar(select(func.count()).select_from(BounceEvent)) == 1


def test_policy_block_fails_without_blaming_the_address(smtp_services, smtp_server):
    issue = prepare_send(smtp_services, 2)  # (an issue refused whole stops the run instead)
    smtp_server.fail_rcpt("user0@example.jp", 554, "5.7.1 message rejected as spam")
    run_worker(smtp_services)
    assert (counts(smtp_services, issue).failed, counts(smtp_services, issue).sent) == (1, 1)
    with smtp_services.session() as session:
        assert session.scalar(select(Subscriber.status)) == "active"
        assert session.scalar(select(func.count()).select_from(BounceEvent)) == 0


def test_421_defers_that_message_and_the_connection_goes_on_after_a_pause(smtp_services, smtp_server):
    issue = prepare_send(smtp_services, 6)
    smtp_server.fail_next("rcpt", 421, "4.7.0 too many messages, closing", after=2)
    run_worker(smtp_services, concurrency=1)
    first = counts(smtp_services, issue)
    assert (first.sent, first.queued, first.failed) == (5, 1, 0)
    assert smtp_server.sessions == 2  # the 421 closed the first session; the batch went on in a new one
    later = utcnow() + dt.timedelta(minutes=10)
    run_worker(smtp_services, concurrency=1, clock=lambda: later)
    assert counts(smtp_services, issue).sent == 6
    assert sorted(smtp_server.recipients()) == sorted(f"user{i}@example.jp" for i in range(6))


def test_drop_after_the_final_dot_is_retried_once(smtp_services, smtp_server):
    """At-least-once: the relay kept the message but we could not know; it goes again."""
    issue = prepare_send(smtp_services, 1)
    smtp_server.drop("after_data")
    run_worker(smtp_services)
    with smtp_services.session() as session:
        assert session.scalar(select(Delivery.last_reply)).startswith("ambiguous")
    later = utcnow() + dt.timedelta(minutes=10)
    run_worker(smtp_services, clock=lambda: later)
    assert counts(smtp_services, issue).sent == 1
    assert smtp_server.recipients() == ["user0@example.jp", "user0@example.jp"]


def test_a_message_dropped_after_the_final_dot_twice_is_still_sent(smtp_services, smtp_server):
    """A subscriber missing the issue is worse than a rare duplicate: [retry] applies, no give-up."""
    issue = prepare_send(smtp_services, 1)
    smtp_server.drop("after_data", times=2)
    first = run_worker(smtp_services)
    later = utcnow() + dt.timedelta(minutes=10)
    second = run_worker(smtp_services, clock=lambda: later)
    c = counts(smtp_services, issue)
    assert (c.failed, c.pending) == (0, 1)  # deferred again, as any temporary failure
    with smtp_services.session() as session:
        assert session.scalar(select(Delivery.next_attempt_at)) > later
    third = run_worker(smtp_services, clock=lambda: later + dt.timedelta(hours=2))
    c = counts(smtp_services, issue)
    assert (c.sent, c.failed, c.pending) == (1, 0, 0)
    assert (first.stats.ambiguous, second.stats.ambiguous, third.stats.ambiguous) == (1, 1, 0)
    assert smtp_server.recipients() == ["user0@example.jp"] * 3  # the relay kept the dropped ones
    with smtp_services.session() as session:  # countable afterwards: it may have arrived more than once
        assert session.scalar(select(Delivery.last_reply)).startswith("ambiguous before; 250")


def test_an_ambiguous_drop_gives_up_only_after_the_lifetime(smtp_services, smtp_server):
    issue = prepare_send(smtp_services, 1)
    smtp_server.drop("after_data", times=None)
    lifetime = smtp_services.config.retry.lifetime_seconds
    run_worker(smtp_services)
    assert counts(smtp_services, issue).pending == 1
    run_worker(smtp_services, clock=lambda: utcnow() + dt.timedelta(seconds=lifetime + 60))
    c = counts(smtp_services, issue)
    assert (c.failed, c.pending) == (1, 0)
    with smtp_services.session() as session:
        assert session.scalar(select(Delivery.last_reply)).startswith("ambiguous: gave up: ")


def test_a_running_worker_retries_a_deferral_when_it_comes_due_not_at_the_next_poll(config, smtp_server):
    from mailmag import db
    from mailmag.config import RetryConfig

    quick = config.replace(retry=RetryConfig(backoff_seconds=1, max_backoff_seconds=1))
    services = Services(smtp_server.configure(quick, rate_per_second=0.0))
    db.init_db(services.engine)
    issue = prepare_send(services, 1)
    smtp_server.drop("after_data")  # deferred for 1 s; the worker then polls only every hour
    dispatcher = make_dispatcher(services, make_transport(services.config), concurrency=1)
    running = threading.Thread(target=dispatcher.run, kwargs={"poll_seconds": 3600})
    running.start()
    try:
        wait_until = time.monotonic() + 60  # not a timing assertion: a bound on "never"
        while counts(services, issue).sent == 0 and time.monotonic() < wait_until:
            time.sleep(0.1)
        assert counts(services, issue).sent == 1
        assert dispatcher.stats.ambiguous == 1
    finally:
        dispatcher.stop.set()
        running.join()
        services.close()


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data", "data_end"])
def test_connection_dropped_at_each_stage_is_retried_not_lost(smtp_services, smtp_server, stage):
    issue = prepare_send(smtp_services, 3)
    smtp_server.drop(stage, after=1)
    run_worker(smtp_services, concurrency=1)
    later = utcnow() + dt.timedelta(minutes=10)
    run_worker(smtp_services, concurrency=1, clock=lambda: later)
    c = counts(smtp_services, issue)
    assert (c.sent, c.pending, c.failed) == (3, 0, 0)
    assert sorted(set(smtp_server.recipients())) == [f"user{i}@example.jp" for i in range(3)]


def test_relay_refusing_the_sender_stops_the_run_and_keeps_everything_queued(smtp_services, smtp_server):
    issue = prepare_send(smtp_services, 4)
    smtp_server.fail_next("mail", 553, "5.7.1 sender not allowed", times=None)
    with pytest.raises(TransportError, match="refused the sender"):
        run_worker(smtp_services)
    c = counts(smtp_services, issue)
    assert (c.queued, c.sending, c.failed, c.sent) == (4, 0, 0, 0)
    with smtp_services.session() as session:
        assert set(session.scalars(select(Delivery.attempts))) == {0}


def test_give_up_after_the_lifetime(smtp_services, smtp_server):
    issue = prepare_send(smtp_services, 1)
    smtp_server.fail_rcpt("user0@example.jp", 450, "4.2.0 mailbox busy")
    lifetime = smtp_services.config.retry.lifetime_seconds
    run_worker(smtp_services)
    assert counts(smtp_services, issue).pending == 1
    later = utcnow() + dt.timedelta(seconds=lifetime + 60)
    done: list[int] = []
    run_worker(smtp_services, clock=lambda: later, progress=done.append)
    c = counts(smtp_services, issue)
    assert (c.failed, c.pending) == (1, 0)
    # `worker --once`'s progress bar counts it done, as it does a refusal (it stopped one short)
    assert sum(done) == 1


@pytest.mark.parametrize("fault", ["greylisted", "dropped"])
def test_the_lifetime_counts_from_the_first_failed_try_not_from_the_queue(smtp_services, smtp_server, fault):
    """Queued before 年末年始 and first tried after it (a send window, a relay down): the first 4xx
    or drop failed the message at once, with no retry, because the queue time counted against
    [retry] lifetime_seconds. A greylisting server (common at ISPs and universities) lost the reader
    the issue."""
    issue = prepare_send(smtp_services, 1)
    if fault == "greylisted":
        smtp_server.fail_rcpt("user0@example.jp", 451, "4.7.1 Greylisted, try again in 60 seconds", times=1)
    else:
        smtp_server.drop("rcpt")
    lifetime = smtp_services.config.retry.lifetime_seconds
    first_try = utcnow() + dt.timedelta(seconds=lifetime + 3600)
    run_worker(smtp_services, clock=lambda: first_try)
    c = counts(smtp_services, issue)
    assert (c.failed, c.pending) == (0, 1)
    with smtp_services.session() as session:  # retried soon, as at any first failure
        assert session.scalar(select(Delivery.next_attempt_at)) <= first_try + dt.timedelta(minutes=5)
    run_worker(smtp_services, clock=lambda: first_try + dt.timedelta(minutes=10))
    c = counts(smtp_services, issue)
    assert (c.sent, c.failed, c.pending) == (1, 0, 0)
    assert smtp_server.recipients() == ["user0@example.jp"]


def _turns(limiter: RateLimiter, now: list[float], count: int) -> list[float]:
    """When `count` turns are taken, a sender waiting as long as the limiter says each time and
    each message done as its turn comes (the clock moved on: an hour of limits in no time,
    nothing patched globally)."""
    times: list[float] = []
    while len(times) < count:
        wait = limiter.take_turn()
        if wait > 0:
            now[0] += wait
        else:
            limiter.done()
            times.append(now[0])
    return times


def test_rate_limiter_never_exceeds_the_limit_in_any_window():
    now = [0.0]
    limiter = RateLimiter(5, 12, clock=lambda: now[0])
    times = _turns(limiter, now, 13)
    for start in times:  # (spaced 0.2 s apart, the sixth lands on 1.0 give or take a float's last bit)
        assert sum(1 for t in times if start <= t < start + 1.0 - 1e-9) <= 5
    assert times[:12] == sorted(times[:12]) and times[11] < 3600
    # The thirteenth message waits for the hourly window to move on: an hour after the first.
    assert times[12] == pytest.approx(3600)


def _take_turns(limiter: RateLimiter, times: int, taken) -> None:  # type: ignore[no-untyped-def]
    for _ in range(times):
        if limiter.take_turn() == 0:
            limiter.done()
            with taken.get_lock():
                taken.value += 1


def test_processes_forked_after_a_shared_limiter_share_its_limit():
    """`worker --processes`: 5 an hour is 5 for all the processes together, not 5 each, and the
    hour already sent is counted once however many processes start."""
    context = multiprocessing.get_context("fork")
    limiter = RateLimiter(0, 5, context=context)
    limiter.prime([60.0, 120.0])
    limiter.prime([60.0, 120.0])  # a second dispatcher starting on the same limiter
    taken = context.Value("i", 0)
    processes = [context.Process(target=_take_turns, args=(limiter, 5, taken)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert taken.value == 3
    assert limiter.take_turn() > 0  # the parent's view is the same memory


def _hold_the_lock(limiter: RateLimiter, holding) -> None:  # type: ignore[no-untyped-def]
    limiter.lock.acquire()
    holding.set()
    time.sleep(60)


def test_a_sender_killed_holding_the_shared_limiter_stops_the_others_instead_of_hanging_them():
    """kill -9 (the OOM killer) of a process inside the limiter's lock: that lock is never
    released; the others must get an error that stops the worker, not wait for ever."""
    limiter = RateLimiter(10, 0, context=multiprocessing.get_context("fork"), lock_seconds=0.5)
    _dead_holder(limiter)
    outcome: list[BaseException | bool] = []

    def take() -> None:
        try:
            outcome.append(limiter.take_turn() == 0)
        except MailmagError as exc:
            outcome.append(exc)

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    taker.join(10)
    assert not taker.is_alive(), "the sender hangs on a lock nobody will release"
    assert isinstance(outcome[0], MailmagError) and "died holding it" in str(outcome[0])


def _dead_holder(limiter: RateLimiter) -> None:
    """A process killed with -9 while it holds `limiter`'s shared lock."""
    context = multiprocessing.get_context("fork")
    holding = context.Event()
    holder = context.Process(target=_hold_the_lock, args=(limiter, holding))
    holder.start()
    assert holding.wait(10)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()


def test_a_worker_stopped_by_a_dead_process_lock_hands_its_claim_back_at_once(smtp_services, smtp_server):
    """The lock error stops the worker; the rows it had claimed go back to the queue now, so a
    `worker --once` right after sends them, not one lease (300 s by default) later."""
    issue = prepare_send(smtp_services, 6)
    limiter = RateLimiter(1000, 0, context=multiprocessing.get_context("fork"), lock_seconds=0.3)
    _dead_holder(limiter)
    dispatcher = make_dispatcher(smtp_services, make_transport(smtp_services.config), concurrency=2,
                                 limiter=limiter)
    with pytest.raises(MailmagError, match="died holding it"):
        dispatcher.run(once=True)
    assert not smtp_server.messages
    left = counts(smtp_services, issue)
    assert (left.queued, left.sending, left.sent) == (6, 0, 0)
    run_worker(smtp_services)
    assert counts(smtp_services, issue).sent == 6 and len(smtp_server.messages) == 6


def test_the_per_second_limit_is_spread_over_the_second_not_a_burst():
    """10 a second is one every 0.1 s: a burst of 10 at the start of each second reaches the relay
    with the previous second's tail inside the relay's own second (the attack counted 13)."""
    now = [0.0]
    times = _turns(RateLimiter(10, 0, clock=lambda: now[0]), now, 30)
    # one every 0.1 s, and each second's ten a second after the last second's: never an eleventh
    assert times == pytest.approx([i // 10 + i % 10 / 10 for i in range(30)])
    start = now[0]
    times = [t - start for t in _turns(RateLimiter(2.5, 0, clock=lambda: now[0]), now, 6)]
    assert times == pytest.approx([0, 0.4, 0.8, 1.2, 1.6, 2.0])  # never 4 inside a second


def test_a_per_second_limit_whose_tenths_do_not_divide_the_second_keeps_the_second():
    """25 a second is 2 every 0.08 s: 12.5 such tenths in a second let 26 in. Never more than 25
    in any second, and still spread: never 3 inside 0.08 s."""
    now = [0.0]
    times = _turns(RateLimiter(25, 0, clock=lambda: now[0]), now, 100)
    window = 1.0
    assert max(sum(1 for t in times if start <= t < start + window - 1e-9) for start in times) == 25
    assert all(later - earlier >= 0.08 - 1e-9 for earlier, later in zip(times, times[2:], strict=False))
    assert times[-1] < 4 * window  # and the 100 went in four such seconds: the limit, not less


def test_a_turn_counts_from_when_its_message_is_done_not_from_when_it_was_taken():
    """1 a second, and a message the relay answers 0.5 s after its turn: the next may not go 1 s
    after that turn (0.5 s after the relay counted the first), but 1 s after the first was done."""
    now = [0.0]
    limiter = RateLimiter(1, 0, clock=lambda: now[0])
    assert limiter.take_turn() == 0
    now[0] = 0.1
    assert limiter.take_turn() > 0
    now[0] = 0.5
    limiter.done()
    now[0] = 0.6
    assert limiter.take_turn() == pytest.approx(0.9)
    now[0] = 1.5
    assert limiter.take_turn() == 0


def test_turns_in_flight_fill_the_second_but_the_tenths_spread_the_turns_as_taken():
    """2 a second. Two messages in flight may each reach the relay at any moment: a third waits
    for them, and then for a second after the first was done. The tenths (one per 0.5 s) count
    turns as taken: behind a relay that answers slowly, connections still overlap."""
    now = [0.0]
    limiter = RateLimiter(2, 0, clock=lambda: now[0])
    assert limiter.take_turn() == 0
    now[0] = 0.5
    assert limiter.take_turn() == 0  # half a second after the first turn, though it is not done
    now[0] = 1.0
    assert limiter.take_turn() == pytest.approx(IN_FLIGHT_WAIT_SECONDS)
    now[0] = 1.2
    limiter.done()  # the first, at last
    now[0] = 1.3
    assert limiter.take_turn() == pytest.approx(0.9)  # the second may arrive now: a second after 1.2


def test_a_slow_message_does_not_bring_the_relays_next_second_closer(smtp_services, smtp_server,
                                                                     owned_services):
    """2 a second, and the second message's RCPT answered 0.4 s late, so it reaches the relay 0.4 s
    after its turn: counted from the turns, the relay saw 3 messages inside 0.63 s."""
    services = owned_services(smtp_server.configure(smtp_services.config, rate_per_second=2.0))
    issue = prepare_send(services, 5)
    smtp_server.delay("rcpt", 0.4, after=1)
    run_worker(services, concurrency=1)
    assert counts(services, issue).sent == 5
    arrivals = [message.at for message in smtp_server.messages]
    assert max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals) == 2


def test_a_restarted_worker_counts_the_last_hour_as_sent_when_it_was_sent():
    """5 an hour, 5 sent 50 min ago: the next may go in 10 min, not in an hour."""
    now = [1000.0]
    limiter = RateLimiter(0, 5, clock=lambda: now[0])
    limiter.prime([3000.0] * 5)
    assert limiter.take_turn() > 0
    assert limiter.take_turn() == pytest.approx(600)  # the wait, no turn taken
    now[0] += 600
    assert limiter.take_turn() == 0
    # mail "sent" in the future (a clock stepped back, a node's clock ahead) counts as sent now
    ahead = RateLimiter(0, 1, clock=lambda: now[0])
    ahead.prime([-86400.0])
    assert ahead.take_turn() == pytest.approx(3600)


def test_send_window_holds_the_queue_at_night(smtp_services, smtp_server, owned_services):
    """With a window, a delivery due at 3 a.m. JST waits; at 10:00 on a sending day it goes."""
    from mailmag.config import ScheduleConfig
    from mailmag.delivery.window import window_open

    services = owned_services(smtp_services.config.replace(schedule=ScheduleConfig(send_window_enabled=True)))
    zone, day = services.config.zone, utcnow().astimezone(services.config.zone).date()
    morning = dt.datetime.combine(day, dt.time(10, 0), tzinfo=zone)
    while morning <= utcnow() or not window_open(morning, services.config):
        morning += dt.timedelta(days=1)  # the next weekday that is no holiday, from whenever this runs
    night = morning - dt.timedelta(hours=7)  # 03:00 JST the same day
    with time_machine.travel(night - dt.timedelta(minutes=5), tick=False):
        issue = prepare_send(services, 2)
    with services.session() as session:
        assert outbox.due_count(session, night) == 2  # due: only the window can hold it back
    run_worker(services, clock=lambda: night)
    assert smtp_server.recipients() == []
    assert counts(services, issue).queued == 2
    run_worker(services, clock=lambda: morning)
    assert sorted(smtp_server.recipients()) == ["user0@example.jp", "user1@example.jp"]
    assert counts(services, issue).sent == 2


@pytest.mark.slow  # seconds of real leases at 2 msg/s
def test_a_batch_never_outlives_its_lease(smtp_services, smtp_server, owned_services):
    """At 2 msg/s with a 2 s lease, a second worker arriving after the lease must not find
    rows the first is still sending (it would take them over and both would send them)."""
    import threading
    import time

    from mailmag.config import DispatchConfig, SmtpConfig

    config = smtp_services.config
    smtp = SmtpConfig(**{**vars(config.smtp), "rate_per_second": 2.0})
    services = owned_services(config.replace(smtp=smtp, dispatch=DispatchConfig(lease_seconds=2)))
    issue = prepare_send(services, 8)
    first = threading.Thread(target=run_worker, args=(services,), kwargs={"concurrency": 1})
    claimed = time.monotonic()
    first.start()
    while time.monotonic() < claimed + 2.2:  # the first worker's first lease has expired by now
        time.sleep(0.1)
    # The race this test is about: the first worker still sending when the second arrives.
    # 8 messages at 2/s take 3.5 s at least, so a slow machine only widens the overlap.
    overlapped = first.is_alive() and len(smtp_server.recipients()) < 8
    run_worker(services, concurrency=1)
    first.join()
    run_worker(services, concurrency=1)  # whatever was handed back
    assert overlapped
    assert sorted(smtp_server.recipients()) == [f"user{i}@example.jp" for i in range(8)]
    assert counts(services, issue).sent == 8


def test_a_message_held_back_carries_the_date_it_is_sent_not_the_one_it_was_built(smtp_services, smtp_server):
    """Messages are built a few at a time ahead of their turn; one whose turn comes more than
    Ahead.MAX_AGE later (a rate limit, a slow relay) is built again with the time it goes."""
    prepare_send(smtp_services, 3)
    # forward from now (which a moved test clock sets): the queued rows are due by then
    start = utcnow().replace(microsecond=0) + dt.timedelta(days=1)
    with time_machine.travel(start, tick=True) as traveller:
        # each message is sent two minutes after the one before it
        run_worker(smtp_services, concurrency=1, progress=lambda _n: traveller.shift(dt.timedelta(minutes=2)))
    dates = [email.utils.parsedate_to_datetime(email.message_from_bytes(m.data)["Date"])
             for m in smtp_server.messages]
    assert [round((d - start).total_seconds() / 60) for d in dates] == [0, 2, 4]


def _leave_and_come_back(services: Services, address: str, *, back: bool = True) -> None:
    """The reader unsubscribes (the footer link) and, with `back`, takes it back at once (取り消す)."""
    with services.session() as session:
        reader = session.scalar(select(Subscriber).where(Subscriber.email == address))
        subscribers.unsubscribe(session, reader, Consent("web"))
        if back:
            sending.take_back_unsubscribe(session, services.config, reader, Consent("web"))


@pytest.mark.parametrize("back", ["before_the_worker_saw_it", "after_the_worker_let_go"])
def test_a_reader_who_came_back_during_the_send_gets_the_message_held_for_them(
        smtp_services, smtp_server, back):
    """helper-56: the reader left while a worker held their message in its claimed batch, and took
    the unsubscribe back (取り消す) before the worker reached it, or after it had seen the row
    cancelled and moved on: active again, and the message stayed cancelled, never sent."""
    issue = prepare_send(smtp_services, 4)
    smtp_server.delay("rcpt", 0.8, after=1)  # user1's: the worker reads its held rows again after it
    accepted: list[int] = []

    def meanwhile(_n: int) -> None:
        accepted.append(1)
        if len(accepted) == 1:  # user0's accepted: user2's row is in the worker's batch
            _leave_and_come_back(smtp_services, "user2@example.jp", back=back == "before_the_worker_saw_it")
        elif len(accepted) == 3 and back == "after_the_worker_let_go":  # user3's: user2's was skipped
            with smtp_services.session() as session:
                reader = session.scalar(select(Subscriber).where(Subscriber.email == "user2@example.jp"))
                assert sending.take_back_unsubscribe(session, smtp_services.config, reader, Consent("web"))

    run_worker(smtp_services, concurrency=1, progress=meanwhile)
    assert sorted(smtp_server.recipients()) == [f"user{i}@example.jp" for i in range(4)]
    c = counts(smtp_services, issue)
    assert (c.sent, c.cancelled, c.pending) == (4, 0, 0)


def test_a_deferral_for_a_reader_who_left_and_came_back_meanwhile_is_retried(smtp_services, smtp_server):
    """helper-56: the reader left and came back while the relay was answering their RCPT with a
    451: the deferral found the row cancelled, so it stayed cancelled for good ("cancelled while
    sending"), though the reader was active again."""
    issue = prepare_send(smtp_services, 2)
    smtp_server.fail_rcpt("user1@example.jp", 451, "4.3.0 try later", times=1, delay=1.0)

    def meanwhile(_n: int) -> None:  # after user0's: user1's RCPT is on the wire for a second
        if not hasattr(meanwhile, "timer"):
            meanwhile.timer = threading.Timer(0.3, _leave_and_come_back, (smtp_services, "user1@example.jp"))
            meanwhile.timer.start()

    dispatcher = run_worker(smtp_services, concurrency=1, progress=meanwhile)
    meanwhile.timer.join()
    assert (dispatcher.stats.deferred, dispatcher.stats.cancelled) == (1, 0)
    c = counts(smtp_services, issue)
    assert (c.sent, c.queued, c.cancelled) == (1, 1, 0)


def _rate_limited(smtp_services, owned_services, per_second: float,  # type: ignore[no-untyped-def]
                  per_hour: int = 0) -> Services:
    from mailmag.config import SmtpConfig

    config = smtp_services.config
    smtp = SmtpConfig(**{**vars(config.smtp), "rate_per_second": per_second, "rate_per_hour": per_hour})
    return owned_services(config.replace(smtp=smtp))


@pytest.mark.slow  # real waits of the rate limiter: ~4 s
def test_an_opt_out_while_the_message_waits_for_the_rate_limiter_is_honoured(smtp_services, smtp_server,
                                                                               owned_services):
    """At 0.5 msg/s each message waits ~2 s for the limiter; a subscriber who opts out one
    second into their message's wait must not receive it (found by an outside attack: the
    held check ran before the wait, and the message went 1 s after the opt-out)."""
    services = _rate_limited(smtp_services, owned_services, 0.5)
    issue = prepare_send(services, 3)
    opted_out = threading.Event()

    def opt_out_during_the_next_wait(_n: int) -> None:
        if opted_out.is_set():
            return
        opted_out.set()

        def opt_out() -> None:
            with services.session() as session:
                subscriber = session.scalar(select(Subscriber).where(Subscriber.email == "user1@example.jp"))
                subscribers.unsubscribe(session, subscriber, Consent("cli"))

        threading.Timer(1.0, opt_out).start()

    run_worker(services, concurrency=1, progress=opt_out_during_the_next_wait)
    assert sorted(smtp_server.recipients()) == ["user0@example.jp", "user2@example.jp"]
    c = counts(services, issue)
    assert (c.sent, c.cancelled, c.pending) == (2, 1, 0)


@pytest.mark.slow  # real waits of the rate limiter: ~8 s
def test_a_message_held_back_by_the_rate_limiter_is_dated_when_it_goes(smtp_services, smtp_server,
                                                                        owned_services, monkeypatch):
    """The age of a message built ahead is judged after the limiter's wait: at 0.25 msg/s each
    message waits ~4 s after its turn came, and must carry the time it goes, not that of its
    turn (found by an outside attack: Dates up to 80 s old at a low rate)."""
    from mailmag.delivery.dispatch import Ahead

    monkeypatch.setattr(Ahead, "MAX_AGE", dt.timedelta(seconds=1))
    services = _rate_limited(smtp_services, owned_services, 0.25)
    prepare_send(services, 3)
    went: list[dt.datetime] = []
    run_worker(services, concurrency=1, progress=lambda _n: went.append(dt.datetime.now(dt.UTC)))
    dates = [email.utils.parsedate_to_datetime(email.message_from_bytes(m.data)["Date"])
             for m in smtp_server.messages]
    assert len(dates) == 3
    assert all(abs((at - date).total_seconds()) < 2.5 for at, date in zip(went, dates, strict=True))


@pytest.mark.slow  # a second of real waiting for the opt-out check
def test_rows_taken_away_spend_no_turn_of_the_hourly_limit(smtp_services, smtp_server, owned_services):
    """3 messages an hour; the issue is cancelled after its first message. The rows the worker
    no longer holds must not spend the hour's other turns (found by an outside attack: the run
    then waited an hour for a turn, with nothing left to send)."""
    from mailmag.delivery.dispatch import HELD_CHECK_SECONDS

    services = _rate_limited(smtp_services, owned_services, 0.0, per_hour=3)
    issue = prepare_send(services, 6)

    def cancel_after_the_first(_n: int) -> None:
        with services.session() as session:
            if session.get(Issue, issue.id).status == "sending":
                transitions.cancel_issue(session, session.get(Issue, issue.id))
        time.sleep(HELD_CHECK_SECONDS + 0.1)  # the worker's view of its rows is due for a refresh

    dispatcher = make_dispatcher(services, make_transport(services.config), concurrency=1,
                                 progress=cancel_after_the_first)
    run = threading.Thread(target=dispatcher.run, kwargs={"once": True})
    run.start()
    run.join(timeout=30)  # an hour when the turns are spent
    waited_for_a_turn = run.is_alive()
    dispatcher.stop.set()
    run.join()
    assert not waited_for_a_turn and not dispatcher.stats.held_back  # no turn of the limit was spent
    assert smtp_server.recipients() == ["user0@example.jp"]
    c = counts(services, issue)
    assert (c.sent, c.cancelled, c.pending) == (1, 5, 0)


def test_once_leaves_what_the_hourly_limit_holds_for_a_later_run(smtp_services, smtp_server, owned_services):
    """`worker --once` with the hour's turns spent ends at once and says when the next may go,
    instead of waiting up to an hour; nothing is left claimed."""
    services = _rate_limited(smtp_services, owned_services, 0.0, per_hour=3)
    issue = prepare_send(services, 6)
    dispatcher = make_dispatcher(services, make_transport(services.config), concurrency=2)
    run = threading.Thread(target=dispatcher.run, kwargs={"once": True})
    run.start()
    run.join(timeout=30)  # an hour before
    waited = run.is_alive()
    dispatcher.stop.set()
    run.join()
    assert not waited
    assert len(smtp_server.recipients()) == 3 and dispatcher.stats.sent == 3
    assert "rate_per_hour = 3" in dispatcher.stats.held_back and "about 60 min" in dispatcher.stats.held_back
    c = counts(services, issue)
    assert (c.sent, c.queued, c.sending) == (3, 3, 0)


def test_a_restart_counts_what_a_killed_worker_may_have_sent_against_the_hour(smtp_services, smtp_server,
                                                                               owned_services):
    """3 an hour. A worker killed (kill -9) between the relay's reply and the result's commit
    leaves its row `sending`, then marked ambiguous when its lease passes: the restarted worker
    counts it as sent, or the relay gets 4 in the hour (found by an outside attack: 33 at 30)."""
    services = _rate_limited(smtp_services, owned_services, 0.0, per_hour=3)
    issue = prepare_send(services, 8)
    with services.session() as session:
        outbox.claim(session, "killed-worker:1", 2, utcnow(), 300)  # it had sent the first, maybe
        session.commit()
    dispatcher = make_dispatcher(services, make_transport(services.config), concurrency=1)
    dispatcher.run(once=True)
    assert dispatcher.stats.sent == 2 and "rate_per_hour = 3" in dispatcher.stats.held_back
    with services.session() as session:  # its lease has passed: the row is queued, marked
        outbox.expire_leases(session, utcnow() + dt.timedelta(seconds=301), 5, max_copies=5)
        session.commit()
        assert len(outbox.unrecorded_since(session, utcnow() - dt.timedelta(hours=1), utcnow())) == 1
    again = make_dispatcher(services, make_transport(services.config), concurrency=1)
    again.run(once=True)
    assert again.stats.sent == 0 and len(smtp_server.messages) == 2
    c = counts(services, issue)
    assert (c.sent, c.queued) == (2, 6)


def test_a_restart_counts_a_message_lost_after_its_final_dot_against_the_hour(smtp_services, smtp_server,
                                                                               owned_services):
    """3 an hour; the relay keeps the first message but the connection drops before its reply.
    That message may have gone, so it spends a turn, and a restarted worker counts it as well
    (found by an outside attack: three runs in a row sent 52 at 30 an hour)."""
    services = _rate_limited(smtp_services, owned_services, 0.0, per_hour=3)
    issue = prepare_send(services, 8)
    smtp_server.drop("after_data")
    first = make_dispatcher(services, make_transport(services.config), concurrency=1)
    first.run(once=True)
    assert (first.stats.ambiguous, first.stats.sent, len(smtp_server.messages)) == (1, 2, 3)
    again = make_dispatcher(services, make_transport(services.config), concurrency=1)
    again.run(once=True)
    assert again.stats.sent == 0 and "rate_per_hour = 3" in again.stats.held_back
    assert len(smtp_server.messages) == 3
    c = counts(services, issue)
    assert (c.sent, c.queued) == (2, 6)


def test_a_recipient_whose_message_cannot_be_built_fails_alone(smtp_services, smtp_server):
    issue = prepare_send(smtp_services, 3)
    with smtp_services.session() as session:
        # As if written by an older version or by hand: a line break cannot enter a header.
        session.execute(
            Subscriber.__table__.update().where(Subscriber.email == "user1@example.jp")
            .values(name="山田\n太郎")
        )
    run_worker(smtp_services)
    c = counts(smtp_services, issue)
    assert (c.sent, c.failed, c.pending) == (2, 1, 0)
    with smtp_services.session() as session:
        row = session.scalar(select(Delivery).where(Delivery.email == "user1@example.jp"))
        assert row.last_reply.startswith("cannot build the message")
        # Not the address's fault: it stays subscribed.
        assert session.scalar(select(Subscriber.status).where(Subscriber.id == row.subscriber_id)) == "active"
    assert "user1@example.jp" not in smtp_server.recipients()


def test_a_clock_jump_longer_than_a_lease_takes_no_live_lease(config, smtp_server, caplog):
    """helper-66 F6: every lease was stamped on the old clock, so a jump forward past
    [dispatch] lease_seconds while sending made the worker's own live leases look expired: the
    message on the other connection went back to the queue and out again, marked "may have
    arrived twice". Expiry now waits one lease after a jump, while live leases are renewed."""
    from mailmag import db

    config = dataclasses.replace(config, dispatch=dataclasses.replace(config.dispatch, lease_seconds=60,
                                                                      batch_size=1))
    services = Services(smtp_server.configure(config, rate_per_second=0.0, throttle_seconds=0.1))
    db.init_db(services.engine)
    issue = prepare_send(services, 8)
    smtp_server.delay("data_end", 0.3, times=None)  # each connection holds a lease most of the time
    ahead = [dt.timedelta(0)]

    def jump(_count: int) -> None:  # the clock jumps 10 min forward once the first message is in
        ahead[0] = dt.timedelta(minutes=10)

    run_worker(services, clock=lambda: utcnow() + ahead[0], progress=jump)
    c = counts(services, issue)
    assert (c.sent, c.queued, c.failed) == (8, 0, 0)
    assert sorted(smtp_server.recipients()) == sorted(f"user{i}@example.jp" for i in range(8))
    with services.session() as session:
        assert session.scalar(select(func.count()).where(Delivery.lease_expiries > 0)) == 0
    assert "the system clock jumped forward by 10 min" in caplog.text
    services.close()


def test_small_clock_steps_do_not_hold_a_dead_workers_lease():
    """A clock stepped forward by a few seconds again and again (a hypervisor's time sync) held
    lease expiry for good, so a killed worker's rows were never taken over. A live lease keeps
    three quarters of a lease, so only a jump of half a lease or more holds expiry."""
    hold = ExpiryHold(60)
    start = utcnow()
    for step in range(1, 6):  # +5 s every look, far more often than once a lease
        hold.see(start + dt.timedelta(seconds=5 * step))
        assert hold.may_expire()
    hold.see(start + dt.timedelta(seconds=25 + 40))  # 40 s at once: two thirds of a lease
    assert not hold.may_expire()


def test_clock_jumps_that_add_up_to_a_lease_take_no_live_lease(config, smtp_server, caplog):
    """helper-69 F3: each jump was judged alone, so three of 25 s in a moment (each under half of
    a 60 s lease) made a live lease look expired, and its message went twice. They add up."""
    from mailmag import db

    config = dataclasses.replace(config, dispatch=dataclasses.replace(config.dispatch, lease_seconds=60,
                                                                      batch_size=1))
    services = Services(smtp_server.configure(config, rate_per_second=0.0, throttle_seconds=0.1))
    db.init_db(services.engine)
    issue = prepare_send(services, 8)
    smtp_server.delay("data_end", 4.0)  # the first message is on the wire while the clock jumps
    smtp_server.delay("data_end", 0.1, times=None)
    ahead = [dt.timedelta(0)]

    def jump(count: int) -> None:  # +25 s after each of the first three messages
        if count <= 3:
            ahead[0] += dt.timedelta(seconds=25)

    run_worker(services, clock=lambda: utcnow() + ahead[0], progress=jump)
    assert sorted(smtp_server.recipients()) == sorted(f"user{i}@example.jp" for i in range(8))
    assert counts(services, issue).sent == 8
    with services.session() as session:
        assert session.scalar(select(func.count()).where(Delivery.lease_expiries > 0)) == 0
    assert "the system clock jumped forward by" in caplog.text
    services.close()


def test_an_idle_worker_looks_again_soon_after_a_clock_step_back(config, smtp_server):
    """helper-69 F2: a worker that found the queue's next tries 9 h ahead (stamped on a clock set
    back since) slept for its whole poll, though `run` moves them back within a second. After
    seeing a step back, it looks again within two seconds."""
    from mailmag import db

    services = Services(smtp_server.configure(config, rate_per_second=0.0))
    db.init_db(services.engine)
    issue = prepare_send(services, 2)
    with services.session() as session:
        session.execute(update(Delivery).values(next_attempt_at=utcnow() + dt.timedelta(seconds=1)))
    behind = [dt.timedelta(0)]
    dispatcher = make_dispatcher(services, make_transport(services.config), concurrency=1,
                                 clock=lambda: utcnow() - behind[0])
    worker = threading.Thread(target=dispatcher.run, kwargs={"poll_seconds": 60.0}, daemon=True)
    worker.start()
    time.sleep(0.5)  # it found nothing due yet, and waits a second for the rows
    behind[0] = dt.timedelta(hours=9)  # set back meanwhile
    time.sleep(1.5)  # it woke at 1 s and found them 9 h ahead
    with services.session() as session:  # what `run` does within a second of the step
        outbox.queue_set_back(session, dt.timedelta(hours=9), utcnow() - behind[0])
    deadline = time.monotonic() + 20  # the old worker slept its 60 s poll
    while counts(services, issue).sent < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    dispatcher.stop.set()
    worker.join(timeout=30)
    assert counts(services, issue).sent == 2
    assert sorted(smtp_server.recipients()) == ["user0@example.jp", "user1@example.jp"]
    services.close()


def test_a_worker_started_just_after_a_jump_leaves_live_leases_alone(config, smtp_server):
    """helper-67: a worker started after a jump forward (a cron `worker --once`, a restart) had no
    reading from before it, and its first claim took the live worker's leases, stamped on the
    old clock: two messages went twice. The live worker renews at once after a jump, and a new
    worker's first expiry waits a moment for that."""
    from mailmag import db

    config = dataclasses.replace(config, dispatch=dataclasses.replace(config.dispatch, lease_seconds=60,
                                                                      batch_size=4))
    services = Services(smtp_server.configure(config, rate_per_second=0.0, throttle_seconds=0.1))
    db.init_db(services.engine)
    issue = prepare_send(services, 12)
    smtp_server.delay("data_end", 0.3, times=None)
    ahead = [dt.timedelta(0)]
    first_in = threading.Event()
    live = threading.Thread(target=run_worker, args=(services,), daemon=True, kwargs={
        "concurrency": 1, "clock": lambda: utcnow() + ahead[0], "progress": lambda _n: first_in.set()})
    live.start()
    assert first_in.wait(10)
    ahead[0] = dt.timedelta(minutes=10)  # the machine's clock jumps; the live worker holds a batch
    time.sleep(0.1)
    run_worker(services, concurrency=1, clock=lambda: utcnow() + ahead[0])  # started after the jump
    live.join(timeout=30)
    assert sorted(smtp_server.recipients()) == sorted(f"user{i}@example.jp" for i in range(12))
    assert counts(services, issue).sent == 12
    with services.session() as session:
        assert session.scalar(select(func.count()).where(Delivery.lease_expiries > 0)) == 0
    services.close()
