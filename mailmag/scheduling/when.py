"""Times people type: `--at` moments and crontab lines, read in the configured zone; when a line fires."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from mailmag.content import dates
from mailmag.errors import InvalidInput

_MOMENT = re.compile(
    r"(?P<y>\d{4})[-/](?P<mo>\d{1,2})[-/](?P<d>\d{1,2})[T ]+(?P<h>\d{1,2}):(?P<mi>\d{2})"
    r"(?::(?P<s>\d{2}))?\s*(?P<tz>Z|[+-]\d{2}:?\d{2})?"
)
# A date as items take it, then a time: 2030年12月2日 9:00, R12.12.2 9時, 12/2 9:30, 明日 午後3時半.
_TIME = (r"(?:(?P<half>午前|午後)\s*)?(?P<h>\d{1,2})"
         r"(?::(?P<mi>\d{2})(?::(?P<s>\d{2}))?|時(?:(?P<half_hour>半)|(?P<mi_ja>\d{1,2})分)?)")
_DATE_TIME = re.compile(r"(?P<date>.+?)\s*" + _TIME)
_TIME_ONLY = re.compile(_TIME)  # today: '04:56' was read as the date '0' and 4:56 (helper-81)
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Days named relative to today (helper-87: `--at 明日 9:00` was refused).
_DAY_WORDS = {"今日": 0, "本日": 0, "today": 0, "明日": 1, "あす": 1, "あした": 1, "tomorrow": 1,
              "明後日": 2, "あさって": 2}
_HELP = ("use 'YYYY-MM-DD HH:MM' (seconds and a UTC offset such as +09:00 are optional), or a date "
         "as items take it and a time: 2030年12月2日 9:00, R12.12.2 9:00, 12/2 9:00, 明日 午後3時; "
         "a time alone is today's")
_HELP_JA = ("「2030-12-02 09:00」「2030年12月2日 9:00」「R12.12.2 9:00」「12/2 9:00」「明日 午後3時」のように"
            "日付と時刻を書いてください（時刻だけなら今日の時刻です）")


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
            raise InvalidInput(f"{text!r} is not a real date and time ({exc}): {_HELP}",
                               ja=f"「{text}」は実在しない日時です。{_HELP_JA}") from exc
    else:
        value = _item_date_and_time(text, cleaned, zone, now)
    if value.year < 1900:  # zoneinfo's local mean time before zones were set; year 1 overflows UTC
        raise _past(text.strip(), zone, now)
    if value.year > 9998:  # 9999-12-31 west of UTC is past what a datetime holds once in UTC
        raise InvalidInput(f"{text.strip()} is too far ahead: give a time before 9999",
                           ja=f"{text.strip()} は先すぎる日時です。9999年より前の日時を指定してください")
    if _skipped(value, zone):
        raise InvalidInput(f"{text.strip()} does not exist in {zone.key}: the clocks skip it (the zone's "
                           "offset from UTC changes then); give a time before or after the skipped one",
                           ja=f"{text.strip()} は {zone.key} では存在しない時刻です（時差の切り替えで時計が"
                              "その時刻を飛ばします）。その前後の時刻を指定してください")
    value = value.astimezone(dt.UTC)
    if value <= now:
        raise _past(shown(value, zone), zone, now, time_only=bool(_TIME_ONLY.fullmatch(cleaned)))
    return value


def _skipped(value: dt.datetime, zone: ZoneInfo) -> bool:
    """A wall-clock reading in `zone` that the clocks jump over (02:30 as daylight saving time
    begins in New York): zoneinfo reads it as an instant later, which was sent then without a word
    (helper-101). A reading with its own offset is an instant already."""
    if value.tzinfo is not zone:
        return False
    return value.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None) != value.replace(tzinfo=None)


def _past(written: str, zone: ZoneInfo, now: dt.datetime, time_only: bool = False) -> InvalidInput:
    # a time alone is today's: 0:10 typed at 23:30 meant tomorrow, which needs its date (helper-84)
    tomorrow = (now.astimezone(zone) + dt.timedelta(days=1)).strftime("%Y-%m-%d")
    hint = f" (for tomorrow, give its date: {tomorrow} {written[11:16]})" if time_only else ""
    hint_ja = f"（明日なら日付も: {tomorrow} {written[11:16]}）" if time_only else ""
    return InvalidInput(f"{written} is in the past (it is now {shown(now, zone)}): give a later time{hint}",
                        ja=f"{written} は過去の日時です（現在 {shown(now, zone)}）。"
                           f"これより後の日時を指定してください{hint_ja}")


def _item_date_and_time(text: str, cleaned: str, zone: ZoneInfo, now: dt.datetime) -> dt.datetime:
    """A date in the forms items take (content.dates) or 明日, then H:MM or (午後)H時(M分|半), local
    to `zone`; a time alone is today's."""
    match = _TIME_ONLY.fullmatch(cleaned) or _DATE_TIME.fullmatch(cleaned)
    if match is None:
        raise InvalidInput(f"cannot read {text!r} as a date and time: {_HELP}",
                           ja=f"「{text}」を日時として読み取れません。{_HELP_JA}")
    today, hour = now.astimezone(zone).date(), _hour(match, text)
    minute = 30 if match["half_hour"] else int(match["mi"] or match["mi_ja"] or 0)
    try:
        day = _day(match["date"], today) if "date" in match.re.groupindex else today
        at = dt.time(hour, minute, int(match["s"] or 0))
    except ValueError as exc:
        raise InvalidInput(f"{text!r} is not a real time ({exc}): {_HELP}",
                           ja=f"「{text}」は実在しない時刻です。{_HELP_JA}") from exc
    except InvalidInput as exc:
        raise InvalidInput(f"cannot read {text!r} as a date and time ({exc})",
                           ja=f"「{text}」を日時として読み取れません（{exc.ja or exc.message}）") from None
    return dt.datetime.combine(day, at, tzinfo=zone)


