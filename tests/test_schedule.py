"""Timed sends, automatic issues and send windows, on SQLite and PostgreSQL, with explicit clocks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from zoneinfo import ZoneInfo

import pytest
from conftest import one_database
from sqlalchemy import func, select

from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import Config, ScheduleConfig
from mailmag.content import issues, items, orgs
from mailmag.delivery.window import next_window_start, window_open
from mailmag.errors import ConfigError, InvalidInput, NotFound, StateError
from mailmag.models import AutoSchedule, Delivery, Issue, JobRun, Rendering
from mailmag.scheduling import jobs
from mailmag.scheduling.when import cron_trigger, next_fire_time, parse_when
from mailmag.services import Services

JST = ZoneInfo("Asia/Tokyo")
NOW = dt.datetime(2026, 11, 20, 1, 0, tzinfo=dt.UTC)  # Fri 2026-11-20 10:00 JST


def jst(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=JST).astimezone(dt.UTC)


def with_schedule(services: Services, **settings) -> Services:  # type: ignore[no-untyped-def]
    """The same database with other [schedule] settings."""
    config = services.config.replace(schedule=dataclasses.replace(services.config.schedule, **settings))
    other = Services(config)
    other.__dict__["engine"] = services.engine  # share the engine (and the test's database)
    return other


def add_subscribers(services: Services, n: int) -> None:
    with services.session() as session:
        for i in range(n):
            address = subscribers.parse_address(f"member{i}@example.jp")
            subscribers.add(session, address, Consent("cli", "test"))


def approve_news(services: Services, n: int) -> list[int]:
    with services.session() as session:
        org = session.scalar(select(orgs.Org).where(orgs.Org.code == "collabo")) or orgs.add(
            session, "collabo", "中国地域産学官コラボレーションセンター")
        added = [items.submit(session, org, "news", {"title": f"お知らせ{i}", "body": f"本文{i}です。"})
                 for i in range(n)]
        items.approve(session, [item.id for item in added])
        return [item.id for item in added]


def draft_issue(services: Services) -> int:
    approve_news(services, 1)
    with services.session() as session:
        return issues.compose(session, services.config).issue.id


def scheduled_issue(services: Services, at: dt.datetime) -> int:
    number = draft_issue(services)
    with services.session() as session:
        jobs.schedule_send(session, issues.get(session, number), at, now=at - dt.timedelta(hours=1),
                           config=services.config, allow_empty=True)
    return number


def state(services: Services, number: int) -> tuple[str, int, list[tuple[str, str]]]:
    """The issue's status, its deliveries, and the job runs recorded for it."""
    with services.session() as session:
        issue = issues.get(session, number)
        deliveries = session.scalar(select(func.count()).where(Delivery.issue_id == issue.id))
        runs = session.execute(select(JobRun.job_id, JobRun.outcome).order_by(JobRun.id)).all()
        return issue.status, deliveries, [tuple(r) for r in runs]


