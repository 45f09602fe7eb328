"""Send windows: deliver only on working days and hours, skipping 祝日 and the year-end break.

All rules are read in the configured zone ([mailmag] timezone); callers pass and get back
aware datetimes. With `[schedule] send_window_enabled = false` the window is always open.
"""

from __future__ import annotations

import datetime as dt

import jpholiday

from mailmag.config import DAYS, Config, SendWindow, send_window
from mailmag.errors import ConfigError
from mailmag.text_ja import WEEKDAYS_JA

_SEARCH_DAYS = 400  # longer than any break: a window that never opens is a configuration error


def window_settings(config: Config) -> SendWindow:
    """The window settings, parsed (ConfigError naming the key when one is wrong)."""
    return send_window(config.schedule)


def is_sending_day(day: dt.date, window: SendWindow) -> bool:
    """A listed weekday that is not a public holiday nor inside the year-end break."""
    if day.weekday() not in window.weekdays:
        return False
    if window.skip_holidays and jpholiday.is_holiday(day):
        return False
    if window.year_end_break is not None:
        first, last = window.year_end_break
        key = (day.month, day.day)
        # The break may wrap around new year (12-29 … 01-03) or not (08-13 … 08-16).
        inside = first <= key <= last if first <= last else key >= first or key <= last
        if inside:
            return False
    return True


def window_open(now: dt.datetime, config: Config) -> bool:
    """May a message go out at `now` (aware)?"""
    if not config.schedule.send_window_enabled:
        return True
    window = window_settings(config)
    local = now.astimezone(config.zone)
    return is_sending_day(local.date(), window) and window.start <= local.time() < window.end


def next_window_start(now: dt.datetime, config: Config) -> dt.datetime:
    """`now` if the window is open, else when it next opens (aware, in the configured zone)."""
    if window_open(now, config):
        return now
    window = window_settings(config)
    local = now.astimezone(config.zone)
    for offset in range(_SEARCH_DAYS):
        day = local.date() + dt.timedelta(days=offset)
        opens = dt.datetime.combine(day, window.start, tzinfo=config.zone)
        if is_sending_day(day, window) and (offset > 0 or local < opens):
            return opens
    raise ConfigError("[schedule] the send window never opens: check send_window_days and year_end_break")


def next_window_open(now: dt.datetime, config: Config) -> dt.datetime | None:
    """When the closed send window opens next (aware, in the configured zone); None while it is open."""
    return None if window_open(now, config) else next_window_start(now, config)


def waiting_for_window(pending: int, now: dt.datetime, config: Config) -> dt.datetime | None:
    """When `pending` messages wait for the closed window: the moment it opens; else None."""
    return next_window_open(now, config) if pending > 0 else None


def opening(moment: dt.datetime, config: Config) -> str:
    """A window's opening as the secretariat reads it: '2027-01-04 09:00 (月)'."""
    local = moment.astimezone(config.zone)
    return f"{local:%Y-%m-%d %H:%M} ({WEEKDAYS_JA[local.weekday()]})"


def waiting_note(opens: dt.datetime, config: Config) -> str:
    """Why queued mail is not leaving, for `issues status` and `issues list`."""
    return f"waiting for the send window; it opens at {opening(opens, config)}"


def summary(now: dt.datetime, config: Config) -> str:
    """The send window in one line, open or when it next opens, for `mailmag doctor`."""
    if not config.schedule.send_window_enabled:
        return "off: messages leave as soon as they are queued ([schedule] send_window_enabled = false)"
    window = window_settings(config)
    opens = next_window_open(now, config)
    if opens is None:
        state = f"open now, until {_clock(window.end)} today"
    else:
        state = f"closed now; it opens at {opening(opens, config)}"
    return f"{state} ({_rule(window)}, {config.mailmag.timezone})"


def _rule(window: SendWindow) -> str:
    days = ",".join(DAYS[day] for day in sorted(window.weekdays))
    rule = f"{days} {_clock(window.start)}-{_clock(window.end)}"
    if window.skip_holidays:
        rule += ", not on 祝日"
    if window.year_end_break is not None:
        (m1, d1), (m2, d2) = window.year_end_break
        rule += f", not {m1:02d}-{d1:02d} to {m2:02d}-{d2:02d}"
    return rule


def _clock(value: dt.time) -> str:
    return "24:00" if value == dt.time.max else value.strftime("%H:%M")
