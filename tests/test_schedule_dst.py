"""Automatic issues across daylight-saving changes: one firing per wall-clock moment, never a past one.

Every instant is given explicitly; the zones are America/New_York (EDT→EST on 2027-11-07 at
02:00, EST→EDT on 2027-03-14 at 02:00) and Europe/Berlin (CEST→CET on 2027-10-31 at 03:00,
CET→CEST on 2027-03-28 at 02:00).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import pickle
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from test_schedule import add_auto, add_subscribers, approve_news, issue_count

from mailmag.models import JobRun
from mailmag.scheduling import jobs
from mailmag.scheduling.when import Crontab, cron_trigger, fire_times, next_fire_time
from mailmag.services import Services

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def local(zone: ZoneInfo, *args: int, fold: int = 0) -> dt.datetime:
    """A wall-clock reading in `zone` as aware UTC; fold=1 is the second pass of a repeated hour."""
    return dt.datetime(*args, tzinfo=zone, fold=fold).astimezone(dt.UTC)


def ny(*args: int, fold: int = 0) -> dt.datetime:
    return local(NEW_YORK, *args, fold=fold)


def berlin(*args: int, fold: int = 0) -> dt.datetime:
    return local(BERLIN, *args, fold=fold)


def shown(moments: list[dt.datetime], zone: ZoneInfo) -> list[str]:
    return [m.astimezone(zone).strftime("%m-%d %H:%M %Z") for m in moments]


def bounded(moments: Iterator[dt.datetime]) -> list[dt.datetime]:
    """At most 5 000 moments: a walk that goes back in time would otherwise never end."""
    return list(itertools.islice(moments, 5000))


def firings(cron: str, zone: ZoneInfo, after: dt.datetime, until: dt.datetime) -> list[str]:
    return shown(bounded(fire_times(cron_trigger(cron, zone), after, until)), zone)


# --- clocks go back: a repeated hour fires once --------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "zone", "after", "until", "expected"),
    [
        ("30 1 * * *", NEW_YORK, ny(2027, 11, 6, 12, 0), ny(2027, 11, 8, 12, 0),
         ["11-07 01:30 EDT", "11-08 01:30 EST"]),
        ("0 * * * *", NEW_YORK, ny(2027, 11, 7, 0, 30), ny(2027, 11, 7, 4, 0),
         ["11-07 01:00 EDT", "11-07 02:00 EST", "11-07 03:00 EST", "11-07 04:00 EST"]),
        ("*/20 * * * *", NEW_YORK, ny(2027, 11, 7, 1, 0, fold=1), ny(2027, 11, 7, 2, 40),
         ["11-07 02:00 EST", "11-07 02:20 EST", "11-07 02:40 EST"]),
        ("30 2 * * *", BERLIN, berlin(2027, 10, 30, 12, 0), berlin(2027, 11, 1, 12, 0),
         ["10-31 02:30 CEST", "11-01 02:30 CET"]),
        ("0 * * * *", BERLIN, berlin(2027, 10, 31, 1, 30), berlin(2027, 10, 31, 4, 0),
         ["10-31 02:00 CEST", "10-31 03:00 CET", "10-31 04:00 CET"]),
    ],
)
def test_a_moment_in_the_repeated_hour_fires_at_its_first_occurrence_only(cron, zone, after, until, expected):
    assert firings(cron, zone, after, until) == expected


def test_every_minute_from_inside_the_repeated_hour_goes_forward_only():
    """The issue's case: from 01:00 EST, the firings are 02:00 EST onwards, each once."""
    trigger = cron_trigger("* * * * *", NEW_YORK)
    after = ny(2027, 11, 7, 1, 0, fold=1)
    moments = bounded(fire_times(trigger, after, ny(2027, 11, 7, 2, 30)))
    assert moments[0] == ny(2027, 11, 7, 2, 0)
    assert len(moments) == 31 == len(set(moments))
    assert all(a < b for a, b in itertools.pairwise(moments))
    assert bounded(fire_times(trigger, after, ny(2027, 11, 7, 1, 59, fold=1))) == []


# --- clocks go forward: a skipped moment fires once, when the clocks jump -------------------------