# --- typing a moment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01 09:00", jst(2026, 12, 1, 9, 0)),
        ("2026-12-01T09:00:30", jst(2026, 12, 1, 9, 0, 30)),
        ("2026-12-01 09:00+00:00", dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)),
        ("2026-12-01T00:00Z", dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.UTC)),
        ("２０２６－１２－０１　０９：００", jst(2026, 12, 1, 9, 0)),
        ("2026/12/1 9:05", jst(2026, 12, 1, 9, 5)),
        ("15:30", jst(2026, 11, 20, 15, 30)),  # a time alone is today's (helper-81: 'the date 0')
        ("１５：３０", jst(2026, 11, 20, 15, 30)),
        ("15時5分", jst(2026, 11, 20, 15, 5)),
        ("15:30:20", jst(2026, 11, 20, 15, 30, 20)),  # helper-84: 'cannot read the date 15:
        # helper-87: days named from today, and 午前/午後 and 半, were refused
        ("明日 9:00", jst(2026, 11, 21, 9, 0)),
        ("あさって午前10時", jst(2026, 11, 22, 10, 0)),
        ("午後3時半", jst(2026, 11, 20, 15, 30)),
        ("本日 午後0時5分", jst(2026, 11, 20, 12, 5)),
        ("tomorrow 08:15", jst(2026, 11, 21, 8, 15)),
        ("12/2 午後1時", jst(2026, 12, 2, 13, 0)),
    ],
)
def test_a_typed_moment_is_read_in_the_configured_zone(text, expected):
    assert parse_when(text, JST, NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-20 09:59",
         "2026-11-20 09:59 JST is in the past (it is now 2026-11-20 10:00 JST): give a later time"),
        ("2026-12-01", "cannot read '2026-12-01' as a date and time: use 'YYYY-MM-DD HH:MM'"),
        ("2026-02-30 09:00", "'2026-02-30 09:00' is not a real date and time"),
        ("next friday", "cannot read 'next friday' as a date and time"),
        ("04:56", "2026-11-20 04:56 JST is in the past (it is now 2026-11-20 10:00 JST): give a later time "
                  "(for tomorrow, give its date: 2026-11-21 04:56)"),
        ("25:00", "'25:00' is not a real time"),
        ("明日 午後12時",
         "'明日 午後12時': 午後 goes with an hour from 0 to 11 (for noon or midnight write 12:00 or 0:00)"),
        ("午前9時", "2026-11-20 09:00 JST is in the past"),
        ("明日", "cannot read '明日' as a date and time"),
    ],
)
def test_a_moment_in_the_past_or_unreadable_is_refused(text, message):
    with pytest.raises(InvalidInput) as caught:
        parse_when(text, JST, NOW)
    assert str(caught.value).startswith(message)


# --- timed sends --------------------------------------------------------------------------------


def test_schedule_then_cancel_moves_the_issue_between_draft_and_scheduled(services):
    number = draft_issue(services)
    at = jst(2026, 12, 1, 9, 0)
    with services.session() as session:
        jobs.schedule_send(session, issues.get(session, number), at,
                               now=NOW, config=services.config, allow_empty=True)
    with services.session() as session:
        issue = issues.get(session, number)
        assert (issue.status, issue.scheduled_at) == ("scheduled", at)
        jobs.unschedule_send(session, issue)
    assert jobs.fire_due_sends(services, at + dt.timedelta(seconds=1)) == []
    assert state(services, number) == ("draft", 0, [])


def test_only_a_draft_can_be_scheduled_and_only_a_scheduled_issue_unscheduled(services):
    number = draft_issue(services)
    with services.session() as session:
        issue = issues.get(session, number)
        with pytest.raises(StateError, match=f"issue {number} is draft, not scheduled"):
            jobs.unschedule_send(session, issue)
        with pytest.raises(StateError, match="cannot be scheduled in the past"):
            jobs.schedule_send(session, issue, NOW - dt.timedelta(seconds=1),
                               now=NOW, config=services.config, allow_empty=True)
        issue.status = "sent"
        with pytest.raises(StateError, match=f"issue {number} is sent; only a draft or scheduled issue"):
            jobs.schedule_send(session, issue, NOW + dt.timedelta(hours=1),
                               now=NOW, config=services.config, allow_empty=True)
        assert issue.scheduled_at is None


def test_a_due_send_fires_once(services):
    add_subscribers(services, 3)
    at = jst(2026, 12, 1, 9, 0)
    number = scheduled_issue(services, at)
    assert jobs.fire_due_sends(services, at - dt.timedelta(seconds=1)) == []
    assert state(services, number) == ("scheduled", 0, [])
    (fired,) = jobs.fire_due_sends(services, at + dt.timedelta(seconds=5))
    assert (fired.outcome, fired.detail) == (
        "sent", f"issue {number} (第1号) due at 2026-12-01 09:00 JST: 3 recipients queued")
    assert jobs.fire_due_sends(services, at + dt.timedelta(seconds=10)) == []
    assert state(services, number) == ("sending", 3, [(f"send-issue-{number}", "sent")])


@pytest.mark.parametrize(("late", "expected"),
                         [(3599, ("sending", 2, "sent")), (3601, ("draft", 0, "missed"))])
