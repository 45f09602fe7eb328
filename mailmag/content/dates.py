"""Dates as people write them in Japanese documents: ISO, 2012年5月24日, 5/24, 令和8年12月1日, H24.5.24.

Full-width digits and combined era signs (㍻, ㋿) are read through NFKC. A date without a
year is the one nearest to today (within six months either way). A trailing weekday such
as （木） is checked against the date: a mismatch means one of the two is a typo.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import NamedTuple
from zoneinfo import ZoneInfo

from mailmag import clock
from mailmag.errors import InvalidInput
from mailmag.text_ja import WEEKDAYS_JA

DEFAULT_ZONE = ZoneInfo("Asia/Tokyo")
_WEEKDAYS_EN = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FORMS = "2026-12-01, 2026/12/1, 2026年12月1日, 令和8年12月1日, R8.12.1 or 12/1"
FORMS_JA = "2026-12-01、2026/12/1、2026年12月1日、令和8年12月1日、R8.12.1、12/1"


class Era(NamedTuple):
    name: str
    letter: str
    first: dt.date
    last: dt.date | None


ERAS = (
    Era("令和", "R", dt.date(2019, 5, 1), None),
    Era("平成", "H", dt.date(1989, 1, 8), dt.date(2019, 4, 30)),
    Era("昭和", "S", dt.date(1926, 12, 25), dt.date(1989, 1, 7)),
)
_ERA_BY_TOKEN = {**{e.name: e for e in ERAS}, **{e.letter: e for e in ERAS}}

_ERA = "(?P<era>令和|平成|昭和|[RHS])(?P<eyear>元|\\d{1,2})"
_MD_KANJI = "(?P<month>\\d{1,2})月(?P<day>\\d{1,2})日"
_PATTERNS = [
    re.compile(f"(?P<year>\\d{{4}})年{_MD_KANJI}"),
    re.compile("(?P<year>\\d{4})(?P<sep>[-/.])(?P<month>\\d{1,2})(?P=sep)(?P<day>\\d{1,2})"),
    re.compile(f"{_ERA}年{_MD_KANJI}", re.IGNORECASE),
    re.compile(f"{_ERA}(?P<sep>[-/.])(?P<month>\\d{{1,2}})(?P=sep)(?P<day>\\d{{1,2}})", re.IGNORECASE),
    re.compile(_MD_KANJI),
    re.compile("(?P<month>\\d{1,2})/(?P<day>\\d{1,2})"),
]
# （木）, (木曜日), （木・祝）, (Thu): the weekday some authors add after a date.
_WEEKDAY = re.compile(
    "\\((?P<wd>[月火水木金土日])(?:曜日?)?(?:[・,]?祝日?)?\\)$|\\((?P<en>[a-z]{3})[a-z]*\\.?\\)$",
    re.IGNORECASE,
)
_RANGE_SEPARATOR = re.compile("〜|～|~|から")
_END_WITHOUT_MONTH = re.compile("(?P<day>\\d{1,2})日?")


def today_in(zone: ZoneInfo = DEFAULT_ZONE) -> dt.date:
    return clock.today(zone)


def _clean(text: str) -> str:
    # NFKC: full-width digits and parentheses, ㍻ → 平成, ㋿ → 令和; spaces carry no meaning here.
    return "".join(unicodedata.normalize("NFKC", text).split())


def _split_weekday(text: str) -> tuple[str, int | None]:
    match = _WEEKDAY.search(text)
    if match is None:
        return text, None
    if match["wd"]:
        return text[: match.start()], WEEKDAYS_JA.index(match["wd"])
    english = match["en"].lower()
    if english not in _WEEKDAYS_EN:
        return text, None
    return text[: match.start()], _WEEKDAYS_EN.index(english)


def shown_ja(date: dt.date) -> str:
    """2026年12月1日: a date in a Japanese sentence (an error's; pages add the weekday themselves)."""
    return f"{date.year}年{date.month}月{date.day}日"


def _calendar_date(original: str, year: int, month: int, day: int) -> dt.date:
    try:
        return dt.date(year, month, day)
    except ValueError:
        raise InvalidInput(f"{original!r} is not a date on the calendar",
                           ja=f"「{original}」は存在しない日付です。月と日をご確認ください") from None


def _era_year(original: str, era: Era, eyear: str, month: int, day: int) -> dt.date:
    number = 1 if eyear == "元" else int(eyear)
    date = _calendar_date(original, era.first.year + number - 1, month, day)
    if date < era.first or (era.last is not None and date > era.last):
        span = f"{era.first.isoformat()} to {era.last.isoformat() if era.last else 'today'}"
        raise InvalidInput(f"{original!r} is not in the {era.name} era ({span}); check the era and year",
                           ja=f"「{original}」は{era.name}の期間"
                              f"（{shown_ja(era.first)}〜{shown_ja(era.last) if era.last else ''}）"
                              "に入っていません。元号と年をご確認ください")
    return date


def nearest(month: int, day: int, today: dt.date, original: str) -> dt.date:
    """The date with this month and day nearest to today, within six months either way."""
    candidates = []
    for year in (today.year - 1, today.year, today.year + 1):
        try:
            candidates.append(dt.date(year, month, day))
        except ValueError:
            continue
    best = min(candidates, key=lambda d: abs((d - today).days), default=None)
    if best is None or abs((best - today).days) > 184:
        # Only 2/29 gets here: the nearest leap day may be years away.
        raise InvalidInput(f"{original!r} needs a year (the nearest one is not within six months)",
                           ja=f"「{original}」には年も入れてください"
                              "（前後6か月以内に当たる日がないため、どの年のことか決められません）")
    return best


def _from_match(match: re.Match[str], original: str, today: dt.date) -> dt.date:
    fields = match.groupdict()
    month, day = int(fields["month"]), int(fields["day"])
    if fields.get("era"):
        return _era_year(original, _ERA_BY_TOKEN[fields["era"].upper()], fields["eyear"], month, day)
    if fields.get("year"):
        return _calendar_date(original, int(fields["year"]), month, day)
    _calendar_date(original, 2000, month, day)  # a leap year: only impossible days fail here
    return nearest(month, day, today, original)


def _check_weekday(original: str, date: dt.date, weekday: int | None) -> None:
    if weekday is not None and weekday != date.weekday():
        raise InvalidInput(
            f"{original!r}: {date.isoformat()} is a {WEEKDAYS_JA[date.weekday()]}曜日, "
            f"not {WEEKDAYS_JA[weekday]}曜日; check the date or the weekday",
            ja=f"「{original}」は日付と曜日が合いません。{shown_ja(date)}は{WEEKDAYS_JA[date.weekday()]}曜日で、"
               f"{WEEKDAYS_JA[weekday]}曜日ではありません。日付か曜日をご確認ください",
        )


def parse_date(text: str | dt.date, today: dt.date | None = None) -> dt.date:
    """One date in any of the usual forms; InvalidInput naming the forms it accepts."""
    if isinstance(text, dt.datetime):
        return text.date()
    if isinstance(text, dt.date):
        return text
    original = text.strip()
    cleaned, weekday = _split_weekday(_clean(text))
    for pattern in _PATTERNS:
        match = pattern.fullmatch(cleaned)
        if match:
            date = _from_match(match, original, today or today_in())
            _check_weekday(original, date, weekday)
            return date
    raise InvalidInput(f"cannot read the date {original!r}; write it as {FORMS}",
                       ja=f"「{original}」を日付として読み取れません。{FORMS_JA} のように入力してください")


def is_range(text: str) -> bool:
    """True if the text holds two dates joined by 〜, ~ or から."""
    return _RANGE_SEPARATOR.search(text) is not None


def parse_range(text: str | dt.date, today: dt.date | None = None) -> tuple[dt.date, dt.date | None]:
    """A date or a range ('11/22〜23', '2026年11月30日〜12月2日'); the end is None for one day."""
    if isinstance(text, dt.date):
        return parse_date(text), None
    parts = _RANGE_SEPARATOR.split(text)
    if len(parts) == 1:
        return parse_date(text, today), None
    if len(parts) != 2 or not parts[1].strip():
        raise InvalidInput(f"cannot read the dates {text.strip()!r}; write e.g. 2026/11/22〜23",
                           ja=f"期間「{text.strip()}」を読み取れません。"
                              "2026/11/22〜23 のように入力してください")
    start = parse_date(parts[0], today)
    end = _range_end(parts[1], start)
    if end < start:
        raise InvalidInput(f"{text.strip()!r} ends before it starts",
                           ja=f"期間「{text.strip()}」は終わりの日が始まりの日より前になっています")
    return start, (end if end != start else None)


def _range_end(text: str, start: dt.date) -> dt.date:
    """The end of a range: a full date, or month and day, or a day alone, read from the start."""
    original = text.strip()
    cleaned, weekday = _split_weekday(_clean(text))
    day_only = _END_WITHOUT_MONTH.fullmatch(cleaned)
    if day_only:
        date = _calendar_date(original, start.year, start.month, int(day_only["day"]))
    else:
        # A year-less end is read as the nearest such date to the start: 12/30〜1/5 crosses the year.
        date = parse_date(cleaned, today=start)
    _check_weekday(original, date, weekday)
    return date