def _day(written: str, today: dt.date) -> dt.date:
    """明日, or a date as items take it; one without a year is the next one to come: read from half
    a year ahead, the nearest such date lies between yesterday and a year from now."""
    days = _DAY_WORDS.get(written.strip().lower())
    if days is not None:
        return today + dt.timedelta(days=days)
    return dates.parse_date(written, today=today + dt.timedelta(days=182))


def _hour(match: re.Match[str], text: str) -> int:
    """The hour on the 24-hour clock; 午後3時 is 15. 午前12時 means midnight to some and noon to
    others, so 12 is refused with 午前 or 午後 rather than guessed."""
    hour = int(match["h"])
    if match["half"] is None:
        return hour
    if hour >= 12:
        raise InvalidInput(f"{text!r}: {match['half']} goes with an hour from 0 to 11 (for noon or midnight "
                           "write 12:00 or 0:00)",
                           ja=f"「{text}」: {match['half']}の時刻は0時から11時で書いてください"
                              "（正午・深夜0時は 12:00・0:00 と書いてください）")
    return hour + 12 if match["half"] == "午後" else hour


def _offset(text: str | None) -> dt.tzinfo | None:
    if not text:
        return None
    if text == "Z":
        return dt.UTC
    digits = text[1:].replace(":", "")
    delta = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    if delta >= dt.timedelta(hours=24):
        raise InvalidInput(f"UTC offset {text!r} is out of range: {_HELP}",
                           ja=f"「{text}」の時差（UTC からのずれ）が範囲外です。{_HELP_JA}")
    return dt.timezone(-delta if text[0] == "-" else delta)