def test_a_send_whose_time_passed_fires_within_the_grace_period_else_is_missed(services, late, expected):
    add_subscribers(services, 2)
    at = jst(2026, 12, 1, 9, 0)
    number = scheduled_issue(services, at)
    (fired,) = jobs.fire_due_sends(services, at + dt.timedelta(seconds=late))
    status, deliveries, runs = state(services, number)
    assert (status, deliveries, runs[0][1]) == expected
    assert len(runs) == 1
    if fired.outcome == "missed":
        assert fired.detail == (
            f"issue {number} was due at 2026-12-01 09:00 JST but mailmag run was not running until "
            f"2026-12-01 10:00 JST (more than grace_seconds = 3600): not sent, it is a draft again; "
            f"send it with `mailmag issues send {number}`"
        )
        with services.session() as session:
            assert jobs.last_send_run(session, issues.get(session, number)).outcome == "missed"


def test_a_send_missed_when_the_clock_jumped_goes_when_scheduled_again_for_that_moment(services):
    """helper-66: the clock jumped over 09:00 (missed), then was set back; the secretariat scheduled
    the issue again for 09:00, as the log advises. The old record of that (job, moment) made every
    poll take it as fired already: it stayed "scheduled" for ever, saying nothing."""
    add_subscribers(services, 2)
    at = jst(2026, 12, 1, 9, 0)
    number = scheduled_issue(services, at)
    (fired,) = jobs.fire_due_sends(services, at + dt.timedelta(hours=2))  # the jump
    assert fired.outcome == "missed"
    with services.session() as session:  # after the step back, before 09:00 again
        jobs.schedule_send(session, issues.get(session, number), at, now=at - dt.timedelta(minutes=5),
                           config=services.config, allow_empty=True)
    (fired,) = jobs.fire_due_sends(services, at + dt.timedelta(seconds=5))
    assert fired.outcome == "sent"
    assert state(services, number)[:2] == ("sending", 2)


def test_a_missed_send_is_news_until_the_issue_is_scheduled_again(services):
    """After a miss, the secretariat schedules the issue again: `issues status` said "last timed
    send: missed" under the new schedule, and once that was cancelled too, the console's
    dashboard showed the old miss again as the reason the issue is a draft."""
    at = jst(2026, 12, 1, 9, 0)
    number = scheduled_issue(services, at)
    missed_at = at + dt.timedelta(hours=2)
    (fired,) = jobs.fire_due_sends(services, missed_at)
    assert fired.outcome == "missed"

    def news() -> tuple[str, str | None, list[int]]:
        with services.session() as session:
            issue = issues.get(session, number)
            run = jobs.last_send_run(session, issue)
            return issue.status, run and run.outcome, list(jobs.sends_not_made(session))

    assert news() == ("draft", "missed", [number])
    again = jst(2026, 12, 2, 9, 0)
    with services.session() as session:
        jobs.schedule_send(session, issues.get(session, number), again,
                           now=missed_at + dt.timedelta(minutes=5), config=services.config, allow_empty=True)
    assert news() == ("scheduled", None, [])
    with services.session() as session:
        issues.cancel(session, number)
    assert news() == ("draft", None, [])
    # scheduled once more and missed once more: that miss is news
    with services.session() as session:
        jobs.schedule_send(session, issues.get(session, number), again,
                           now=missed_at + dt.timedelta(minutes=10), config=services.config, allow_empty=True)
    (fired,) = jobs.fire_due_sends(services, again + dt.timedelta(hours=2))
    assert fired.outcome == "missed"
    assert news() == ("draft", "missed", [number])
    # sent by hand, as the miss's record advises: the miss is history (helper-56)
    with services.session() as session:
        issues.start_sending(session, services.config, issues.get(session, number), allow_empty=True)
    assert news() == ("sending", None, [])


def test_a_send_that_cannot_go_out_is_recorded_as_failed_and_back_to_draft(services):
    at = jst(2026, 12, 1, 9, 0)
    number = scheduled_issue(services, at)
    with services.session() as session:
        session.execute(Rendering.__table__.delete())
    (fired,) = jobs.fire_due_sends(services, at)
    # the job's record says what to do in words; each front adds how (command, button)
    assert (fired.outcome, fired.detail) == (
        "failed", f"issue {number} is not rendered: render the issue again")
    assert state(services, number) == ("draft", 0, [(f"send-issue-{number}", "failed")])
    assert jobs.fire_due_sends(services, at + dt.timedelta(minutes=1)) == []


