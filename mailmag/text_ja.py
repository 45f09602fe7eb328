"""Japanese text rules as pure functions: normalization, display width, kinsoku wrapping, dates."""

from __future__ import annotations

import collections
import datetime as dt
import functools
import re
import unicodedata

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
