"""Which line breaks in an item's body the writer meant, and which a program's wrap made.

Markdown joins the lines of a paragraph, and a Japanese text pasted from a PDF or a word
processor is wrapped mid-sentence, so lines are joined; but a notice typed line by line
(日時：… / 場所：… / 参加費：…) read as one run-on line (helper-70). The text does not say which
it is, so each break between two lines is read by a few named rules, in order (`_RULES`); the
first that has an opinion decides. What the rules know of the whole paragraph (the width it
was wrapped at, whether it is a signature) is read once, in `_Block`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from mailmag.text_ja import display_width, is_wide

_SENTENCE_END = ("。", "！", "？", "．")  # (．: the 「，．」 style of academic writing)
_CLOSING = "）)」』】〕〉》］”’"  # after a sentence's end: （詳細は別紙のとおり。）
_NUMBERED = r"[(（]?[0-9０-９]{1,3}[.)）．、]"  # 1. 1) （1） 1、
# (1. and 1、 but not 3.5倍 nor 12.10: a digit after the point is a number, not a list)
# Ⅰ．, （ア）, ア．, ア　, 一　, 第１　, ①: the marks of an official document's lists too (helper-92)
_LIST_START = re.compile(r"[・●○◎■□◆◇※★☆▼▽→⇒〒＜〈《【［①-⑳㉑-㉟〇◯＊⑴-⒇]"
                         rf"|{_NUMBERED}(?![0-9０-９])"
                         r"|[Ⅰ-Ⅻⅰ-ⅻ][.．、)）\s]|[(（][ア-ン一二三四五六七八九十a-zａ-ｚ][)）]|[ア-ン][.．)）]"
                         "|(?:[ア-ン一二三四五六七八九十]|第[0-9０-９一二三四五六七八九十]{1,2})\u3000")
# A schedule's lines: 7月24日（水）　第２回企画会議, 7/24（水）, 7月24日（水）～26日（金）, 8月 7日（水）,
# 7月24日（水）13:30～, 13:30～13:40　開会挨拶, 13時30分～, 午前10時～正午 (helper-93, -96, -98): a date
# or a time and a space (after a weekday, none); not 7月24日（水）に開催, 13:30 から, 13:30 頃まで
# nor 10:00 AM, which a wrap may put at a line's start.
_WEEKDAY = "[（(][月火水木金土日祝・]{1,5}[)）]"
_DAY = f"[0-9０-９]{{1,2}}日(?:{_WEEKDAY})?"
_DATE = ("(?:(?:令和|平成)?[0-9０-９元]{1,4}年)?"
         f"(?:[0-9０-９]{{1,2}}月 ?{_DAY}|[0-9０-９]{{1,2}}[/／][0-9０-９]{{1,2}}(?:{_WEEKDAY})?)")
_TIME = "(?:[0-9０-９]{1,2}[:：][0-9０-９]{2}|(?:午前|午後)?[0-9０-９]{1,2}時(?:[0-9０-９]{1,2}分|半)?|正午)"
_PARTICLE_AFTER = "(?:頃|ごろ|(?:から|まで|より|に|の|を|は|と|が|で|へ|や)(?![ぁ-ゖ]))"
_SCHEDULE_START = re.compile(f"(?:{_DATE} ?(?:{_TIME})?|{_TIME})"
                             f"(?:\\s*[～〜~\\-－―]\\s*(?:{_DATE}|{_DAY}|{_TIME})?)?"
                             f"(?:\u3000+| +(?![\\sA-Za-z]|{_PARTICLE_AFTER})"
                             "|(?<=[)）])(?=[^\\sぁ-ゖ、。，．]))")
# （3）までの様式, 【別紙】のとおり, ①から③: a mark followed by a particle is a reference to an
# item, not an item; a wrap may put it at a line's start (helper-93: …（1）から / （3）までの…). Not
# （2）にぎわい創出, （1）からだの: an item may start with a word in hiragana (helper-96).
_REFERENCE = re.compile(rf"(?:{_NUMBERED}|[①-⑳]|【[^】]{{1,12}}】)"
                        "(?:(?:について|において|により|によって|をご覧|を参照)"
                        "|(?:まで|から|など|の|と|を|に|が|や|で|へ|より|は|及び|並びに|又は)"
                        "(?=$|[^ぁ-ゖ]|[のにはをでと]))")
# What a PDF's wrap may put at a line's start mid-sentence (…計画案と / （1）から（3）の様式が…,
# …については、 / 【別紙】の方針案が…): a list's mark only where the next line is listed too.
_BRACKET_START = re.compile(rf"[〒＜〈《【［]|{_NUMBERED}")
# A sentence that begins in hiragana: なお、 また、 ただし、 つきましては ぜひ, named one by one,
# for a particle or an inflection goes on in hiragana too (に掲載…; …できます / ので、…: helper-96;
# …ください / ますよう、…, …行いました / ところ、…: helper-98)
_CONJUNCTION = re.compile("(?:なお|また|ただし|さらに|まず|つぎに|しかし|しかしながら|そして|あわせて|おって|"
                          "ちなみに|このため|そのため|ところで|では)、"
                          "|つきましては|ついては|したがって|ぜひ|どうぞ|お気軽に")
# A sentence's polite end, its 。 left off (…開催します / なお、…; …ご注意ください / お問い合わせ先　…)
_POLITE_END = ("ます", "です", "ください", "ません", "ました", "でした")
# 日時　12月10日: a label with a 全角 space for its colon, which is also how a name is written
# (佐藤　次郎); after a line as wide as a wrap, it is the name (helper-91).
_SPACE_LABEL_TEXT = "[^\\s：:、。]{1,6}\u3000+"
_SPACE_LABEL = re.compile(_SPACE_LABEL_TEXT)
# After a sentence whose 。 was left off, a longer word before a 全角 space is a label too
# (helper-93: …ご注意ください / お問い合わせ先　事務局)
# (not a sentence going on: …予定です / ので当日は副会長　佐藤…, helper-96)
_LONG_SPACE_LABEL = re.compile("(?:[おご](?![ぁ-ゖ])|[^\\sぁ-ゖ：:、。])[^\\s：:、。]{0,11}\u3000+(?=\\S)")
# 日時：, 日時 : (short, no kana: は次のとおり : is text, helper-77), 日　時：, お問い合わせ・お申し込み
# 先：, TEL:, 日時　… with a 全角 space for the colon (helper-74), TEL 082-… as a phone number, not
# 電話 3台 (helper-76, -77); not a time's 13:30 or 午後1:30, nor a URL's ttps:// cut by a wrap (helper-73)
_LINE_LABEL = re.compile("(?![0-9０-９])(?:[^\\s：:、。/]|\u3000){1,16}(?<![0-9０-９])[：:](?!//)"
                         "|[^\\s：:、。/ぁ-ゖ]{1,4} [：:](?!//)"
                         f"|{_SPACE_LABEL_TEXT}(?=\\S)"
                         "|(?:TEL|FAX|Tel|Fax|電話|携帯) ?[(（]?[0-9０-９]{2,5}[)）\\-－ー‐] ?[0-9０-９]")
_WRAPPED_WIDTH = 30  # a line wrapped by a program is at least this wide (display columns)
# A wrapped line is within this share of the paragraph's widest (and at least 4 columns): a PDF
# indents a list by a character or two, and kinsoku moves a character to the next line.
_WRAP_BAND = 0.9
# An English sentence's end (helper-89: "…the website below.\n詳細は…" ran together) and a URL
# that ends a line: the line that follows is a line of its own when it is Japanese.
_ENGLISH_END = re.compile("[A-Za-z][.!?][\"')\\]]*$|https?://\\S+$")
_HIRAGANA = re.compile("[ぁ-ゖ]")
# A contact line, as it starts: 〒, a phone or fax, an e-mail address, the person in charge. The
# lines after a paragraph's last sentence that hold one and no sentence are a signature, its lines
# as written (helper-93); an address inside a sentence is no sign of one (helper-96).
_CONTACT = re.compile("[（(]?(?:〒|(?:E-?[Mm]ail|[Mm]ail|メール|電子メール|担当)\\s*[：:\u3000]"
                      "|(?:TEL|FAX|Tel|Fax|電話|携帯)\\s*[：:]?\\s*[(（]?[0-9０-９]{2,5}[)）\\-－ー‐]"
                      "|[\\w.+-]+@[\\w-]+\\.[\\w.-]+$)")
_PROSE_WORDS = re.compile("を|ます|です|ので|ため|について|により|られ|される|ました")


def meant_breaks(lines: Sequence[str]) -> list[bool]:
    """For each break between the lines of a paragraph, whether the writer meant it (a line of
    its own) rather than a program's wrap. A wrap fills its line, so a paragraph shows the width
    it was wrapped at where two of its lines (the last aside) reach it; a longer line (a URL)
    does not set it. Two narrower lines in a row, past the first (a copy often starts mid-line),
    end where their writer ended them.

    Meant: after a sentence's end (。, or an English one before Japanese, unless a particle goes
    on) or a URL; before a list mark, a label (日時：) or an indented line (字下げ, a line aligned
    under a label); after a listed or labelled line, unless it is as wide as the wraps, or wide
    and cut before the rest of its word (会員企業|は); and, next to Japanese, in a paragraph of
    short lines (an address, a name and title) and between a signature's lines (事務局 / 〒… /
    TEL …, after the text's last sentence). A schedule's date or time (7月24日（水）　…) starts
    a line as a list's mark does. After a line as wide as the wraps, what a wrap can put at a
    line's start mid-sentence ((1) or 【別紙】, a date, a name 佐藤　次郎, a 全角 space) is text
    unless the next line is listed too; so is a reference to an item anywhere ((3)までの).
    Between English words a break stays Markdown's."""
    block = _Block.read(lines)
    return [_decide(_Pair.at(lines, i, block)) for i in range(len(lines) - 1)]