def test_two_pollers_at_the_same_moment_send_once(services):
    add_subscribers(services, 3)
    at = jst(2026, 12, 1, 9, 0)
    number = scheduled_issue(services, at)
    results: list[list[jobs.Fired]] = []
    start = threading.Barrier(2)

    def poll() -> None:
        start.wait()
        results.append(jobs.fire_due_sends(services, at + dt.timedelta(seconds=1)))

    threads = [threading.Thread(target=poll) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0, 1]
    assert state(services, number) == ("sending", 3, [(f"send-issue-{number}", "sent")])


# --- automatic issues ---------------------------------------------------------------------------


def add_auto(services: Services, cron: str, created: dt.datetime) -> int:
    with services.session() as session:
        schedule = jobs.add_auto(session, cron, None, services.config)
        schedule.created_at = created
        return schedule.id


def issue_count(services: Services) -> int:
    with services.session() as session:
        return session.scalar(select(func.count()).select_from(Issue))


def test_crontab_weekdays_count_from_sunday():
    monday_9 = next_fire_time(cron_trigger("0 9 * * 1", JST), NOW)
    assert monday_9 == jst(2026, 11, 23, 9, 0)
    assert next_fire_time(cron_trigger("30 8 * * 0", JST), NOW) == jst(2026, 11, 22, 8, 30)
    assert next_fire_time(cron_trigger("0 9 1,15 * *", JST), NOW) == jst(2026, 12, 1, 9, 0)


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 9 * *", "invalid cron expression '0 9 * *': give five fields, minute hour day month weekday"),
        ("0 25 * * *", "invalid cron expression '0 25 * * *': Error validating expression '25'"),
        ("0 9 1 * 1",
         "invalid cron expression '0 9 1 * 1': restrict the day of month or the weekday, not both"),
        ("0 9 * * 8", "invalid weekday field '8' in the cron expression: use 0-7 or sun-sat"),
    ],
)
@one_database  # a rule of the input, not of the database
def test_a_bad_crontab_line_is_refused_and_nothing_is_added(services, cron, message):
    with services.session() as session, pytest.raises(InvalidInput) as caught:
        jobs.add_auto(session, cron, None, services.config)
    assert str(caught.value).startswith(message)
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(AutoSchedule)) == 0


def test_an_automatic_issue_is_composed_from_the_approved_items_and_sent(services):
    add_subscribers(services, 2)
    item_ids = approve_news(services, 2)
    schedule_id = add_auto(services, "0 9 1,15 * *", jst(2026, 11, 20, 8, 0))
    (fired,) = jobs.fire_due_autos(services, jst(2026, 12, 1, 9, 0, 5))
    assert (fired.job_id, fired.scheduled_for) == (f"auto-{schedule_id}", jst(2026, 12, 1, 9))
    assert fired.outcome == "sent"
    assert fired.detail.startswith("issue 1 (第1号) composed from 2 items: 2 recipients queued")
    with services.session() as session:
        issue = issues.get(session, 1)
        assert issue.status == "sending"
        assert [entry.item_id for entry in issue.entries] == item_ids
    assert jobs.fire_due_autos(services, jst(2026, 12, 1, 9, 1)) == []
    assert issue_count(services) == 1


