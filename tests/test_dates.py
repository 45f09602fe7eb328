"""Dates as the council's members write them: ISO, 年月日, era years, year-less, with weekdays."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmag.content.dates import ERAS, parse_date, parse_range
from mailmag.errors import InvalidInput
from mailmag.text_ja import format_date_ja

TODAY = dt.date(2026, 11, 28)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01", dt.date(2026, 12, 1)),
    ("2026/12/1", dt.date(2026, 12, 1)),
    ("2026.12.1", dt.date(2026, 12, 1)),
    ("2012年5月24日", dt.date(2012, 5, 24)),
    ("２０１２年５月２４日", dt.date(2012, 5, 24)),
    ("2026 年 12 月 1 日", dt.date(2026, 12, 1)),
    ("令和8年12月1日", dt.date(2026, 12, 1)),
    ("平成24年5月24日", dt.date(2012, 5, 24)),
    ("令和元年5月1日", dt.date(2019, 5, 1)),
    ("平成元年1月8日", dt.date(1989, 1, 8)),
    ("R8.12.1", dt.date(2026, 12, 1)),
    ("H24.5.24", dt.date(2012, 5, 24)),
    ("r8/12/1", dt.date(2026, 12, 1)),
    ("Ｒ８．１２．１", dt.date(2026, 12, 1)),
    ("㍻24年5月24日", dt.date(2012, 5, 24)),
    ("2012年5月24日（木）", dt.date(2012, 5, 24)),
    ("2012年5月24日(木曜日)", dt.date(2012, 5, 24)),
    ("2026/11/23（月・祝）", dt.date(2026, 11, 23)),
    ("2026-12-01 (Tue)", dt.date(2026, 12, 1)),
    # PDF paste: Kangxi radicals ⽉ ⽇ ⽊ where 月 日 木 are meant.
    ("2012年5⽉24⽇（⽊）", dt.date(2012, 5, 24)),
])
def test_written_forms(text, expected):
    assert parse_date(text, TODAY) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("12/1", dt.date(2026, 12, 1)),      # in three days
    ("5/24", dt.date(2027, 5, 24)),      # six months ahead is nearer than eighteen back
    ("6月1日", dt.date(2026, 6, 1)),     # five months ago is nearer than seven ahead
    ("１／５", dt.date(2027, 1, 5)),     # across the new year
    ("11月27日（金）", dt.date(2026, 11, 27)),
])
def test_without_a_year_the_nearest_date_to_today(text, expected):
    assert parse_date(text, TODAY) == expected


def test_a_date_object_passes_through():
    assert parse_date(dt.date(2027, 1, 5)) == dt.date(2027, 1, 5)


@pytest.mark.parametrize(("text", "message"), [
    ("2012年5月24日（金）",
     "'2012年5月24日（金）': 2012-05-24 is a 木曜日, not 金曜日; check the date or the weekday"),
    ("12/1（月）", "'12/1（月）': 2026-12-01 is a 火曜日, not 月曜日; check the date or the weekday"),
    ("来週", "cannot read the date '来週'; write it as 2026-12-01, 2026/12/1, 2026年12月1日, 令和8年12月1日, "
             "R8.12.1 or 12/1"),
    ("2026-02-30", "'2026-02-30' is not a date on the calendar"),
    ("13/1", "'13/1' is not a date on the calendar"),
    ("2/29", "'2/29' needs a year (the nearest one is not within six months)"),
    ("平成31年5月1日",
     "'平成31年5月1日' is not in the 平成 era (1989-01-08 to 2019-04-30); check the era and year"),
    ("令和元年4月30日",
     "'令和元年4月30日' is not in the 令和 era (2019-05-01 to today); check the era and year"),
    ("2026/12-01", "cannot read the date '2026/12-01'; write it as 2026-12-01, 2026/12/1, 2026年12月1日, "
                   "令和8年12月1日, R8.12.1 or 12/1"),
])
def test_unreadable_or_contradictory_dates_are_refused(text, message):
    with pytest.raises(InvalidInput) as error:
        parse_date(text, TODAY)
    assert str(error.value) == message


@pytest.mark.parametrize(("text", "expected"), [
    ("11/22〜23", (dt.date(2026, 11, 22), dt.date(2026, 11, 23))),
    ("１１／２２～２３", (dt.date(2026, 11, 22), dt.date(2026, 11, 23))),
    ("2027年11月22日（月）〜23日（火・祝）", (dt.date(2027, 11, 22), dt.date(2027, 11, 23))),
    ("2026年12月28日〜1月5日", (dt.date(2026, 12, 28), dt.date(2027, 1, 5))),
    ("2027/3/1から2027/3/3", (dt.date(2027, 3, 1), dt.date(2027, 3, 3))),
    ("12/1", (dt.date(2026, 12, 1), None)),
    ("12/1〜12/1", (dt.date(2026, 12, 1), None)),
])
def test_ranges(text, expected):
    assert parse_range(text, TODAY) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("11/23〜22", "'11/23〜22' ends before it starts"),
    ("11/22〜", "cannot read the dates '11/22〜'; write e.g. 2026/11/22〜23"),
    ("11/22〜23（火）", "'23（火）': 2026-11-23 is a 月曜日, not 火曜日; check the date or the weekday"),
])
def test_bad_ranges(text, message):
    with pytest.raises(InvalidInput) as error:
        parse_range(text, TODAY)
    assert str(error.value) == message


def _era_form(date: dt.date) -> str:
    era = next(e for e in ERAS if e.first <= date)
    year = date.year - era.first.year + 1
    return f"{era.name}{'元' if year == 1 else year}年{date.month}月{date.day}日"


@given(st.dates(min_value=dt.date(1989, 1, 8), max_value=dt.date(2099, 12, 31)))
def test_every_form_of_a_date_reads_back_as_that_date(date):
    weekday = "月火水木金土日"[date.weekday()]
    forms = [
        date.isoformat(), f"{date.year}/{date.month}/{date.day}",
        f"{date.year}年{date.month}月{date.day}日（{weekday}）", _era_form(date), format_date_ja(date),
    ]
    for form in forms:
        assert parse_date(form, TODAY) == date, form
