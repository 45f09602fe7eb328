"""Per-recipient values in a frozen rendering: placeholders put in once, substituted per mail.

The composer writes these markers where a recipient's value belongs; premailer, lxml and
the text wrapper leave them alone (ASCII letters and underscores only). Pages and previews
fill them with `substitute` (HTML-escaping in HTML); the message builder `split`s a rendering
around them once per issue and joins the pieces per recipient. Nothing per recipient
goes through Jinja2 or premailer.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

PLACEHOLDERS = {
    "name": "__MM_NAME__",
    "email": "__MM_EMAIL__",
    "unsubscribe_url": "__MM_UNSUBSCRIBE_URL__",
    "preferences_url": "__MM_PREFERENCES_URL__",
}
_PATTERN = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS.values()) + ")")
# What every marker starts with. In submitted text it becomes "__MM-" (visible, ASCII, kept
# by every later step), so no item can reach a recipient's address or links (`neutralize`).
MARKER_START = "__MM_"
NEUTRALIZED_START = "__MM-"
_BY_MARKER = {marker: key for key, marker in PLACEHOLDERS.items()}


def substitute(template: str, values: Mapping[str, str], *, escape: bool) -> str:
    """Replace every placeholder in one pass; `escape` for HTML. Unknown keys stay empty."""
    if escape:
        values = {k: html.escape(v, quote=True) for k, v in values.items()}
    return _PATTERN.sub(lambda m: values.get(_BY_MARKER[m.group(0)], ""), template)


def split(template: str) -> tuple[list[str], list[str]]:
    """The literal stretches of `template` and the keys of the markers between them (one
    literal more than keys): the message builder encodes the literals once per issue."""
    pieces = _PATTERN.split(template)
    return pieces[::2], [_BY_MARKER[marker] for marker in pieces[1::2]]


def neutralize(text: str) -> str:
    """Submitted text (an item's fields, its rendered Markdown) with every marker broken:
    only the templates may place per-recipient values. Run on what an item renders to, so
    entities or escapes that decode to a marker are caught too."""
    while MARKER_START in text:  # until none is left, also one formed by a replacement
        text = text.replace(MARKER_START, NEUTRALIZED_START)
    return text


def sample_values(base_url: str) -> dict[str, str]:
    """What `issues preview` shows in place of a recipient."""
    return {
        "name": "山田 太郎",
        "email": "yamada@example.jp",
        "unsubscribe_url": base_url.rstrip("/") + "/u/SAMPLE-TOKEN",
        "preferences_url": base_url.rstrip("/") + "/p/SAMPLE-TOKEN",
    }