def test_an_automatic_issue_gmail_would_clip_is_kept_as_a_draft_for_a_person(services):
    """helper-90: an automatic issue of 114 KB went to 308 readers; Gmail clips HTML over 102 KB,
    and the footer's unsubscribe link with it. It is now composed and held as a draft."""
    compose = dataclasses.replace(services.config.compose, html_size_limit_kb=1)
    small = services.config.replace(compose=compose)
    clipping = Services(small)
    clipping.__dict__["engine"] = services.engine
    add_subscribers(services, 2)
    approve_news(services, 2)
    add_auto(services, "0 9 1,15 * *", jst(2026, 11, 20, 8, 0))
    (fired,) = jobs.fire_due_autos(clipping, jst(2026, 12, 1, 9, 0, 5))
    assert fired.outcome == "held"
    assert fired.detail.startswith(
        "issue 1 composed from 2 items and kept as a draft, not sent: the ja HTML is ")
    assert "over 1 KB: Gmail clips it" in fired.detail and fired.detail.endswith("`mailmag issues send 1`")
    assert state(services, 1)[:2] == ("draft", 0)  # no delivery queued
    # the next moment composes nothing again: the items wait in the draft
    (later,) = jobs.fire_due_autos(clipping, jst(2026, 12, 15, 9, 0, 5))
    assert later.outcome == "skipped" and issue_count(services) == 1


def test_an_automatic_issues_overdue_hint_names_the_moment_run_would_still_handle(services):
    """helper-91: with moments every 20 minutes and run down, the hint named the first one, past
    grace ("records this as missed instead of doing it"), and run then composed and sent a later
    one. It names the latest still within grace_seconds, and when starting run still sends."""
    add_subscribers(services, 1)
    approve_news(services, 1)
    add_auto(services, "*/20 * * * *", jst(2026, 11, 20, 9, 0))
    now = jst(2026, 11, 20, 10, 35)
    with services.session() as session:
        (info,) = jobs.list_auto(session, services.config, now)
    assert info.overdue is not None and info.overdue.due_at == jst(2026, 11, 20, 10, 20)
    said = info.overdue.describe(now, services.config)
    assert said == ("due at 2026-11-20 10:20 JST and not done: is `mailmag run` running on this database? "
                    "Started by 2026-11-20 11:20 JST ([schedule] grace_seconds after) it still does it "
                    "(moments older than grace_seconds are recorded as missed)")
    fired = jobs.fire_due_autos(services, now)  # run started now: what the hint promised
    assert [f.outcome for f in fired] == ["missed", "sent", "skipped", "skipped"]
    with services.session() as session:
        (done,) = jobs.list_auto(session, services.config, now)
    assert done.overdue is None


def test_a_missed_moment_stays_listed_after_a_later_one_is_sent(services):
    """helper-90: `run` was down at 08:00 and sent 08:02: `schedule list` and the console showed
    only "last sent 08:02"; the miss was in the log alone. Moments of the last week that were
    missed, failed or held are listed beside the last one."""
    add_subscribers(services, 1)
    approve_news(services, 1)
    add_auto(services, "0 9 * * *", jst(2026, 11, 21, 8, 0))
    (missed,) = jobs.fire_due_autos(services, jst(2026, 11, 21, 11, 0))  # run down past grace
    approve_news(services, 1)
    (sent,) = jobs.fire_due_autos(services, jst(2026, 11, 22, 9, 0, 5))
    assert (missed.outcome, sent.outcome) == ("missed", "sent")
    with services.session() as session:
        (info,) = jobs.list_auto(session, services.config, jst(2026, 11, 22, 9, 1))
        assert info.last_run is not None and info.last_run.outcome == "sent"
        troubles = [(run.outcome, run.scheduled_for) for run in info.troubles]
        assert troubles == [("missed", jst(2026, 11, 21, 9))]
        (a_week_on,) = jobs.list_auto(session, services.config, jst(2026, 11, 28, 9, 1))
        assert a_week_on.troubles == []


@pytest.mark.parametrize(("approved", "min_items"), [(0, 1), (2, 3)])
def test_an_automatic_issue_with_too_few_approved_items_is_skipped_with_the_reason(
    services, approved, min_items
):
    services = with_schedule(services, min_items=min_items)
    approve_news(services, approved)
    add_auto(services, "0 9 1,15 * *", jst(2026, 11, 20, 8, 0))
    (fired,) = jobs.fire_due_autos(services, jst(2026, 12, 1, 9, 0, 5))
    assert (fired.outcome, fired.detail) == (
        "skipped",
        f"{approved} approved item(s) not yet in an issue, fewer than [schedule] min_items = {min_items}: "
        "no issue composed",
    )
    assert issue_count(services) == 0