@dataclass(frozen=True)
class _Block:
    """What the rules know of the paragraph as a whole."""

    width: int  # the width it was wrapped at, else its widest line's
    shown_width: bool  # whether two of its lines show that width
    signature: int  # the first line of a signature after the paragraph's text (len(lines): none)
    marks: int  # lines that start with a list's mark, a date or a time

    @classmethod
    def read(cls, lines: Sequence[str]) -> _Block:
        stripped = [line.strip() for line in lines]
        widths = [display_width(line) for line in stripped]
        shown = _wrap_width(widths)
        return cls(width=shown or max(widths, default=0), shown_width=shown is not None,
                   signature=_signature(stripped), marks=sum(map(_list_mark, stripped)))

    def mark(self, line: str) -> bool:
        """A line that starts a list's item or a schedule's entry. A date or a time, or a mark
        followed by a particle (（3）までの), is one only among others: alone, it is where a wrap
        put a sentence's date or reference (helper-98: 7月24日（水）　…協 / 議しました。)."""
        return _list_mark(line) and (self.marks >= 2 or not _weak_mark(line))


@dataclass(frozen=True)
class _Pair:
    """Two lines with a break between them, and what the rules read of them."""

    before: str
    after: str
    indent: str  # the 全角 spaces `after` starts with, as written
    first: bool  # the paragraph's first break
    listed: bool  # `before`, or the line after `after`, is a list item or a label
    signed: bool  # both lines are a signature's
    signs: bool  # `after` is a signature's first line
    block: _Block

    @classmethod
    def at(cls, lines: Sequence[str], i: int, block: _Block) -> _Pair:
        after = lines[i + 1]
        return cls(before=lines[i].strip(), after=after.strip(), block=block, first=i == 0,
                   indent=after[: len(after) - len(after.lstrip("\u3000"))],
                   listed=_listed(lines[i]) or (i + 2 < len(lines) and _listed(lines[i + 2])),
                   signed=i >= block.signature, signs=i + 1 == block.signature)

    @cached_property
    def full(self) -> bool:
        """`before` is as wide as the paragraph's wraps: a PDF's wrap may put （1）, 【別紙】, a name
        (佐藤　次郎) or the 全角 space between two words at the next line's start (helper-91)."""
        return (self.block.shown_width and _wrapped(self.before, self.block.width)
                and not self.before.endswith(("：", ":")))

    @cached_property
    def marked(self) -> bool:
        """`before` starts with a list's mark or a label."""
        return bool(_label(self.before, self.full) or self.block.mark(self.before))

    @cached_property
    def japanese(self) -> bool:
        return bool(self.before and self.after) and (is_wide(self.before[-1]) or is_wide(self.after[0]))