@pytest.mark.parametrize(
    ("cron", "zone", "after", "until", "expected"),
    [
        ("30 2 * * *", NEW_YORK, ny(2027, 3, 13, 12, 0), ny(2027, 3, 15, 12, 0),
         ["03-14 03:00 EDT", "03-15 02:30 EDT"]),
        ("0 * * * *", NEW_YORK, ny(2027, 3, 14, 0, 30), ny(2027, 3, 14, 4, 0),
         ["03-14 01:00 EST", "03-14 03:00 EDT", "03-14 04:00 EDT"]),
        ("* * * * *", NEW_YORK, ny(2027, 3, 14, 1, 58), ny(2027, 3, 14, 3, 2),
         ["03-14 01:59 EST", "03-14 03:00 EDT", "03-14 03:01 EDT", "03-14 03:02 EDT"]),
        ("30 2,3 * * *", NEW_YORK, ny(2027, 3, 14, 0, 0), ny(2027, 3, 14, 12, 0),
         ["03-14 03:00 EDT", "03-14 03:30 EDT"]),
        ("15 2 * * *", BERLIN, berlin(2027, 3, 27, 12, 0), berlin(2027, 3, 29, 12, 0),
         ["03-28 03:00 CEST", "03-29 02:15 CEST"]),
        ("0 9 * * *", BERLIN, berlin(2027, 3, 27, 12, 0), berlin(2027, 3, 29, 12, 0),
         ["03-28 09:00 CEST", "03-29 09:00 CEST"]),
    ],
)
def test_a_skipped_moment_fires_once_at_the_instant_the_clocks_jump(cron, zone, after, until, expected):
    assert firings(cron, zone, after, until) == expected


def test_the_next_firing_after_a_change_is_the_real_next_one():
    assert next_fire_time(cron_trigger("30 1 * * *", NEW_YORK), ny(2027, 11, 7, 1, 30, fold=1)) == \
        ny(2027, 11, 8, 1, 30)
    assert next_fire_time(cron_trigger("30 2 * * *", NEW_YORK), ny(2027, 3, 14, 1, 0)) == \
        ny(2027, 3, 14, 3, 0)
    # At or after: a firing at `now` itself is the next one (as `schedule add` shows it).
    assert next_fire_time(cron_trigger("0 9 * * *", BERLIN), berlin(2027, 3, 29, 9, 0)) == \
        berlin(2027, 3, 29, 9, 0)


# --- the APScheduler trigger of `mailmag run`'s stored jobs ------------------------------------


def test_the_stored_trigger_goes_strictly_forward_and_survives_pickling():
    """APScheduler asks for the firing after the previous one until it passes `now`: that must end."""
    trigger = pickle.loads(pickle.dumps(cron_trigger("0 * * * *", NEW_YORK)))
    assert isinstance(trigger, Crontab)
    assert str(trigger) == "crontab[0 * * * *] in America/New_York"
    now = ny(2027, 11, 7, 3, 30)
    moment = trigger.get_next_fire_time(None, ny(2027, 11, 7, 0, 0))
    seen = []
    while moment is not None and moment <= now and len(seen) < 10:
        seen.append(moment)
        moment = trigger.get_next_fire_time(moment, now)
    assert shown(seen, NEW_YORK) == [
        "11-07 00:00 EDT", "11-07 01:00 EDT", "11-07 02:00 EST", "11-07 03:00 EST"]


# --- the property: the oracle walks the wall clock minute by minute -------------------------------


TRANSITIONS = [  # (zone, an instant near one of its clock changes)
    ("America/New_York", ny(2027, 11, 7, 1, 0)), ("America/New_York", ny(2027, 3, 14, 1, 0)),
    ("Europe/Berlin", berlin(2027, 10, 31, 2, 0)), ("Europe/Berlin", berlin(2027, 3, 28, 1, 0)),
    ("Australia/Lord_Howe", local(ZoneInfo("Australia/Lord_Howe"), 2027, 4, 4, 1, 0)),  # 30 minutes
    ("America/Santiago", local(ZoneInfo("America/Santiago"), 2027, 9, 4, 23, 0)),  # at midnight
    ("Pacific/Apia", local(ZoneInfo("Pacific/Apia"), 2011, 12, 29, 22, 0)),  # a whole day skipped
    ("Asia/Tokyo", local(ZoneInfo("Asia/Tokyo"), 2027, 1, 1, 0, 0)),  # no change at all
]
_MINUTE = dt.timedelta(minutes=1)