def test_a_moment_the_clock_jumped_over_says_so_and_one_before_the_jump_does_not(services):
    """`run` was running and the clock jumped from 08:50 to 10:30 (node.ClockWatch): the 09:00
    moment was missed (grace: an hour) because of the jump; the day before's, because run was down."""
    approve_news(services, 1)
    add_auto(services, "0 9 * * *", jst(2026, 11, 22, 8, 0))
    jump = (jst(2026, 11, 23, 8, 50), jst(2026, 11, 23, 10, 30))
    fired = jobs.fire_due_autos(services, jst(2026, 11, 23, 10, 30), jump=jump)
    assert [f.outcome for f in fired] == ["missed", "missed"]
    assert fired[0].detail.startswith("due at 2026-11-22 09:00 JST while mailmag run was not running")
    assert fired[1].detail == (
        "due at 2026-11-23 09:00 JST, but the system clock jumped forward from 2026-11-23 08:50 JST to "
        "2026-11-23 10:30 JST while mailmag run was running (more than grace_seconds = 3600): no issue "
        "composed; the approved items wait for the next one")


def test_moments_passed_while_down_are_each_reported_and_the_latest_fires_within_grace(services):
    add_subscribers(services, 1)
    approve_news(services, 1)
    schedule_id = add_auto(services, "0 9 * * *", jst(2026, 11, 20, 8, 0))
    fired = jobs.fire_due_autos(services, jst(2026, 11, 23, 9, 30))
    assert [(f.scheduled_for, f.outcome) for f in fired] == [
        (jst(2026, 11, 20, 9), "missed"), (jst(2026, 11, 21, 9), "missed"), (jst(2026, 11, 22, 9), "missed"),
        (jst(2026, 11, 23, 9), "sent"),
    ]
    assert fired[0].detail.startswith("due at 2026-11-20 09:00 JST while mailmag run was not running")
    assert jobs.fire_due_autos(services, jst(2026, 11, 23, 9, 31)) == []
    with services.session() as session:
        (info,) = jobs.list_auto(session, services.config, jst(2026, 11, 23, 9, 31))
        assert (info.id, info.cron, info.next_run) == (schedule_id, "0 9 * * *", jst(2026, 11, 24, 9))
        assert (info.last_run.outcome, info.last_run.scheduled_for) == ("sent", jst(2026, 11, 23, 9))


def test_after_a_clock_step_back_the_next_moment_listed_is_one_that_fires(services):
    """helper-66 F1: a clock 9 h ahead fired Monday's 09:00; set back to 01:00, `schedule list`
    said the next was 09:00 that day, which had been handled and does not fire again."""
    approve_news(services, 1)
    schedule_id = add_auto(services, "0 9 * * *", jst(2026, 11, 23, 8, 0))
    [fired] = jobs.fire_due_autos(services, jst(2026, 11, 23, 10, 0))  # the clock ahead
    assert fired.scheduled_for == jst(2026, 11, 23, 9)
    set_back = jst(2026, 11, 23, 1, 0)
    assert jobs.fire_due_autos(services, jst(2026, 11, 23, 9, 1)) == []  # 09:00 does not come again
    with services.session() as session:
        (info,) = jobs.list_auto(session, services.config, set_back)
    assert (info.id, info.next_run) == (schedule_id, jst(2026, 11, 24, 9))


def test_a_moment_the_clock_jumped_over_fires_when_it_comes_after_the_clock_is_set_back(services):
    """helper-66 F7: the clock jumped from 08:50 to 18:50 and 09:00 was recorded missed; NTP set it
    back to 08:51, and at 09:00 nothing fired: firing walked on from the missed record. After a
    step back, misses ahead of now are forgotten (node: on the node that runs the scheduler)."""
    approve_news(services, 1)
    add_subscribers(services, 1)
    schedule_id = add_auto(services, "0 9 * * *", jst(2026, 11, 23, 8, 0))
    jump = (jst(2026, 11, 23, 8, 50), jst(2026, 11, 23, 18, 50))
    [missed] = jobs.fire_due_autos(services, jst(2026, 11, 23, 18, 50), jump=jump)
    assert (missed.scheduled_for, missed.outcome) == (jst(2026, 11, 23, 9), "missed")
    with services.session() as session:
        assert jobs.forget_misses_ahead(session, jst(2026, 11, 23, 8, 51)) == 1
    [fired] = jobs.fire_due_autos(services, jst(2026, 11, 23, 9, 0, 30))
    assert (fired.scheduled_for, fired.outcome) == (jst(2026, 11, 23, 9), "sent")
    with services.session() as session:
        (info,) = jobs.list_auto(session, services.config, jst(2026, 11, 23, 9, 1))
    assert (info.id, info.last_run.outcome, info.next_run) == (schedule_id, "sent", jst(2026, 11, 24, 9))


