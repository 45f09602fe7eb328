"""Times people type: `--at` moments and crontab expressions, read in the configured zone."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from mailmag.content import dates
from mailmag.errors import InvalidInput

_MOMENT = re.compile(
    r"(?P<y>\d{4})[-/](?P<mo>\d{1,2})[-/](?P<d>\d{1,2})[T ]+(?P<h>\d{1,2}):(?P<mi>\d{2})"
    r"(?::(?P<s>\d{2}))?\s*(?P<tz>Z|[+-]\d{2}:?\d{2})?"
)
# A date as items take it, then a time: 2030年12月2日 9:00, R12.12.2 9時, 12/2 9:30.
_DATE_TIME = re.compile(r"(?P<date>.+?)\s*(?P<h>\d{1,2})(?::(?P<mi>\d{2})|時(?:(?P<mi_ja>\d{1,2})分)?)")
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_HELP = ("use 'YYYY-MM-DD HH:MM' (seconds and a UTC offset such as +09:00 are optional), or a date "
         "as items take it and a time: 2030年12月2日 9:00, R12.12.2 9:00, 12/2 9:00")


def shown(value: dt.datetime, zone: ZoneInfo) -> str:
    """A moment as people read it: '2026-12-01 09:00 JST'."""
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def parse_when(text: str, zone: ZoneInfo, now: dt.datetime) -> dt.datetime:
    """An ISO 8601 moment in the future as aware UTC; without an offset it is local to `zone`.

    Full-width digits (２０２６－１２－０１ ０９：００) and slashes are accepted as typed in Japan.
    """
    cleaned = unicodedata.normalize("NFKC", text).strip().replace("\u2212", "-")
    match = _MOMENT.fullmatch(cleaned)
    if match:
        parts = {key: int(value) for key, value in match.groupdict(default="0").items() if key != "tz"}
        try:
            value = dt.datetime(parts["y"], parts["mo"], parts["d"], parts["h"], parts["mi"], parts["s"],
                                tzinfo=_offset(match["tz"]) or zone)
        except ValueError as exc:
            raise InvalidInput(f"{text!r} is not a real date and time ({exc}): {_HELP}") from exc
    else:
        value = _item_date_and_time(text, cleaned, zone, now)
    value = value.astimezone(dt.UTC)
    if value <= now:
        raise InvalidInput(
            f"{shown(value, zone)} is in the past (it is now {shown(now, zone)}): give a later time"
        )
    return value


def _item_date_and_time(text: str, cleaned: str, zone: ZoneInfo, now: dt.datetime) -> dt.datetime:
    """A date in the forms items take (content.dates), then H:MM or H時M分, local to `zone`.

    A date without a year is the next one to come: read from half a year ahead, the nearest
    such date lies between yesterday and a year from now.
    """
    match = _DATE_TIME.fullmatch(cleaned)
    if match is None:
        raise InvalidInput(f"cannot read {text!r} as a date and time: {_HELP}")
    ahead = now.astimezone(zone).date() + dt.timedelta(days=182)
    try:
        day = dates.parse_date(match["date"], today=ahead)
        at = dt.time(int(match["h"]), int(match["mi"] or match["mi_ja"] or 0))
    except ValueError as exc:
        raise InvalidInput(f"{text!r} is not a real time ({exc}): {_HELP}") from exc
    except InvalidInput as exc:
        raise InvalidInput(f"cannot read {text!r} as a date and time ({exc})") from None
    return dt.datetime.combine(day, at, tzinfo=zone)


def _offset(text: str | None) -> dt.tzinfo | None:
    if not text:
        return None
    if text == "Z":
        return dt.UTC
    digits = text[1:].replace(":", "")
    delta = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    if delta >= dt.timedelta(hours=24):
        raise InvalidInput(f"UTC offset {text!r} is out of range: {_HELP}")
    return dt.timezone(-delta if text[0] == "-" else delta)


def cron_trigger(expression: str, zone: ZoneInfo) -> CronTrigger:
    """A crontab line ('0 9 1,15 * *': minute hour day month weekday) as an APScheduler trigger.

    Weekdays count as in crontab (0 or 7 = Sunday), not as APScheduler 3 does (0 = Monday).
    Crontab fires when EITHER a restricted day of month OR weekday matches, APScheduler when
    both do; rather than guess, a line restricting both is refused.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise InvalidInput(
            f"invalid cron expression {expression!r}: give five fields, minute hour day month "
            "weekday, e.g. \"0 9 1,15 * *\" (09:00 on the 1st and 15th)"
        )
    minute, hour, day, month, weekday = fields
    if day != "*" and weekday != "*":
        raise InvalidInput(
            f"invalid cron expression {expression!r}: restrict the day of month or the weekday, not both"
        )
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_weekdays(weekday), timezone=zone)
    except ValueError as exc:
        raise InvalidInput(f"invalid cron expression {expression!r}: {exc}") from exc


def _weekdays(field: str) -> str:
    """Crontab's weekday field as APScheduler 3 day names ('1-5' → 'mon,tue,wed,thu,fri')."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        base, _, step = part.partition("/")
        if base == "*":
            first, last = 0, 6
        else:
            low, _, high = base.partition("-")
            first = _weekday_number(low, field)
            last = _weekday_number(high, field) if high else (6 if step else first)
            if last == 0 and first > 0:
                last = 7  # "5-0" / "5-7": Friday to Sunday
        if (step and (not step.isdigit() or int(step) == 0)) or last < first:
            raise InvalidInput(f"invalid weekday field {field!r} in the cron expression: use 0-7 or sun-sat")
        days.update(n % 7 for n in range(first, last + 1, int(step or 1)))
    return ",".join(_CRON_DAYS[n] for n in sorted(days))


def _weekday_number(token: str, field: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token)
    if token[:3] in _CRON_DAYS:
        return _CRON_DAYS.index(token[:3])
    raise InvalidInput(f"invalid weekday field {field!r} in the cron expression: use 0-7 or sun-sat")


def fire_times(trigger: CronTrigger, after: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
    """The trigger's moments in (after, until], oldest first, as aware UTC."""
    tick = dt.timedelta(microseconds=1)  # the trigger rounds up to whole seconds
    moment = trigger.get_next_fire_time(None, after + tick)
    while moment is not None and moment <= until:
        yield moment.astimezone(dt.UTC)
        moment = trigger.get_next_fire_time(None, moment + tick)


def next_fire_time(trigger: CronTrigger, now: dt.datetime) -> dt.datetime | None:
    moment = trigger.get_next_fire_time(None, now)
    return moment.astimezone(dt.UTC) if moment else None