# --- the rules: each says True (meant), False (a wrap) or None (no opinion) --------------------

def _a_label_follows(pair: _Pair) -> bool | None:
    """日時：…, 場所　…: a label starts a line of its own, unless it is a name in wrapped text."""
    if pair.indent:
        return None
    polite_end = pair.before.endswith(_POLITE_END)
    if polite_end and _LONG_SPACE_LABEL.match(pair.after):
        return True
    return True if _label(pair.after, pair.full and not pair.listed and not polite_end) else None


def _a_sentence_ended(pair: _Pair) -> bool | None:
    """After 。, before a URL, and after a polite end whose 。 was left off (…します / なお、…)."""
    before, after = pair.before, pair.after
    if before.rstrip(_CLOSING).endswith(_SENTENCE_END) or after.startswith(("http://", "https://")):
        return True
    return True if before.endswith(_POLITE_END) and _CONJUNCTION.match(after) else None


def _a_list_mark_follows(pair: _Pair) -> bool | None:
    """A list's mark starts a line of its own, except a bracketed one or a date or time that a
    PDF's wrap put at the start of a line as wide as the rest, mid-sentence (…計画案と / （1）
    から（3）の様式が, …会員の皆様には / 7月24日（水） 午後1時30分から: helper-96)."""
    if not _list_mark(pair.after):
        return None
    if not pair.block.mark(pair.after) and not _complete(pair.before):
        return None  # …会議は / 7月24日（水） 13時30分から…, …のうち（1）から / （3）までの…
    text_like = _BRACKET_START.match(pair.after) or _SCHEDULE_START.match(pair.after)
    return pair.marked or not pair.full or pair.listed or not text_like


