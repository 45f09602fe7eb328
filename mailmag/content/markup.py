"""Item bodies: Markdown (markdown-it-py) to HTML, always sanitized with nh3 before it can reach an issue."""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Iterable, Sequence
from functools import cache

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token

from mailmag import placeholders, text_ja
from mailmag.content import breaks

ALLOWED_TAGS = frozenset({
    "p", "br", "ul", "ol", "li", "strong", "em", "b", "i", "a", "h3", "h4", "blockquote",
    "table", "thead", "tbody", "tr", "th", "td", "hr", "code", "pre",
})
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "th": {"style", "colspan", "rowspan"},
    "td": {"style", "colspan", "rowspan"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto"})

# Item headings sit under the issue's own h1/h2 (issue title, item title): # → h3, ## and deeper → h4.
_HEADING_LEVEL = {"h1": "h3", "h2": "h4", "h3": "h4", "h4": "h4", "h5": "h4", "h6": "h4"}


@cache
def _markdown() -> MarkdownIt:
    # html=True: pasted HTML fragments go through, and nh3 decides what survives of them.
    return keep_markers(MarkdownIt("commonmark", {"html": True}).enable("table"))


_MARKER_STARTS = (placeholders.MARKER_START, placeholders.NEUTRALIZED_START)


def keep_markers(md: MarkdownIt) -> MarkdownIt:
    """A personalization marker's start in an item body is text, shown broken ("__MM-"), and not
    the `__` of bold: bold would have shown "MM_NAME", which says nothing of what was written.
    (placeholders.neutralize still breaks whatever else renders to a marker.)"""
    md.inline.ruler.before("emphasis", "mailmag_marker", _marker_as_text)
    return md


def _marker_as_text(state: StateInline, silent: bool) -> bool:
    # The templates' item fields are broken already (render._item_view); a raw body is not.
    start = next((s for s in _MARKER_STARTS if state.src.startswith(s, state.pos)), None)
    if start is None:
        return False
    if not silent:
        state.push("text", "", 0).content = placeholders.NEUTRALIZED_START
    state.pos += len(start)
    return True


@cache
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=set(ALLOWED_TAGS),
        clean_content_tags={"script", "style"},
        attributes={tag: set(attrs) for tag, attrs in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        # A relative link means nothing in a mail; drop it instead of sending a broken href.
        url_relative="deny",
        filter_style_properties={"text-align"},
        link_rel="noopener noreferrer",
    )


def kept_breaks(children: Sequence[Token]) -> list[bool]:
    """For each break (soft or hard) among an inline token's children, whether the writer meant
    it (breaks.meant_breaks). The lines are read from the children, not the source: a code span
    or a link title may hold a newline that is no break (helper-73)."""
    lines = [""]
    for child in children:
        if child.type in ("softbreak", "hardbreak"):
            lines.append("")
        elif child.type in TEXT_TOKENS:
            lines[-1] += child.content
    return breaks.meant_breaks(lines)


def _line_breaks(token: Token) -> None:
    """A paragraph's soft breaks: a line break where the writer meant one (kept_breaks), else
    nothing between two Japanese characters (a browser would show a stray space)."""
    children = token.children or []
    breaks = [i for i, child in enumerate(children) if child.type in ("softbreak", "hardbreak")]
    for index, kept in zip(breaks, kept_breaks(children), strict=True):
        child = children[index]
        if child.type != "softbreak" or (index and is_br(children[index - 1])):
            continue  # a hard break, or a pasted <br> at the line's end: it breaks already
        if kept:
            child.type, child.tag = "hardbreak", "br"
        elif _between_wide(children[:index], children[index + 1:]):
            child.type, child.tag, child.content = "text", "", ""


def is_br(token: Token) -> bool:
    """A <br> written in the Markdown (pasted from a web page)."""
    return token.type == "html_inline" and bool(_BR.fullmatch(token.content.strip()))


def _between_wide(before: Sequence[Token], after: Sequence[Token]) -> bool:
    """Whether the break is next to Japanese (text_ja.joins_tight): the nearest text either side,
    across emphasis and links (**重要**\nです), as the text edition joins them."""
    last, first = _nearest_text(reversed(before)), _nearest_text(after)
    return bool(last and first) and text_ja.joins_tight(last[-1], first[0])


def _nearest_text(tokens: Iterable[Token]) -> str:
    for token in tokens:
        if token.type in TEXT_TOKENS:
            if token.content:  # (markdown-it leaves an empty text token after emphasis)
                return token.content
        elif token.type not in _MARKUP and not (token.type == "html_inline" and not is_br(token)):
            return ""  # a break, an image: not text to join (an inline tag such as <u> is skipped)
    return ""


# Inline tokens that hold text a reader sees; and those that only open or close markup around it.
TEXT_TOKENS = frozenset({"text", "text_special", "code_inline"})
_MARKUP = frozenset({"strong_open", "strong_close", "em_open", "em_close", "s_open", "s_close",
                     "link_open", "link_close"})


def keep_first_indent(tokens: list[Token], markdown: str) -> list[Token]:
    """Give a paragraph back the 全角 spaces its first line starts with: Markdown strips them
    there, and only there, so an indented list (　・… / 　・…) lost the first line's indent and
    a 字下げ stayed on a paragraph's later lines only (helper-89). Both editions call this."""
    lines = markdown.split("\n")
    for opening, inline in itertools.pairwise(tokens):
        if opening.type != "paragraph_open" or not inline.map or not inline.children:
            continue
        written = lines[inline.map[0]].lstrip(" ")  # (up to three spaces: a quote's > or a list's - is not)
        indent = written[: len(written) - len(written.lstrip("\u3000"))]
        first = inline.children[0]
        if indent and written.strip() and first.type == "text" and not first.content.startswith("\u3000"):
            first.content = indent + first.content
    return tokens


def _tokens(markdown: str) -> list[Token]:
    tokens = keep_first_indent(_markdown().parse(markdown), markdown)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = _HEADING_LEVEL[token.tag]
        elif token.type == "inline" and token.children:
            _line_breaks(token)
            token.children = _bare_urls(token.children)
    return tokens


# A URL written out in the text: ASCII only, so that the Japanese around it (詳細はhttps://…を
# ご覧ください) stays out of it, and without the punctuation that ends its sentence.
_BARE_URL = re.compile(r"https?://[A-Za-z0-9][A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_A_TAG = re.compile(r"<(/?)a\b", re.IGNORECASE)  # a link pasted as HTML


def _bare_urls(children: list[Token]) -> list[Token]:
    """A written-out URL becomes a link in the HTML edition (helper-89: a mail program that links
    it itself may take the Japanese after it into the link). Not inside a link or code."""
    out: list[Token] = []
    depth = 0
    for child in children:
        depth += {"link_open": 1, "link_close": -1}.get(child.type, 0)
        if child.type == "html_inline" and (tag := _A_TAG.match(child.content)):
            depth += -1 if tag.group(1) else 1
        if child.type != "text" or depth or not _BARE_URL.search(child.content):
            out.append(child)
            continue
        at = 0
        for match in _BARE_URL.finditer(child.content):
            url = _balanced(match.group())
            out.append(_text(child.content[at:match.start()]))
            opening = Token("link_open", "a", 1)
            opening.attrs = {"href": url}
            out.extend([opening, _text(url), Token("link_close", "a", -1)])
            at = match.start() + len(url)
        out.append(_text(child.content[at:]))
    return [token for token in out if token.type != "text" or token.content]


def _balanced(url: str) -> str:
    """Without the punctuation that ends its sentence, nor a closing bracket that closes the text
    around it: (see https://example.jp/a).'"""
    counts = {char: url.count(char) for char in "()[]"}
    end = len(url)  # (counted once: a run of 100 000 ')' was quadratic, helper-91)
    while end and (url[end - 1] in ".,;:!?'" or (
            url[end - 1] in ")]" and counts[url[end - 1]] > counts["(" if url[end - 1] == ")" else "["])):
        if url[end - 1] in counts:
            counts[url[end - 1]] -= 1
        end -= 1
    return url[:end]


def _text(content: str) -> Token:
    token = Token("text", "", 0)
    token.content = content
    return token


def sanitize(fragment: str) -> str:
    """Sanitize an HTML fragment: only the allowed tags, http/https/mailto links, no scripts or handlers."""
    return _cleaner().clean(fragment)


def to_html(markdown: str) -> str:
    """Render an item's Markdown body to sanitized HTML (the one way item HTML reaches an issue)."""
    md = _markdown()
    return sanitize(md.renderer.render(_tokens(markdown), md.options, {}))


_BR = re.compile(r"<br\b[^>]*>|</br\s*>", re.IGNORECASE)  # (<br clear="all">, </br>: a <br> to nh3 too)
_PARAGRAPH_END = re.compile(r"</(p|h3|h4|blockquote|pre|table|ul|ol)>|<hr\s*/?>")
_LINE_END = re.compile(r"</(li|tr)>|<br\s*/?>")
_TAG = re.compile(r"<[^>]+>")


def to_text(markdown: str) -> str:
    """A plain-text preview of the body as the HTML shows it (for `items show`, not the mail's text part)."""
    rendered = re.sub(r">\n+<", "><", to_html(markdown))
    rendered = _PARAGRAPH_END.sub("\n\n", rendered)
    rendered = _LINE_END.sub("\n", rendered)
    rendered = re.sub(r"</t[hd]>", " ", rendered.replace("<li>", "・"))
    text = html.unescape(_TAG.sub("", rendered))
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