def test_a_miss_before_a_later_handled_moment_stays_in_the_history(services):
    """Forgetting a miss that the last record lies beyond would not fire it, only lose it."""
    approve_news(services, 2)
    add_subscribers(services, 1)
    add_auto(services, "0 9 * * *", jst(2026, 11, 23, 8, 0))
    jump = (jst(2026, 11, 23, 8, 50), jst(2026, 11, 23, 18, 50))
    jobs.fire_due_autos(services, jst(2026, 11, 23, 18, 50), jump=jump)  # 23rd 09:00 missed
    jobs.fire_due_autos(services, jst(2026, 11, 24, 9, 0, 30))  # the next day's fires, on the clock ahead
    with services.session() as session:
        assert jobs.forget_misses_ahead(session, jst(2026, 11, 23, 8, 51)) == 0
        outcomes = session.scalars(select(JobRun.outcome).order_by(JobRun.scheduled_for)).all()
    assert outcomes == ["missed", "sent"]


def test_a_removed_automatic_issue_no_longer_fires(services):
    approve_news(services, 1)
    schedule_id = add_auto(services, "0 9 * * *", jst(2026, 11, 20, 8, 0))
    with services.session() as session:
        jobs.remove_auto(session, schedule_id)
    assert jobs.fire_due_autos(services, jst(2026, 11, 20, 9, 1)) == []
    assert issue_count(services) == 0
    with services.session() as session, pytest.raises(NotFound) as caught:
        jobs.remove_auto(session, schedule_id)
    assert str(caught.value) == f"no automatic issue with id {schedule_id}: see which there are"


# --- send windows -------------------------------------------------------------------------------


def windowed(**settings) -> Config:  # type: ignore[no-untyped-def]
    return Config(schedule=ScheduleConfig(send_window_enabled=True, **settings))


@pytest.mark.parametrize(
    ("now", "opens"),
    [
        (jst(2026, 11, 20, 10, 0), jst(2026, 11, 20, 10, 0)),  # Friday morning: open now
        (jst(2026, 11, 20, 3, 0), jst(2026, 11, 20, 9, 0)),  # 3 a.m.: waits for 9:00
        (jst(2026, 11, 20, 18, 0), jst(2026, 11, 24, 9, 0)),  # Fri evening → Mon 23rd is 勤労感謝の日
        (jst(2026, 11, 3, 12, 0), jst(2026, 11, 4, 9, 0)),  # 文化の日
        (jst(2026, 12, 28, 18, 30), jst(2027, 1, 4, 9, 0)),  # the year-end break
    ],
)
def test_deliveries_wait_for_the_send_window(now, opens):
    config = windowed()
    assert window_open(now, config) is (now == opens)
    assert next_window_start(now, config) == opens
    assert window_open(now, Config()) is True  # no window configured: always open


def test_a_window_without_holidays_or_break_opens_on_those_days():
    config = windowed(skip_holidays=False, year_end_break=[], send_window_days=["mon"],
                      send_window_start="08:30", send_window_end="24:00")
    assert next_window_start(jst(2026, 12, 28, 7, 0), config) == jst(2026, 12, 28, 8, 30)
    assert window_open(jst(2026, 11, 23, 23, 59), config)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"send_window_start": "9am"},
         "[schedule] send_window_start must be a time such as \"09:00\", not '9am'"),
        ({"send_window_start": "18:00", "send_window_end": "09:00"},
         "[schedule] send_window_start must be earlier than send_window_end"),
        ({"send_window_days": ["monday", "funday"]}, "[schedule] send_window_days must list days"),
        ({"year_end_break": ["12-32", "01-03"]}, "[schedule] year_end_break must be two \"MM-DD\" days"),
    ],
)
def test_a_bad_window_setting_is_named(settings, message):
    with pytest.raises(ConfigError) as caught:
        window_open(NOW, windowed(**settings))
    assert str(caught.value).startswith(message)


