"""Japanese text rules as pure functions: normalization, display width, kinsoku wrapping, dates."""

from __future__ import annotations

import collections
import datetime as dt
import functools
import itertools
import re
import unicodedata
from collections.abc import Sequence

# Vertical presentation forms that PDF copy-paste produces, mapped to the full-width
# punctuation they stand for (NFKC would turn ︓ into an ASCII ':', which is wrong here).
_VERTICAL_FORMS = str.maketrans({
    "\ufe10": "，", "\ufe11": "、", "\ufe12": "。", "\ufe13": "：", "\ufe14": "；",
    "\ufe15": "！", "\ufe16": "？", "\ufe17": "〖", "\ufe18": "〗", "\ufe19": "…",
})
# PDF text extraction turns the 全角 space that indents a Japanese paragraph into an EM SPACE
# (the reference article has 39): give the author's character back, so widths count right.
_SPACES = str.maketrans({"\u2003": "\u3000"})
# Kangxi radicals, CJK radicals supplement and CJK compatibility ideographs: each becomes
# the unified ideograph it stands for (⽉ → 月). Only these ranges are touched, so 全角
# letters and digits and half-width katakana stay exactly as the author wrote them.
_IDEOGRAPH_LOOKALIKES = re.compile("[\u2e80-\u2eff\u2f00-\u2fdf\uf900-\ufaff\U0002f800-\U0002fa1f]")
# Control characters other than tab and newline, zero-width spaces, BOMs, word joiners.
# Bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069) too: in a
# title, name or subject they reorder what the reader sees ("Trojan Source" spoofing).
_BIDI = "\u202a-\u202e\u2066-\u2069"
_INVISIBLE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2060\ufeff\u00ad{_BIDI}]")
_BIDI_CONTROLS = re.compile(f"[{_BIDI}]")


def _ideograph(match: re.Match[str]) -> str:
    char = match.group(0)
    mapped = unicodedata.normalize("NFKC", char)
    # Some compatibility ideographs (﨑, 﨟 …) have no decomposition: they are real characters.
    return mapped if len(mapped) == 1 else char