def _a_signatures_lines(pair: _Pair) -> bool | None:
    """A signature's lines are as written (事務局 / 島根県松江市… / 担当　山田), even where two of
    them are as wide as a wrap, unless a wide line's last word goes on in the next (a short
    お問い合わせ先 / しまね地域… does not: helper-96)."""
    if pair.signs and pair.before.endswith(_POLITE_END):  # …お問い合わせください / しまね…事務局
        return True
    if not (pair.signed and pair.japanese):
        return None
    wide = display_width(pair.before) >= _WRAPPED_WIDTH
    return not ((wide and _goes_on(pair.before, pair.after)) or pair.before.endswith(("、", "，")))


def _an_indent_follows(pair: _Pair) -> bool | None:
    """字下げ, a line aligned under a label or a list's: the writer's; but one 全角 space at the
    start of a line as wide as the rest may be the space between two words, fallen at a wrap."""
    if not pair.indent:
        return None
    return not (pair.full and not pair.marked and pair.indent == "\u3000")


def _english_then_japanese(pair: _Pair) -> bool | None:
    """An English sentence's end or a URL, then Japanese: a line of its own, unless a particle
    goes on with it (…"Open Innovation." / です。, https://example.jp/ / に掲載…)."""
    after = pair.after
    goes_on = bool(_HIRAGANA.match(after)) and not _CONJUNCTION.match(after)
    if pair.japanese and is_wide(after[0]) and not goes_on and _ENGLISH_END.search(pair.before):
        return True
    return None


def _after_a_marked_line(pair: _Pair) -> bool | None:
    """日時：12月10日, ・展示B, 〒… 1-2-1 / くにびきメッセ are lines of their own (helper-87, -89);
    ・… wrapped by a PDF among lines as wide, or cut before its particle, is not."""
    if not pair.marked:
        return None
    wide = display_width(pair.before) >= _WRAPPED_WIDTH
    wrapped = pair.block.shown_width and _wrapped(pair.before, pair.block.width)
    return not (wrapped or (wide and _goes_on(pair.before, pair.after)))


def _between_english_words(pair: _Pair) -> bool | None:
    """Between English words a break is Markdown's: a space."""
    return None if pair.japanese else False


def _a_narrow_paragraph(pair: _Pair) -> bool | None:
    """A paragraph narrower than any program's wrap is lines as written (a name and title)."""
    return True if pair.block.width < _WRAPPED_WIDTH else None


def _short_lines(pair: _Pair) -> bool:
    """Two short lines in a row, past the first: a wrap fills its line, so they are an
    address's or a name's lines among wider ones (helper-89). The last rule: it always decides."""
    width = pair.block.width
    return (not pair.first and not _wrapped(pair.before, width) and not _wrapped(pair.after, width)
            and is_wide(pair.after[0]))