# --- the commands -------------------------------------------------------------------------------


def test_schedule_add_list_remove(mailmag):
    added = mailmag.ok("schedule", "add", "--cron", "0 9 1,15 * *", "--name", "定期号")
    assert added.output.startswith("automatic issue 1 added: 0 9 1,15 * * for every subscriber (next: ")
    assert added.output.rstrip().endswith(" 09:00 JST)")
    (listed,) = json.loads(mailmag.ok("schedule", "list", "--json").output)
    assert listed["id"] == 1 and listed["name"] == "定期号" and listed["cron"] == "0 9 1,15 * *"
    assert listed["next_run"].endswith("T00:00:00Z") and listed["last_run"] is None  # 09:00 JST, in UTC
    assert mailmag.ok("schedule", "remove", "1").output == "automatic issue 1 removed (定期号)\n"
    assert json.loads(mailmag.ok("schedule", "list", "--json").output) == []
    empty = mailmag.ok("schedule", "list")
    assert (empty.stdout, empty.stderr) == (
        "", "0 automatic issues\nadd one with `mailmag schedule add --cron \"0 9 1,15 * *\"`\n")


def test_schedule_list_names_an_earlier_moment_not_sent(mailmag, config_file):
    from mailmag.config import load_config
    from mailmag.models import utcnow

    mailmag.ok("schedule", "add", "--cron", "0 9 * * *")
    services = Services(load_config(config_file, env={"MAILMAG_SECRET_KEY": "x" * 40}))
    try:
        with services.session() as session:
            session.get(AutoSchedule, 1).created_at = utcnow() - dt.timedelta(days=3)
        fired = jobs.fire_due_autos(services, utcnow())  # run was down for three days
    finally:
        services.close()
    assert len(fired) >= 3 and fired[0].outcome == "missed"
    listed = mailmag.ok("schedule", "list")
    assert "\nautomatic issue 1: " in listed.stderr and " earlier moments of the last 7 days not sent; " \
        "latest missed " in listed.stderr
    (document,) = json.loads(mailmag.ok("schedule", "list", "--json").stdout)
    assert len(document["earlier_troubles"]) >= 2


def test_schedule_mistakes_are_one_line_and_change_nothing(mailmag):
    bad = mailmag("schedule", "add", "--cron", "0 9 * * 8")
    assert bad.exit_code == 1
    assert bad.stderr == "Error: invalid weekday field '8' in the cron expression: use 0-7 or sun-sat\n"
    missing = mailmag("schedule", "remove", "7")
    assert (missing.exit_code, missing.stderr) == (
        1, "Error: no automatic issue with id 7: see which there are (`mailmag schedule list`)\n")
    assert json.loads(mailmag.ok("schedule", "list", "--json").output) == []
    neither = mailmag("run", "--no-scheduler", "--no-worker")
    assert neither.exit_code == 2 and "leave nothing to run" in neither.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"poll_seconds": 0.0}, "[schedule] poll_seconds must be more than 0, not 0.0"),
        ({"grace_seconds": 30}, "[schedule] grace_seconds must be at least twice poll_seconds"),
        ({"send_window_enabled": True, "send_window_end": "8:00"},
         "[schedule] send_window_start must be earlier than send_window_end"),
    ],
)
@one_database  # a rule of the input, not of the database
def test_run_refuses_to_start_with_bad_schedule_settings(mailmag, config_file, settings, message):
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    config_file.write_text(config_file.read_text() + "\n[schedule]\n" + "\n".join(lines) + "\n")
    result = mailmag("run")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.endswith(f" {message}\n")
    assert len(result.stderr.splitlines()) == 1