def _values(low: int, high: int, most: int) -> st.SearchStrategy[frozenset[int] | None]:
    return st.none() | st.frozensets(st.integers(low, high), min_size=1, max_size=most)


def _field(values: frozenset[int] | None) -> str:
    return "*" if values is None else ",".join(str(v) for v in sorted(values))


def _oracle(minutes, hours, weekdays, zone: ZoneInfo, after: dt.datetime, until: dt.datetime):  # type: ignore[no-untyped-def]
    """Walk UTC minute by minute; fire when the wall clock first reaches a named reading."""
    def named(reading: dt.datetime) -> bool:
        return ((minutes is None or reading.minute in minutes) and (hours is None or reading.hour in hours)
                and (weekdays is None or (reading.weekday() + 1) % 7 in weekdays))

    def reading(instant: dt.datetime) -> dt.datetime:
        return instant.astimezone(zone).replace(tzinfo=None)

    instant = (after - dt.timedelta(hours=3)).replace(second=0, microsecond=0)  # longer than any fold here
    highest = reading(instant)
    result = []
    while instant < until:
        instant += _MINUTE
        now_reading = reading(instant)
        newly = now_reading
        fire = False
        while newly > highest:  # every reading first reached at this instant
            fire = fire or named(newly)
            newly -= _MINUTE
        if now_reading > highest:
            highest = now_reading
            if fire and after < instant <= until:
                result.append(instant)
    return result


@settings(max_examples=80, deadline=None)
@given(
    place=st.sampled_from(TRANSITIONS),
    offset=st.integers(-28 * 60, 2 * 60),  # the change falls inside the 30 hours, or `after` is just past it
    second=st.integers(0, 59),
    minutes=_values(0, 59, 3),
    hours=_values(0, 23, 3),
    weekdays=_values(0, 6, 2),
)
def test_firings_are_the_first_instants_the_wall_clock_reaches_each_named_moment(
    place, offset, second, minutes, hours, weekdays
):
    zone_name, near = place
    zone = ZoneInfo(zone_name)
    after = near + dt.timedelta(minutes=offset, seconds=second)
    until = after + dt.timedelta(hours=30)
    cron = f"{_field(minutes)} {_field(hours)} * * {_field(weekdays)}"
    moments = bounded(fire_times(cron_trigger(cron, zone), after, until))
    assert all(a < b for a, b in itertools.pairwise(moments))
    assert moments == _oracle(minutes, hours, weekdays, zone, after, until)


# --- end to end: the scheduler's due firings, the clock given explicitly -------------------------


def in_zone(services: Services, zone: ZoneInfo) -> Services:
    """The same database with [mailmag] timezone = zone."""
    config = services.config.replace(mailmag=dataclasses.replace(services.config.mailmag, timezone=zone.key))
    other = Services(config)
    other.__dict__["engine"] = services.engine
    return other


def recorded(services: Services) -> list[tuple[dt.datetime, str]]:
    with services.session() as session:
        return [tuple(row) for row in session.execute(
            select(JobRun.scheduled_for, JobRun.outcome).order_by(JobRun.id))]


def test_every_minute_across_the_fall_back_fires_each_wall_clock_minute_once(services):
    """`* * * * *` added at 01:58:50 EDT: nothing fires again in the repeated hour, though items wait."""
    services = in_zone(services, NEW_YORK)
    add_subscribers(services, 1)  # an automatic issue nobody would get is skipped
    approve_news(services, 1)
    add_auto(services, "* * * * *", ny(2027, 11, 7, 1, 58, 50))
    (fired,) = jobs.fire_due_autos(services, ny(2027, 11, 7, 1, 59, 5))
    assert (fired.scheduled_for, fired.outcome) == (ny(2027, 11, 7, 1, 59), "sent")
    approve_news(services, 1)  # any firing now would compose and send a second issue
    for minute in (0, 1, 17, 58, 59):
        assert jobs.fire_due_autos(services, ny(2027, 11, 7, 1, minute, 5, fold=1)) == []
    assert issue_count(services) == 1
    (fired,) = jobs.fire_due_autos(services, ny(2027, 11, 7, 2, 0, 5))
    assert (fired.scheduled_for, fired.outcome) == (ny(2027, 11, 7, 2, 0), "sent")
    assert issue_count(services) == 2
    assert recorded(services) == [(ny(2027, 11, 7, 1, 59), "sent"), (ny(2027, 11, 7, 2, 0), "sent")]