def cron_trigger(expression: str, zone: ZoneInfo) -> Crontab:
    """A crontab line ('0 9 1,15 * *': minute hour day month weekday) read in `zone`.

    Weekdays count as in crontab (0 or 7 = Sunday), not as APScheduler 3 does (0 = Monday).
    Crontab fires when EITHER a restricted day of month OR weekday matches, APScheduler when
    both do; rather than guess, a line restricting both is refused.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise InvalidInput(
            f"invalid cron expression {expression!r}: give five fields, minute hour day month "
            "weekday, e.g. \"0 9 1,15 * *\" (09:00 on the 1st and 15th)",
            ja=f"crontab の行「{expression}」が正しくありません。"
               "分・時・日・月・曜日の5つの欄を書いてください（例：「0 9 1,15 * *」は毎月1日と15日の9:00）",
        )
    if fields[2] != "*" and fields[4] != "*":
        raise InvalidInput(
            f"invalid cron expression {expression!r}: restrict the day of month or the weekday, not both",
            ja=f"crontab の行「{expression}」が正しくありません。"
               "日と曜日はどちらか一方だけを指定してください",
        )
    return Crontab(" ".join(fields), zone)


def _calendar(expression: str) -> CronTrigger:
    """The wall-clock readings a crontab line names, as a trigger in a zone without DST (UTC)."""
    minute, hour, day, month, weekday = expression.split()
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_weekdays(weekday), timezone=dt.UTC)
    except ValueError as exc:
        raise InvalidInput(f"invalid cron expression {expression!r}: {exc}",
                           ja=f"crontab の行「{expression}」の{_wrong_field_ja(expression)}が正しくありません"
                           ) from exc


_FIELDS_JA = ("分", "時", "日", "月", "曜日")


def _wrong_field_ja(expression: str) -> str:
    """Which field APScheduler refused, as a Japanese page names it (its reason is English)."""
    names = ("minute", "hour", "day", "month", "day_of_week")
    for name, field, field_ja in zip(names, expression.split(), _FIELDS_JA, strict=True):
        value = _weekdays(field) if name == "day_of_week" else field
        try:
            CronTrigger(**{name: value}, timezone=dt.UTC)
        except ValueError:
            return f"{field_ja}の欄「{field}」"
    return "欄"  # each field is valid alone (not met so far): say no more than that


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
            raise InvalidInput(f"invalid weekday field {field!r} in the cron expression: use 0-7 or sun-sat",
                           ja=f"crontab の行の曜日「{field}」が正しくありません（0〜7 か sun〜sat）")
        days.update(n % 7 for n in range(first, last + 1, int(step or 1)))
    return ",".join(_CRON_DAYS[n] for n in sorted(days))


def _weekday_number(token: str, field: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token)
    if token[:3] in _CRON_DAYS:
        return _CRON_DAYS.index(token[:3])
    raise InvalidInput(f"invalid weekday field {field!r} in the cron expression: use 0-7 or sun-sat",
                           ja=f"crontab の行の曜日「{field}」が正しくありません（0〜7 か sun〜sat）")


class Crontab(BaseTrigger):
    """A crontab line read in a zone: one firing per wall-clock moment it names, on absolute instants.

    Clocks that go back repeat an hour: a moment in it fires at its first occurrence only
    (`30 1 * * *` fires at 01:30 EDT, not again at 01:30 EST), and no firing ever comes
    before an earlier one. Clocks that go forward skip an hour: a moment in it fires once at
    the instant the clocks jump, as Vixie cron runs the jobs of a skipped hour at once
    (`30 2 * * *` fires at 03:00 EDT on the day New York springs forward); moments that
    land on the same instant fire once. So firings strictly increase, and a firing is
    exactly the first instant at which the wall clock has reached a named moment.
    It is also the APScheduler trigger of `mailmag run`'s stored jobs.
    """

    def __init__(self, expression: str, zone: ZoneInfo) -> None:
        self.expression, self.zone = expression, zone
        self._readings = _calendar(expression)

    def next_after(self, instant: dt.datetime) -> dt.datetime | None:
        """The first firing strictly after `instant` (aware), as aware UTC; None if there is none."""
        reading = instant.astimezone(self.zone).replace(tzinfo=None)
        candidate = self._readings.get_next_fire_time(None, _as_utc(reading) + _TICK)
        while candidate is not None:
            firing = _first_instant(candidate.replace(tzinfo=None), self.zone)
            # In the repeated hour, readings just after `instant`'s were first reached before it.
            if firing > instant:
                return firing
            candidate = self._readings.get_next_fire_time(None, candidate + _TICK)
        return None

    def get_next_fire_time(self, previous_fire_time: dt.datetime | None,
                           now: dt.datetime) -> dt.datetime | None:
        """APScheduler: the firing after the previous one, or the first at or after `now`."""
        after = previous_fire_time if previous_fire_time is not None else now - _TICK
        firing = self.next_after(after)
        return firing.astimezone(self.zone) if firing else None

    def __str__(self) -> str:
        return f"crontab[{self.expression}] in {self.zone.key}"

    def __repr__(self) -> str:
        return f"<Crontab {self.expression!r} {self.zone.key}>"

    def __getstate__(self) -> dict[str, object]:
        return {"version": 1, "expression": self.expression, "zone": self.zone.key}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(str(state["expression"]), ZoneInfo(str(state["zone"])))  # type: ignore[misc]


_TICK = dt.timedelta(microseconds=1)  # the calendar rounds up to whole seconds


def _as_utc(reading: dt.datetime) -> dt.datetime:
    return reading.replace(tzinfo=dt.UTC)


def _first_instant(reading: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The first instant (aware UTC) at which the wall clock in `zone` shows `reading` or later."""
    # PEP 495: fold=0 is the earlier instant of a repeated reading, the later one in a gap.
    early = reading.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    if early.astimezone(zone).replace(tzinfo=None) == reading:
        return early
    # A skipped reading: the clocks jumped over it somewhere in (fold=1's instant, fold=0's].
    # Offsets change on whole seconds, so halve that span in seconds.
    low = reading.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)
    high = early
    while high - low > dt.timedelta(seconds=1):
        middle = low + dt.timedelta(seconds=(high - low) // dt.timedelta(seconds=2))
        if middle.astimezone(zone).replace(tzinfo=None) >= reading:
            high = middle
        else:
            low = middle
    return high


def fire_times(trigger: Crontab, after: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
    """The trigger's firings in (after, until], oldest first, as aware UTC."""
    moment = trigger.next_after(after)
    while moment is not None and moment <= until:
        yield moment
        moment = trigger.next_after(moment)


def next_fire_time(trigger: Crontab, now: dt.datetime) -> dt.datetime | None:
    """The first firing at or after `now`, as aware UTC."""
    return trigger.next_after(now - _TICK)