_RULES: tuple[Callable[[_Pair], bool | None], ...] = (
    _a_label_follows, _a_sentence_ended, _a_signatures_lines, _a_list_mark_follows, _an_indent_follows,
    _english_then_japanese, _after_a_marked_line, _between_english_words, _a_narrow_paragraph,
    _short_lines,
)


def _decide(pair: _Pair) -> bool:
    for rule in _RULES:
        meant = rule(pair)
        if meant is not None:
            return meant
    raise AssertionError("the last rule always decides")


# --- what the rules read of a line --------------------------------------------------------------

def _signature(lines: list[str]) -> int:
    """Where the signature begins: the lines at the paragraph's end after its last line of
    prose, if one of them starts as a contact line does and none holds a sentence; else
    len(lines). (The prose's sentences may have no 。: helper-98.)"""
    start = len(lines)
    while start and not _prose(lines[start - 1]):
        start -= 1
    tail = lines[start:]
    if any(_CONTACT.match(line) for line in tail) and not any(
            mark in line for line in tail for mark in _SENTENCE_END):
        return start
    return len(lines)


def _prose(line: str) -> bool:
    """A line of text rather than of a signature: a sentence's end (its 。 left off too), a 、,
    or a wide line with what only sentences hold (を, ます…). A signature's lines are names,
    addresses and numbers, in hiragana too (しまね地域づくり推進協議会事務局)."""
    if _CONTACT.match(line):
        return False
    if _ends_sentence(line) or "、" in line or "，" in line:
        return True
    return display_width(line) >= _WRAPPED_WIDTH and bool(_PROSE_WORDS.search(line))


def _complete(line: str) -> bool:
    """A line that ends a sentence (its 。 left off too) or a label: what follows starts anew."""
    return _ends_sentence(line) or line.rstrip(_CLOSING).endswith(("：", ":"))


def _ends_sentence(line: str) -> bool:
    """It ends a sentence: 。 (before a closing bracket too), or a polite end whose 。 was left off."""
    return line.rstrip(_CLOSING).endswith((*_SENTENCE_END, *_POLITE_END))


def _wrap_width(widths: list[int]) -> int | None:
    """The width a paragraph was wrapped at: the widest that two of its lines (the last aside)
    reach; None if no two do (helper-92: a long URL's line made the real wraps look short)."""
    body = sorted(widths[:-1], reverse=True)
    for wider, next_wide in itertools.pairwise(body):
        if wider >= _WRAPPED_WIDTH and next_wide >= min(wider - 4, wider * _WRAP_BAND):
            return wider
    return None


def _list_mark(line: str) -> bool:
    """A line that starts with a list's mark or a schedule's date or time."""
    return bool(_LIST_START.match(line) or _SCHEDULE_START.match(line))


def _weak_mark(line: str) -> bool:
    """A mark that a sentence may hold too: a date or a time, or a mark followed by a particle."""
    return bool(_REFERENCE.match(line) or (_SCHEDULE_START.match(line) and not _LIST_START.match(line)))


def _listed(line: str) -> bool:
    """A line that starts a list's item or a label, as written (an indented 　高橋 is no label)."""
    return _list_mark(line.strip()) or bool(_LINE_LABEL.match(line))


def _label(line: str, full: bool) -> re.Match[str] | None:
    """The line's label (日時：), unless it is a word and a 全角 space in a paragraph's wrapped text."""
    label = _LINE_LABEL.match(line)
    return None if label and full and _SPACE_LABEL.fullmatch(label.group()) else label


def _wrapped(line: str, widest: int) -> bool:
    """A line as wide as the paragraph's widest, and wide enough to have been wrapped (a PDF's
    justified lines differ by a character or two, more where a list is indented)."""
    width = display_width(line)
    return width >= _WRAPPED_WIDTH and width >= min(widest - 4, widest * _WRAP_BAND)


def _goes_on(before: str, after: str) -> bool:
    """Whether the next line carries on the last word: it starts with hiragana (a particle, an
    inflection: 会員企業|は, 開催してい|る) after kanji or kana."""
    return bool(_HIRAGANA.match(after)) and is_wide(before[-1]) and before[-1] not in _CLOSING