@pytest.mark.parametrize(
    ("zone", "cron", "first", "repeat", "next_day"),
    [
        (NEW_YORK, "30 1 * * *", ny(2027, 11, 7, 1, 30), ny(2027, 11, 7, 1, 30, fold=1),
         ny(2027, 11, 8, 1, 30)),
        (BERLIN, "30 2 * * *", berlin(2027, 10, 31, 2, 30), berlin(2027, 10, 31, 2, 30, fold=1),
         berlin(2027, 11, 1, 2, 30)),
    ],
)
def test_a_daily_issue_in_the_repeated_hour_is_sent_once(services, zone, cron, first, repeat, next_day):
    services = in_zone(services, zone)
    add_subscribers(services, 1)  # an automatic issue nobody would get is skipped
    approve_news(services, 1)
    add_auto(services, cron, first - dt.timedelta(days=1))
    second = dt.timedelta(seconds=5)
    assert [f.outcome for f in jobs.fire_due_autos(services, first + second)] == ["sent"]
    approve_news(services, 1)
    assert jobs.fire_due_autos(services, repeat + second) == []
    with services.session() as session:
        (info,) = jobs.list_auto(session, services.config, repeat + second)
        assert info.next_run == next_day
    assert [f.outcome for f in jobs.fire_due_autos(services, next_day + second)] == ["sent"]
    assert issue_count(services) == 2
    assert recorded(services) == [(first, "sent"), (next_day, "sent")]


@pytest.mark.parametrize(
    ("zone", "cron", "created", "jump"),
    [
        (NEW_YORK, "30 2 * * *", ny(2027, 3, 13, 12, 0), ny(2027, 3, 14, 3, 0)),
        (BERLIN, "30 2 * * *", berlin(2027, 3, 27, 12, 0), berlin(2027, 3, 28, 3, 0)),
    ],
)
def test_a_daily_issue_in_the_skipped_hour_is_sent_once_when_the_clocks_jump(
    services, zone, cron, created, jump
):
    services = in_zone(services, zone)
    add_subscribers(services, 1)  # an automatic issue nobody would get is skipped
    approve_news(services, 1)
    add_auto(services, cron, created)
    assert jobs.fire_due_autos(services, jump - dt.timedelta(seconds=1)) == []
    (fired,) = jobs.fire_due_autos(services, jump + dt.timedelta(seconds=5))
    assert (fired.scheduled_for, fired.outcome) == (jump, "sent")
    approve_news(services, 1)
    assert jobs.fire_due_autos(services, jump + dt.timedelta(minutes=45)) == []
    assert issue_count(services) == 1
    assert recorded(services) == [(jump, "sent")]


def test_a_time_the_clocks_skip_is_refused_not_moved_an_hour():
    """helper-101: `issues send --at "2027-03-14 02:30"` in New York was scheduled for 03:30 EDT,
    an hour after the time typed, without a word. A moment written with its offset still stands."""
    from mailmag.errors import InvalidInput
    from mailmag.scheduling.when import parse_when

    before = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
    with pytest.raises(InvalidInput, match="2027-03-14 02:30 does not exist in America/New_York") as refused:
        parse_when("2027-03-14 02:30", NEW_YORK, before)
    assert "存在しない時刻" in refused.value.ja
    assert parse_when("2027-03-14 03:30", NEW_YORK, before) == ny(2027, 3, 14, 3, 30)
    with_offset = parse_when("2027-03-14 02:30-05:00", NEW_YORK, before)
    assert with_offset == dt.datetime(2027, 3, 14, 7, 30, tzinfo=dt.UTC)
    assert parse_when("2027-11-07 01:30", NEW_YORK, before) == ny(2027, 11, 7, 1, 30)  # the first of two
    assert parse_when("2027-03-28 02:30", ZoneInfo("Asia/Tokyo"), before) == dt.datetime(
        2027, 3, 27, 17, 30, tzinfo=dt.UTC)  # Japan keeps no daylight saving time
