"""Japanese plain text: display width, kinsoku wrapping (property-based), dates."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailmag import text_ja
from mailmag.text_ja import NO_LINE_END, NO_LINE_START, display_width, wrap_line, wrap_text

# Word characters: kanji, hiragana, katakana, never one that kinsoku keeps off a line start
# (a run of those would be one unbreakable group, and no wrapper can keep such a run whole).
_WORD_CHARS = "".join(
    c for c in "中国地域産学官連携会議開催予定情報発信共有あいうえおかきくけこさしすせそたちつてと"
               "なにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソ"
               "タチツテトナニヌネノハヒフヘホマミムメモラリルレロワン"
    if c not in NO_LINE_START
)
_word = st.text(alphabet=_WORD_CHARS, min_size=1, max_size=8)
_url = st.from_regex(r"https://[a-z]{1,8}\.jp(/[a-z0-9]{1,5}){0,2}", fullmatch=True)
_number = st.integers(1000, 9_999_999).map("{:,}".format)
# Followed by a Japanese character: two URLs side by side would be one unbreakable run.
_protected = st.one_of(_url, _number, st.sampled_from(["……", "——", "13:30", "11／22"])).map(
    lambda token: token + "の"
)
_english = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10).map(lambda w: f" {w} ")
_bracketed = st.tuples(st.sampled_from(["「」", "（）", "『』", "【】"]), _word).map(
    lambda pair: pair[0][0] + pair[1] + pair[0][1]
)
_suffix = st.sampled_from(["", "", "、", "。", "，", "ー", "っ", "！", "」", "）"])
_token = st.tuples(st.one_of(_word, _word, _bracketed, _protected, _english), _suffix).map("".join)
_paragraph = st.lists(_token, min_size=1, max_size=40).map(lambda parts: "".join(parts).strip())
_width = st.integers(min_value=36, max_value=90)

PROTECTED = re.compile(r"https://\S+?(?=[^\x21-\x7e]|$)|\d{1,3}(?:,\d{3})+|……|——|13:30|11／22")


@settings(deadline=None, max_examples=150)
@given(text=_paragraph, width=_width, phrases=st.booleans())
def test_wrapped_lines_fit_and_obey_kinsoku(text: str, width: int, phrases: bool) -> None:
    lines = wrap_line(text, width, hanging="", phrases=phrases)
    assert all(display_width(line) <= width for line in lines), lines
    assert not any(line[0] in NO_LINE_START for line in lines[1:]), lines
    assert not any(line[-1] in NO_LINE_END for line in lines[:-1]), lines
    assert not any(line != line.strip(" ") for line in lines), lines


@settings(deadline=None, max_examples=150)
@given(text=_paragraph, width=_width)
def test_joining_the_lines_gives_back_the_text(text: str, width: int) -> None:
    lines = wrap_line(text, width, hanging="")
    # A break at a space drops that space (as English wrapping does); nothing else changes.
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    if " " not in text:
        assert "".join(lines) == text


@settings(deadline=None, max_examples=150)
@given(text=_paragraph, width=_width)
def test_urls_numbers_and_dashes_are_never_split(text: str, width: int) -> None:
    lines = wrap_line(text, width, hanging="")
    for token in PROTECTED.findall(text):
        assert any(token in line for line in lines), (token, lines)


@settings(deadline=None, max_examples=60)
@given(paragraphs=st.lists(_paragraph, min_size=1, max_size=5),
       indents=st.lists(st.sampled_from(["", "　", "  ", "・", "  ・", "  会場："]), min_size=5, max_size=5),
       width=_width)
# found by this test in a CI run: a URL that fits the width but not after a label's hanging indent
@example(paragraphs=["あ", "https://aaaaaaaa.jp/000/00000の"], indents=["", "  会場：", "", "", ""], width=36)
def test_wrap_text_keeps_every_line_within_the_width(paragraphs, indents, width) -> None:
    text = "\n\n".join(indent + p for indent, p in zip(indents, paragraphs, strict=False))
    wrapped = wrap_text(text + "\u200b", width)
    assert all(display_width(line) <= width for line in wrapped.split("\n"))
    assert "\u200b" not in wrapped


def test_width_counts_wide_and_ambiguous_characters_as_two():
    assert display_width("abc") == 3
    assert display_width("日本語") == 6
    assert display_width("ｱｲｳ") == 3  # half-width katakana
    assert display_width("※→○…━") == 10  # ambiguous: full-width in Japanese fonts
    assert display_width("か\u3099") == 2  # a combining mark takes no column


def test_a_line_never_starts_with_closing_punctuation():
    # 34 全角 then 。: the 。 would start line 2, so the character before it moves down too.
    text = "あ" * 34 + "。次の文です。"
    lines = wrap_line(text, 68, hanging="", phrases=False)
    assert lines == ["あ" * 33, "あ。次の文です。"]


def test_a_line_never_ends_with_an_opening_bracket():
    text = "い" * 33 + "「かぎ」です"
    lines = wrap_line(text, 68, hanging="", phrases=False)
    assert lines == ["い" * 33, "「かぎ」です"]


def test_a_url_with_its_punctuation_stays_whole_even_if_wider_than_the_line():
    url = "https://www.example.jp/" + "b" * 45
    assert wrap_line(f"「{url}」。です", 70, hanging="") == [f"「{url}」。", "です"]


def test_a_url_longer_than_the_line_stands_alone_unbroken():
    url = "https://www.example.jp/" + "a" * 80
    lines = wrap_line(f"詳細は{url}をご覧ください。", 70, hanging="")
    assert lines == ["詳細は", url, "をご覧ください。"]


def test_list_items_and_labels_hang_under_their_text():
    wrapped = wrap_text("・" + "あ" * 30 + "\n  会場：" + "い" * 30, 40).split("\n")
    assert wrapped == ["・" + "あ" * 19, "  " + "あ" * 11, "  会場：" + "い" * 16, " " * 8 + "い" * 14]


def test_phrase_boundaries_are_preferred_when_the_line_stays_full():
    text = "中国地域産学官コラボレーション会議では，最新の産学官連携を取り巻く情報をご紹介することにより"
    assert wrap_line(text, 60, hanging="", phrases=False)[1].startswith("り巻く")
    assert wrap_line(text, 60, hanging="")[1].startswith("取り巻く")  # BudouX: 取り巻く is one phrase


def test_zero_width_spaces_never_reach_the_output():
    assert wrap_text("日本\u200b語\ufeff", 70) == "日本語"


def test_rule_is_exactly_the_width():
    assert display_width(text_ja.rule("━", 70)) == 70
    assert display_width(text_ja.rule("-", 70)) == 70


@pytest.mark.parametrize(
    ("start", "end", "ja", "en"),
    [
        (dt.date(2026, 12, 1), None, "2026年12月1日（火）", "Tue, December 1, 2026"),
        (dt.date(2026, 11, 22), dt.date(2026, 11, 23), "2026年11月22日（日）〜23日（月）",
         "Sun, November 22 – Mon, November 23, 2026"),
        (dt.date(2026, 11, 30), dt.date(2026, 12, 1), "2026年11月30日（月）〜12月1日（火）",
         "Mon, November 30 – Tue, December 1, 2026"),
        (dt.date(2026, 12, 31), dt.date(2027, 1, 1), "2026年12月31日（木）〜2027年1月1日（金）",
         "Thu, December 31, 2026 – Fri, January 1, 2027"),
    ],
)
def test_dates_print_the_japanese_and_the_english_way(start, end, ja, en):
    assert text_ja.format_date_range_ja(start, end) == ja
    assert text_ja.format_date_range_en(start, end) == en


def test_normalize_still_maps_pdf_lookalikes():
    assert text_ja.normalize("5\u2f4924\u2f47") == "5月24日"


@pytest.mark.parametrize(("raw", "shown"), [
    ("250 2.0.0 Ok: queued as 4Xb", "250 2.0.0 Ok: queued as 4Xb"),
    ("5.1.1 no such user\ntotal 9, sent 9", "5.1.1 no such user / total 9, sent 9"),
    ("\x1b[2Jcleared\r\n\n  indented  ", "?[2Jcleared / indented"),
    ("user\u202egnp.live\u200b\u2066", "user?gnp.live??"),
    ("宛先\u3000不明\u00a0です\u2029次", "宛先 不明 です / 次"),
    # helper-74: padded to the terminal's edge, its rest read as a line of mailmag's own
    ("550 rejected" + " " * 70 + "  b@example.jp (sent): 250 ok", "550 rejected b@example.jp (sent): 250 ok"),
    ("550 x\u3164\u3164\u2800y e\u0301\u0301\u0301", "550 x???y e\u0301"),
])
def test_a_foreign_line_is_one_line_that_cannot_rewrite_what_is_read(raw, shown):
    """A relay's reply shown in `issues status` and the console (helper-72 F3)."""
    assert text_ja.foreign_line(raw) == shown