def normalize(text: str) -> str:
    """Clean text pasted from PDFs and word processors, on the way into the database."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
    text = text.replace("\u2029", "\n\n")
    text = _INVISIBLE.sub("", text)
    text = text.translate(_VERTICAL_FORMS).translate(_SPACES)
    return _IDEOGRAPH_LOOKALIKES.sub(_ideograph, text)


def strip_bidi(text: str) -> str:
    """Text without bidirectional control characters (names, subjects: what a reader is shown)."""
    return _BIDI_CONTROLS.sub("", text)


def foreign_line(text: str) -> str:
    """Text from outside that mailmag shows an operator as one line (a relay's reply in `issues
    status` and the console): its lines joined with " / ", so no line it holds reads as one of
    mailmag's; control, format (bidi overrides, zero-width) and blank-looking characters made
    '?', and runs of spaces and of combining marks made one, so it can neither recolour a
    terminal, reorder what is read, nor pad itself to the terminal's edge so that its rest
    reads as a line of its own (helper-74)."""
    if text.isascii() and text.isprintable() and "  " not in text:  # the usual one-line reply
        return text
    joined = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    shown = "".join(_shown_char(c) for c in joined)
    return _COMBINING_RUN.sub(lambda run: run.group(0)[:1], _SPACE_RUN.sub(" ", shown))


# Hangul fillers and the braille blank: printable, and drawn as nothing.
_BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_SPACE_RUN = re.compile(" {2,}")
_COMBINING_RUN = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]{2,}")


def _shown_char(char: str) -> str:
    category = unicodedata.category(char)
    if category == "Zs":
        return " "
    return "?" if category[0] == "C" or char in _BLANK_LOOKING else char  # Cc, Cf, Cs, Co, Cn


def normalize_line(text: str) -> str:
    """normalize() for one-line fields (titles, venues): no line breaks, trimmed."""
    return " ".join(normalize(text).split("\n")).strip()


# --- characters that render poorly -----------------------------------------------------------

# Compatibility characters that old phones, some webmail fonts and screen readers show as
# tofu, as a different character or not at all: circled and parenthesized numbers (①, ⑴),
# Roman numerals (Ⅲ), enclosed and squared CJK (㈱, ㊤, ㌔, ㍻, ㎡), №, ℡ and half-width
# katakana. compose warns about them and offers what NFKC makes of them, except where NFKC
# loses meaning (㎡ → m2): there the override says what a writer would type.
_POOR = re.compile(
    "[\uff61-\uff9f]+"  # half-width katakana and punctuation, as runs: ｶﾞ is one character
    "|[\u2116\u2121\u2160-\u2188\u2460-\u24ff\u3200-\u33ff]"
)
_POOR_OVERRIDES = {"㎡": "m²", "㎥": "m³", "㎠": "cm²", "㎤": "cm³", "㎟": "mm²"}


def poor_characters(text: str) -> list[tuple[str, str]]:
    """(as written, suggested) for each distinct run of poorly rendered characters, in order."""
    found: dict[str, str] = {}
    for match in _POOR.finditer(text):
        chars = match.group(0)
        if chars not in found:
            suggested = _POOR_OVERRIDES.get(chars) or unicodedata.normalize("NFKC", chars)
            if suggested != chars:
                found[chars] = suggested
    return list(found.items())


def suggest_display(text: str) -> str:
    """`text` with every poorly rendered character replaced by its suggestion."""
    return _POOR.sub(lambda m: _POOR_OVERRIDES.get(m.group(0)) or unicodedata.normalize("NFKC", m.group(0)),
                     text)


# --- display width --------------------------------------------------------------------------

# Characters a browser or BudouX may leave behind that must never reach a plain-text mail.
_ZERO_WIDTH = re.compile("[\u200b\u2060\ufeff]")


@functools.lru_cache(maxsize=8192)
def char_width(char: str) -> int:
    """Columns one character takes in a Japanese mail client: 2 for wide, full-width and ambiguous.

    Ambiguous characters (※ → ○ … ━) are drawn full-width by Japanese fonts, so counting
    them as 2 keeps a line within the width in every client.
    """
    if unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F", "A") else 1


def display_width(text: str) -> int:
    """Columns a string takes (全角 = 2)."""
    return sum(char_width(char) for char in text)


# --- line breaks the writer meant ------------------------------------------------------------

# Markdown joins the lines of a paragraph, and a Japanese text pasted from a PDF or a word
# processor is wrapped mid-sentence, so lines are joined; but a notice typed line by line
# (日時：… / 場所：… / 参加費：…) read as one run-on line (helper-70).
_SENTENCE_END = ("。", "！", "？", "．")  # (．: the 「，．」 style of academic writing)
_CLOSING = "）)」』】〕〉》］”’"  # after a sentence's end: （詳細は別紙のとおり。）
_NUMBERED = r"[(（]?[0-9０-９]{1,3}[.)）．、]"  # 1. 1) （1） 1、
# (1. and 1、 but not 3.5倍 nor 12.10: a digit after the point is a number, not a list)
# Ⅰ．, （ア）, ア．, ア　, 一　, 第１　, ①: the marks of an official document's lists too (helper-92)
_LIST_START = re.compile(r"[・●○◎■□◆◇※★☆▼▽→⇒〒＜〈《【［①-⑳㉑-㉟〇◯＊⑴-⒇]"
                         rf"|{_NUMBERED}(?![0-9０-９])"
                         r"|[Ⅰ-Ⅻⅰ-ⅻ][.．、)）\s]|[(（][ア-ン一二三四五六七八九十a-zａ-ｚ][)）]|[ア-ン][.．)）]"
                         "|(?:[ア-ン一二三四五六七八九十]|第[0-9０-９一二三四五六七八九十]{1,2})\u3000")
# What a PDF's wrap may put at a line's start mid-sentence (…計画案と / （1）から（3）の様式が…,
# …については、 / 【別紙】の方針案が…): a list's mark only where the next line is listed too.
_BRACKET_START = re.compile(rf"[〒＜〈《【［]|{_NUMBERED}")
# A sentence that begins in hiragana: なお、 また、 ただし、 (not a particle going on: に掲載…)
_CONJUNCTION = re.compile("[ぁ-ゖ]{1,4}、")
# A sentence's polite end, its 。 left off (…開催します / なお、…; …ご注意ください / お問い合わせ先　…)
_POLITE_END = ("ます", "です", "ください", "ません", "ました", "でした")
# 日時　12月10日: a label with a 全角 space for its colon, which is also how a name is written
# (佐藤　次郎); after a line as wide as a wrap, it is the name (helper-91).
_SPACE_LABEL_TEXT = "[^\\s：:、。]{1,6}\u3000+"
_SPACE_LABEL = re.compile(_SPACE_LABEL_TEXT)
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
    short lines (an address, a name and title). After a line as wide as the wraps, what a wrap
    can put at a line's start mid-sentence ((1) or 【別紙】, a name 佐藤　次郎, a 全角 space) is
    text unless the next line is listed too. Between English words a break stays Markdown's."""
    stripped = [line.strip() for line in lines]
    shown = _wrap_width([display_width(line) for line in stripped])
    width = shown or max((display_width(line) for line in stripped), default=0)
    return [_meant(stripped[i], stripped[i + 1], width, first=i == 0, shown_width=shown is not None,
                   indent=lines[i + 1][: len(lines[i + 1]) - len(lines[i + 1].lstrip("\u3000"))],
                   listed=_listed(lines[i]) or (i + 2 < len(lines) and _listed(lines[i + 2])))
            for i in range(len(lines) - 1)]


def _wrap_width(widths: list[int]) -> int | None:
    """The width a paragraph was wrapped at: the widest that two of its lines (the last aside)
    reach; None if no two do (helper-92: a long URL's line made the real wraps look short)."""
    body = sorted(widths[:-1], reverse=True)
    for wider, next_wide in itertools.pairwise(body):
        if wider >= _WRAPPED_WIDTH and next_wide >= min(wider - 4, wider * _WRAP_BAND):
            return wider
    return None


def _listed(line: str) -> bool:
    """A line that starts a list's item or a label, as written (an indented 　高橋 is no label)."""
    return bool(_LIST_START.match(line.strip()) or _LINE_LABEL.match(line))


def _meant(before: str, after: str, width: int, *, first: bool, indent: str, shown_width: bool,
           listed: bool) -> bool:
    # As wide as the paragraph's wraps: a PDF's wrap may put （1）, 【別紙】, a name (佐藤　次郎)
    # or the 全角 space between two words at a line's start, mid-sentence (helper-91).
    full = shown_width and _wrapped(before, width) and not before.endswith(("：", ":"))
    marked = bool(_label(before, full) or _LIST_START.match(before))
    # (`listed`: the line before or after this pair is a list's item or a label too)
    if not indent and _label(after, full and not listed and not before.endswith(_POLITE_END)):
        return True
    if before.rstrip(_CLOSING).endswith(_SENTENCE_END) or after.startswith(("http://", "https://")) or (
            before.endswith(_POLITE_END) and _CONJUNCTION.match(after)):
        return True
    if _LIST_START.match(after):
        return marked or not full or listed or not _BRACKET_START.match(after)
    if indent:  # 字下げ, a line aligned under a label or a list's; or a space that fell at a wrap
        return not (full and not marked and indent == "\u3000")
    japanese = bool(before and after) and (is_wide(before[-1]) or is_wide(after[0]))
    goes_on = bool(_HIRAGANA.match(after)) and not _CONJUNCTION.match(after)
    if japanese and is_wide(after[0]) and not goes_on and _ENGLISH_END.search(before):
        return True  # (…"Open Innovation." / です。 goes on; なお、 begins a sentence)
    if marked:
        # 日時：12月10日, ・展示B, 〒… 1-2-1 / くにびきメッセ are lines of their own (helper-87,
        # -89); ・… wrapped by a PDF among lines as wide, or cut before its particle, is not.
        wide = display_width(before) >= _WRAPPED_WIDTH
        return not ((shown_width and _wrapped(before, width)) or (wide and _goes_on(before, after)))
    if not japanese:
        return False
    if width < _WRAPPED_WIDTH:
        return True
    # two short lines in a row, past the first: a wrap fills its line, so they are an address's
    # or a name's lines among wider ones (helper-89)
    return not first and not _wrapped(before, width) and not _wrapped(after, width) and is_wide(after[0])


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


def joins_tight(before: str, after: str) -> bool:
    """Whether a wrap between these two characters is joined with nothing rather than a space:
    next to Japanese (対象とした / DX推進 is 対象としたDX推進: helper-74), in both editions."""
    return is_wide(before) or is_wide(after)


def is_wide(char: str) -> bool:
    """A Japanese (CJK) character where lines join: wide or full-width only. “ ” — … are
    ambiguous, and English uses them between words (CSS Text's segment-break rule reads it so)."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def strip_zero_width(text: str) -> str:
    return _ZERO_WIDTH.sub("", text)


# --- wrapping with kinsoku (禁則処理) ----------------------------------------------------------

# 行頭禁則: never the first character of a wrapped line.
NO_LINE_START = frozenset(
    "、。，．,.・：；:;？！?!‼⁇⁈⁉）)］]｝}〕〉》」』】〙〗〟’”｠»›"
    "ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿｧｨｩｪｫｬｭｮｯ"
    "ーｰゝゞヽヾ々〻‐゠–〜～％%‰℃°′″"
)
# 行末禁則: never the last character of a wrapped line.
NO_LINE_END = frozenset("（(［[｛{〔〈《「『【〘〖〝‘“｟«‹¥$￥＄£€＃#")

# The unbreakable units of a line, in order of precedence: runs of spaces (where English
# breaks); runs of ASCII and 全角 alphanumerics, with 全角 separators between digits (words,
# URLs, 5,000, 13:30, 11／22, the __MM_…__ placeholders); ……, ——, rules ━━; one character.
_ATOM = re.compile(
    "(?P<space> +)"
    "|(?:[!-~０-９Ａ-Ｚａ-ｚ]|(?<=[0-9０-９])[，．：／](?=[0-9０-９]))+"
    "|[…‥]+|[—―]+|[─━]+"
    "|.",
    re.S,
)
# A list marker or numbering: wrapped lines hang under the text that follows it.
_MARKER = re.compile(r"(?:[・•◆◇■□●○◎※→▶▷★☆]|[-*+] |[（(]\d{1,2}[）)]|\d{1,2}[.．)] ?|[①-⑳])")
# "日時：" after an indent: wrapped lines hang under the value.
_LABEL = re.compile("[^\\s：:]{1,8}[：:]")
# A line broken at a phrase boundary (BudouX) must still be at least this full.
MIN_FILL = 0.8


class _Chunk:
    """Atoms that must stay on one line (kinsoku glues them), with trailing spaces."""

    __slots__ = ("atoms", "body", "body_width", "start", "text", "width")

    def __init__(self, start: int, atoms: list[str]) -> None:
        self.start = start
        self.atoms = atoms

    def finish(self) -> _Chunk:
        self.text = "".join(self.atoms)
        self.body = self.text.rstrip(" ")
        self.width = display_width(self.text)
        self.body_width = self.width - (len(self.text) - len(self.body))
        return self

    def splittable(self) -> bool:
        """Only a run of single characters (、、、」」」) may be broken inside; words, URLs never."""
        solid = [atom for atom in self.atoms if not atom.startswith(" ")]
        return len(solid) > 1 and all(len(atom) == 1 for atom in solid)


def _glued(previous: str, atom: str) -> bool:
    first = atom[0]
    return (first in NO_LINE_START or char_width(first) == 0 or previous[-1] in NO_LINE_END
            or previous.endswith("\u200d"))


def _chunks(text: str) -> list[_Chunk]:
    chunks: list[_Chunk] = []
    previous = ""
    for match in _ATOM.finditer(text):
        atom = match.group()
        if chunks and (match.group("space") or _glued(previous, atom)):
            chunks[-1].atoms.append(atom)
        else:
            chunks.append(_Chunk(match.start(), [atom]))
        if not match.group("space"):
            previous = atom
    return [chunk.finish() for chunk in chunks]


def _phrase_starts(text: str) -> set[int]:
    """Offsets where BudouX sees a phrase (文節) begin: preferred, never required, breaks."""
    phrases = _budoux_parser().parse(text)
    if "".join(phrases) != text:
        return set()
    starts, offset = set(), 0
    for phrase in phrases:
        starts.add(offset)
        offset += len(phrase)
    return starts


@functools.cache
def _budoux_parser():
    import budoux

    return budoux.load_default_japanese_parser()


def _cut(line: list[_Chunk], next_start: int, avail: int, phrases: set[int] | None) -> int:
    """How many chunks stay on the line: all, or up to a phrase boundary if the line stays full."""
    if phrases is None or next_start in phrases:
        return len(line)
    kept = sum(c.width for c in line)
    for k in range(len(line) - 1, 0, -1):
        kept -= line[k].width
        if line[k].start in phrases:
            return k if kept - (line[k - 1].width - line[k - 1].body_width) >= MIN_FILL * avail else len(line)
    return len(line)


def _split(chunk: _Chunk) -> list[_Chunk]:
    """A kinsoku run too wide for any line (、、、」」」…): break it anyway."""
    parts: list[_Chunk] = []
    offset = chunk.start
    for atom in chunk.atoms:
        if parts and atom.startswith(" "):
            parts[-1].atoms.append(atom)
        else:
            parts.append(_Chunk(offset, [atom]))
        offset += len(atom)
    return [part.finish() for part in parts]


def _fill(chunks: list[_Chunk], width: int, first: str, hanging: str, phrases: set[int] | None) -> list[str]:
    lines: list[str] = []
    prefix, line, used = first, [], 0  # used: width of the line's chunks with their spaces
    queue = collections.deque(chunks)
    while queue:
        chunk = queue.popleft()
        avail = width - display_width(prefix)
        if used + chunk.body_width <= avail:
            line.append(chunk)
            used += chunk.width
            continue
        if line:
            cut = _cut(line, chunk.start, avail, phrases)
            lines.append(prefix + "".join(c.text for c in line[:cut]).rstrip(" "))
            queue.appendleft(chunk)
            queue.extendleft(reversed(line[cut:]))
        elif chunk.splittable():
            queue.extendleft(reversed(_split(chunk)))
            continue
        else:
            # A URL (with its brackets and punctuation) wider than the room after the indent: alone,
            # unbroken, and without the indent (with it, a URL that fits the width would pass it).
            lines.append(chunk.body)
        prefix, line, used = hanging, [], 0
    if line or not lines:
        lines.append(prefix + "".join(c.text for c in line).rstrip(" "))
    return lines


def _hanging_indent(lead: str, rest: str) -> str:
    """Spaces that wrapped lines start with: under the text after a list marker or label."""
    marker = _MARKER.match(rest)
    if marker is None and lead not in ("", " ", "\u3000"):
        marker = _LABEL.match(rest)
    if marker is not None:
        return " " * (display_width(lead) + display_width(marker.group()))
    # One space or one 全角 space is a paragraph's first-line indent (字下げ), not a hanging one.
    return "" if lead in ("", " ", "\u3000") else " " * display_width(lead)


def wrap_line(line: str, width: int = 70, *, hanging: str | None = None, phrases: bool = True) -> list[str]:
    """Wrap one line to `width` columns (全角 = 2) with kinsoku; the lines joined give it back.

    Breaks never split a URL, an English word, a number such as 5,000, …… or ——; no wrapped
    line starts with 、。）」ー etc. or ends with （「『. BudouX's phrase boundaries are preferred
    when the line stays at least MIN_FILL full. Leading indentation is kept on the first line;
    wrapped lines start with `hanging` (default: under a list marker's text, or the indent).
    """
    line = strip_zero_width(line).rstrip(" ")
    lead = line[: len(line) - len(line.lstrip(" \u3000"))]  # spaces, ASCII or 全角
    rest = line[len(lead):]
    if hanging is None:
        hanging = _hanging_indent(lead, rest)
    if display_width(hanging) > width // 2:
        hanging = ""
    if display_width(line) <= width or not rest:
        return [line]
    starts = _phrase_starts(rest) if phrases else None
    return _fill(_chunks(rest), width, lead, hanging, starts)


def wrap_text(text: str, width: int = 70) -> str:
    """Wrap every line of a plain-text mail to `width`; no zero-width characters remain."""
    out: list[str] = []
    for line in strip_zero_width(text).expandtabs(4).split("\n"):
        out.extend(wrap_line(line, width))
    return "\n".join(out)


def rule(char: str = "━", width: int = 70) -> str:
    """A horizontal rule exactly `width` columns wide (or as close as the character allows)."""
    return char * max(width // max(char_width(char), 1), 1)


# --- dates ----------------------------------------------------------------------------------

WEEKDAYS_JA = "月火水木金土日"
_WEEKDAYS_EN = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")


def format_date_ja(date: dt.date | None) -> str:
    """2026年12月1日（火）; '' for no date (templates call it on optional fields)."""
    if date is None:
        return ""
    return f"{date.year}年{date.month}月{date.day}日（{WEEKDAYS_JA[date.weekday()]}）"


def format_date_en(date: dt.date | None) -> str:
    """Tue, December 1, 2026 (independent of the machine's locale)."""
    if date is None:
        return ""
    return f"{_WEEKDAYS_EN[date.weekday()]}, {_MONTHS_EN[date.month - 1]} {date.day}, {date.year}"


def format_date_range_ja(start: dt.date | None, end: dt.date | None = None) -> str:
    """2026年11月22日（日）〜23日（月）: the end omits what it shares with the start."""
    if start is None or end is None or end == start:
        return format_date_ja(start)
    weekday = f"（{WEEKDAYS_JA[end.weekday()]}）"
    if end.year != start.year:
        tail = format_date_ja(end)
    elif end.month != start.month:
        tail = f"{end.month}月{end.day}日{weekday}"
    else:
        tail = f"{end.day}日{weekday}"
    return f"{format_date_ja(start)}〜{tail}"


def format_date_range_en(start: dt.date | None, end: dt.date | None = None) -> str:
    """Sun, November 22 – Mon, November 23, 2026."""
    if start is None or end is None or end == start:
        return format_date_en(start)
    if end.year != start.year:
        return f"{format_date_en(start)} – {format_date_en(end)}"
    head = f"{_WEEKDAYS_EN[start.weekday()]}, {_MONTHS_EN[start.month - 1]} {start.day}"
    return f"{head} – {format_date_en(end)}"
