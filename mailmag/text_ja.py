"""Japanese text rules as pure functions: normalization of pasted text (more rules follow)."""

from __future__ import annotations

import re
import unicodedata

# Vertical presentation forms that PDF copy-paste produces, mapped to the full-width
# punctuation they stand for (NFKC would turn ︓ into an ASCII ':', which is wrong here).
_VERTICAL_FORMS = str.maketrans({
    "\ufe10": "，", "\ufe11": "、", "\ufe12": "。", "\ufe13": "：", "\ufe14": "；",
    "\ufe15": "！", "\ufe16": "？", "\ufe17": "〖", "\ufe18": "〗", "\ufe19": "…",
})
# Kangxi radicals, CJK radicals supplement and CJK compatibility ideographs: each becomes
# the unified ideograph it stands for (⽉ → 月). Only these ranges are touched, so 全角
# letters and digits and half-width katakana stay exactly as the author wrote them.
_IDEOGRAPH_LOOKALIKES = re.compile("[\u2e80-\u2eff\u2f00-\u2fdf\uf900-\ufaff\U0002f800-\U0002fa1f]")
# Control characters other than tab and newline, zero-width spaces, BOMs, word joiners.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2060\ufeff\u00ad]")


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
    text = text.translate(_VERTICAL_FORMS)
    return _IDEOGRAPH_LOOKALIKES.sub(_ideograph, text)


def normalize_line(text: str) -> str:
    """normalize() for one-line fields (titles, venues): no line breaks, trimmed."""
    return " ".join(normalize(text).split("\n")).strip()
