"""Rendering an issue: Jinja2, then premailer, once per issue and language; item Markdown as plain text.

Templates (the secretariat edits them) live in `config.templates_path`: `issue.html.j2` and
`issue.txt.j2` make the Japanese edition; `issue.en.html.j2` and `issue.en.txt.j2`, when
present, an English one. HTML templates are autoescaped; text templates are not (plain text
has no entities). Per-recipient values are the `placeholders.PLACEHOLDERS` markers, exposed as
`recipient.*`: nothing per recipient goes through Jinja2 or premailer.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import logging
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import lxml.html
import premailer
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from mailmag import addresses, links, placeholders, text_ja
from mailmag.config import Config
from mailmag.content import markup
from mailmag.content.items import KIND_LABELS
from mailmag.errors import ComplianceError, ConfigError
from mailmag.models import Item

KIND_LABELS_EN = {"meeting": "Meeting reports", "event": "Events", "exhibitors": "Calls for exhibitors",
                  "news": "News"}
LANGS = ("ja", "en")
_HEADLINE_MORE = {"ja": " ほか", "en": " and more"}


@dataclass(frozen=True)
class IssueSpec:
    """What an issue is made of, in order; `title` None means the configured title template."""

    number: int
    title: str | None
    date: dt.date
    items: Sequence[Item]


@dataclass(frozen=True)
class Edition:
    """One language's frozen rendering: the final HTML (CSS inlined) and the wrapped text."""

    lang: str
    title: str
    subject: str
    html: str
    text: str


# --- the environment ------------------------------------------------------------------------


def make_environment(templates_path: Path) -> jinja2.Environment:
    """The Jinja2 environment for issue templates, with the date, Markdown and text filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_path)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        date=_date, date_range=_date_range,
        date_ja=text_ja.format_date_ja, date_en=text_ja.format_date_en,
        date_range_ja=text_ja.format_date_range_ja, date_range_en=text_ja.format_date_range_en,
        markdown=lambda source: Markup(placeholders.neutralize(markup.to_html(source or ""))),
        markdown_text=lambda source: placeholders.neutralize(markdown_to_text(source)),
        width=text_ja.display_width,
    )
    env.globals.update(
        recipient=types.SimpleNamespace(**placeholders.PLACEHOLDERS),
        rule=text_ja.rule,
    )
    return env


@jinja2.pass_context
def _date(context: jinja2.runtime.Context, value: dt.date | None) -> str:
    """2026年12月1日（火） in a Japanese template, Tue, December 1, 2026 in an English one."""
    english = context.get("lang") == "en"
    return (text_ja.format_date_en if english else text_ja.format_date_ja)(value)


@jinja2.pass_context
def _date_range(context: jinja2.runtime.Context, start: dt.date | None, end: dt.date | None = None) -> str:
    english = context.get("lang") == "en"
    return (text_ja.format_date_range_en if english else text_ja.format_date_range_ja)(start, end)


def template_names(lang: str) -> tuple[str, str]:
    """The HTML and text template of one language's edition."""
    suffix = "" if lang == "ja" else f".{lang}"
    return f"issue{suffix}.html.j2", f"issue{suffix}.txt.j2"


def available_langs(env: jinja2.Environment) -> list[str]:
    """ja always; another language when both of its templates exist (one alone is a mistake)."""
    present = set(env.list_templates())
    langs = []
    for lang in LANGS:
        found = [name for name in template_names(lang) if name in present]
        if lang == "ja" or len(found) == 2:
            langs.append(lang)
        elif found:
            missing = next(n for n in template_names(lang) if n not in present)
            raise ConfigError(f"{found[0]} exists but {missing} does not: add both templates or neither")
    return langs


# --- rendering ------------------------------------------------------------------------------


def inline_css(document: str) -> str:
    """premailer: CSS into style attributes; media queries and :hover stay in a <style> block.

    No base_url, so hrefs (and the placeholders in them) are left exactly as written.
    """
    return premailer.Premailer(
        document,
        keep_style_tags=False,  # leftover rules (@media, :hover) are kept; the rest is inlined
        strip_important=False,
        disable_validation=True,
        remove_classes=False,
        allow_network=False,
        cssutils_logging_level=logging.CRITICAL,
    ).transform()


def render_issue(env: jinja2.Environment, config: Config, spec: IssueSpec) -> list[Edition]:
    """Every edition of an issue: Jinja2 then premailer exactly once per language."""
    check_sender(config)
    return [render_edition(env, config, spec, lang) for lang in available_langs(env)]


def render_edition(env: jinja2.Environment, config: Config, spec: IssueSpec, lang: str) -> Edition:
    context = issue_context(config, spec, lang)
    html_name, text_name = template_names(lang)
    document = _render(env, html_name, context)
    text = _render(env, text_name, context)
    check_compliance(config, html_name, _visible_text(document), document)
    check_compliance(config, text_name, text, text)
    text = re.sub(r"\n{3,}", "\n\n", text_ja.wrap_text(text, config.compose.wrap_width))
    text = "\n".join(line.rstrip() for line in text.strip("\n").split("\n")) + "\n"
    issue = context["issue"]
    return Edition(lang, issue.title, issue.subject, inline_css(document), text)


def _folder(env: jinja2.Environment) -> str:
    loader = env.loader
    return loader.searchpath[0] if isinstance(loader, jinja2.FileSystemLoader) else "the templates folder"


def _render(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(
            f"template {exc.name} not found in {_folder(env)}: "
            "copy it from mailmag's templates/ folder or fix [mailmag] templates_dir"
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{exc.filename or exc.name}:{exc.lineno}: {exc.message}") from exc
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"template {name}: {exc.message}; check the names it uses") from exc


# --- the context ----------------------------------------------------------------------------


def issue_context(config: Config, spec: IssueSpec, lang: str) -> dict[str, Any]:
    """What the templates see. Everything here is the same for every recipient."""
    labels = KIND_LABELS_EN if lang == "en" else KIND_LABELS
    views = [_item_view(item, position, labels) for position, item in enumerate(spec.items, start=1)]
    title, subject = titles(config, spec, lang)
    sections = [
        types.SimpleNamespace(kind=kind, label=labels[kind], items=[v for v in views if v.kind == kind])
        for kind in dict.fromkeys(v.kind for v in views)
    ]
    base = config.mailmag.base_url
    return {
        "lang": lang,
        "issue": types.SimpleNamespace(
            number=spec.number, title=title, subject=subject, date=spec.date, custom_title=spec.title,
            preheader="／".join(v.title for v in views),
        ),
        "sections": sections,
        "items": views,
        "sender": config.sender,
        "list_name": config.sender.list_name,
        "archive_url": links.archive_url(base, spec.number),
        "archive_index_url": links.archive_url(base),
        "subscribe_url": links.subscribe_url(base),
        "width": config.compose.wrap_width,
    }


def _item_view(item: Item, position: int, labels: dict[str, str]) -> types.SimpleNamespace:
    """An item as templates see it: its text can never hold a per-recipient marker."""
    fields = ("id", "kind", "title", "body", "date", "end_date", "time_text", "venue", "url",
              "deadline", "fee", "event_name", "how_to_apply")
    safe = placeholders.neutralize
    values = {name: (safe(v) if isinstance(v := getattr(item, name), str) else v) for name in fields}
    values["url"] = links.as_uri(values["url"]) if values["url"] else values["url"]  # clickable as text too
    return types.SimpleNamespace(
        **values,
        number=position, label=labels.get(item.kind, item.kind), anchor=f"item-{item.id}",
        org=safe(item.org.name), org_short=safe(item.org.short_name or item.org.name),
    )


def titles(config: Config, spec: IssueSpec, lang: str) -> tuple[str, str]:
    """The issue's title and its mail subject, from the [compose] templates."""
    compose = config.compose
    english = lang == "en"
    fields = {"list_name": config.sender.list_name, "number": spec.number}
    title = spec.title or _format("title_template_en" if english else "title_template",
                                  compose.title_template_en if english else compose.title_template, fields)
    headline = placeholders.neutralize(spec.items[0].title) if spec.items else title
    if len(spec.items) > 1:
        headline += _HEADLINE_MORE[lang]
    subject = _format("subject_template_en" if english else "subject_template",
                      compose.subject_template_en if english else compose.subject_template,
                      {**fields, "title": title, "headline": headline})
    return text_ja.strip_bidi(title), " ".join(text_ja.strip_bidi(subject).split())


def _format(key: str, template: str, fields: dict[str, Any]) -> str:
    try:
        return template.format_map(fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"[compose] {key} {template!r} cannot be filled ({exc}); "
            f"use only {', '.join('{' + f + '}' for f in fields)}"
        ) from exc


# --- 特定電子メール法 ------------------------------------------------------------------------

_SENDER_FIELDS = {
    "name": "the sender's name",
    "postal_address": "the sender's postal address",
    "contact": "a contact for enquiries",
}
_SENDER_FIELDS_JA = {"name": "送信者の名称", "postal_address": "送信者の住所", "contact": "問い合わせ先"}


def check_sender(config: Config) -> None:
    """Refuse to render without the sender data every issue must show."""
    for key, what in _SENDER_FIELDS.items():
        if not getattr(config.sender, key).strip():
            raise ComplianceError(
                f"[sender] {key} is empty: set {what} in the configuration "
                "(特定電子メール法 requires it in every issue)",
                ja=f"設定の [sender] {key}（{_SENDER_FIELDS_JA[key]}）が空です"
                   "（特定電子メール法により各号に必要です）",
            )


def check_real_sender(config: Config) -> None:
    """Refuse the example [sender] values config.example.toml ships: no issue goes out with them.
    And addresses no message could be sent from."""
    addresses.check_sender_addresses(config)
    keys = config.sender.placeholders()
    if keys:
        named = ", ".join(keys)
        verb = "holds the example value" if len(keys) == 1 else "hold the example values"
        raise ComplianceError(
            f"[sender] {named} still {verb} of config.example.toml: set the "
            "secretariat's own in mailmag.toml (特定電子メール法 requires the real sender in every issue)",
            ja=f"設定の [sender] {named} が config.example.toml の例のままです。"
               "mailmag.toml に事務局の実際の値を設定してください（特定電子メール法により、"
               "各号に実際の送信者を表示する必要があります）",
        )


def check_compliance(config: Config, template: str, shown: str, source: str) -> None:
    """Refuse a template whose output lacks the sender data or the unsubscribe link."""
    collapsed = " ".join(shown.split())
    absent = [key for key in _SENDER_FIELDS if " ".join(getattr(config.sender, key).split()) not in collapsed]
    missing = [_SENDER_FIELDS[key] for key in absent]
    missing_ja = [_SENDER_FIELDS_JA[key] for key in absent]
    if placeholders.PLACEHOLDERS["unsubscribe_url"] not in source:
        missing.append("the unsubscribe link (recipient.unsubscribe_url)")
        missing_ja.append("配信停止のリンク（recipient.unsubscribe_url）")
    if missing:
        listed = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
        raise ComplianceError(
            f"template {template} does not show {listed}, which 特定電子メール法 requires in every "
            "issue: add them to its footer",
            ja=f"テンプレート {template} に {'・'.join(missing_ja)} が表示されていません。"
               "特定電子メール法により各号に必要です。フッターに追加してください",
        )


def _visible_text(document: str) -> str:
    root = lxml.html.document_fromstring(document)
    body = root.find("body")
    return (body if body is not None else root).text_content()


# --- Markdown to plain text -----------------------------------------------------------------


@functools.cache
def _markdown() -> MarkdownIt:
    return markup.keep_markers(MarkdownIt("commonmark").enable("table"))


_TAG = re.compile(r"<[^>]+>")
# What the HTML edition drops with its content (markup's nh3 clean_content_tags): a script's
# code or a stylesheet is not text for the reader of the plain edition either.
_HIDDEN = re.compile(r"<(script|style)\b[^>]*>.*?(?:</\1\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_HIDDEN_OPEN = re.compile(r"<(script|style)\b", re.IGNORECASE)


def markdown_to_text(source: str | None) -> str:
    """An item's Markdown body as plain text: paragraphs, ・ bullets, links as 'text (URL)'."""
    writer = _TextWriter()
    for token in markup.keep_first_indent(_markdown().parse(source or ""), source or ""):
        writer.feed(token)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(writer.lines)).strip("\n")


class _TextWriter:
    """Turns markdown-it's block tokens into lines of plain text."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lists: list[list[int | None]] = []  # per open list: the next number, None for bullets
        self.marker = ""
        self.quote = 0
        self.heading = False
        self.row: list[str] | None = None

    def feed(self, token: Token) -> None:
        kind = token.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            self.lists.append([int(token.attrGet("start") or 1) if kind == "ordered_list_open" else None])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            self.lists.pop()
            if not self.lists:
                self.lines.append("")
        elif kind == "list_item_open":
            counter = self.lists[-1]
            self.marker = "  " * (len(self.lists) - 1) + ("・" if counter[0] is None else f"{counter[0]}. ")
            if counter[0] is not None:
                counter[0] += 1
        elif kind == "inline":
            self._inline(_inline_text(token.children or []))
        elif kind in ("paragraph_close", "heading_close") and not token.hidden:
            self.heading = False
            self.lines.append("")
        else:
            self._block(token)

    def _block(self, token: Token) -> None:
        kind = token.type
        if kind == "heading_open":
            self.heading = True
        elif kind in ("blockquote_open", "blockquote_close"):
            self.quote += 1 if kind == "blockquote_open" else -1
        elif kind in ("fence", "code_block"):
            self.lines.extend([*token.content.rstrip("\n").split("\n"), ""])
        elif kind == "html_block":
            text = html.unescape(_TAG.sub("", _HIDDEN.sub("", token.content))).strip()
            self.lines.extend([text, ""] if text else [])
        elif kind == "hr":
            self.lines.extend(["", ""])
        elif kind == "tr_open":
            self.row = []
        elif kind == "tr_close":
            self.lines.append(" | ".join(self.row or []))
            self.row = None
        elif kind == "table_close":
            self.lines.append("")

    def _inline(self, text: str) -> None:
        if self.row is not None:
            self.row.append(text.replace("\n", " "))
            return
        parts = text.split("\n")
        if self.heading:
            parts[0] = f"【{parts[0]}"
            parts[-1] += "】"
        if self.lists:
            first = self.marker or "  " * len(self.lists)
            self.lines.append(first + parts[0])
            self.lines.extend("  " * len(self.lists) + part for part in parts[1:])
            self.marker = ""
            return
        self.lines.extend("> " * self.quote + part for part in parts)


def _inline_text(children: list[Token]) -> str:
    """A paragraph's text, its line breaks where the writer meant them (markup.kept_breaks)."""
    kept = iter(markup.kept_breaks(children))
    parts: list[str] = []
    hrefs: list[tuple[str, int]] = []
    hidden = ""  # inside <script> or <style> written in a paragraph: until its closing tag
    for index, child in enumerate(children):
        kind = child.type
        line_break = next(kept) if kind in ("softbreak", "hardbreak") else False  # hidden ones too
        if kind == "html_inline":
            opened = _HIDDEN_OPEN.match(child.content)
            if opened and not hidden:
                hidden = opened.group(1).lower()
            elif hidden and child.content.lower().startswith(f"</{hidden}"):
                hidden = ""
            elif not hidden and markup.is_br(child):  # a pasted <br>: a line break, as in the HTML
                parts.append("\n")
            elif not hidden and (anchor := _PASTED_LINK.match(child.content)):
                hrefs.append((_pasted_href(anchor), len(parts)))
            elif not hidden and hrefs and child.content.lower().startswith("</a"):
                _close_link(parts, hrefs)
        elif hidden:
            continue
        elif kind in markup.TEXT_TOKENS:
            parts.append(child.content)
        elif kind == "softbreak" and index and markup.is_br(children[index - 1]):
            continue  # the <br> before it broke the line already
        elif kind == "softbreak":
            parts.append("\n" if line_break else "\x00")
        elif kind == "hardbreak":
            parts.append("\n")
        elif kind == "image":
            parts.append(child.content)
        elif kind == "link_open":
            hrefs.append((str(child.attrGet("href") or ""), len(parts)))
        elif kind == "link_close" and hrefs:
            _close_link(parts, hrefs)
    return _soft_breaks(_AFTER_BREAK.sub("\n", "".join(parts)))  # (a browser drops spaces after a <br>)


def _close_link(parts: list[str], hrefs: list[tuple[str, int]]) -> None:
    """After a link's text, its address in brackets, unless the text is the address."""
    href, start = hrefs.pop()
    label = "".join(parts[start:])
    shown = href.removeprefix("mailto:")
    if href and label.strip() not in (href, shown):
        parts.append(f" ({shown})")


# A link pasted as HTML: <a href="…">公式</a> showed only 公式 in the plain edition, wherever it
# pointed (helper-90). Its address is shown as a Markdown link's is, if the HTML edition keeps it.
_PASTED_LINK = re.compile(r"""<a\b[^>]*?\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)


def _pasted_href(anchor: re.Match[str]) -> str:
    href = html.unescape(next(group for group in anchor.groups() if group is not None)).strip()
    return href if href.split(":", 1)[0].lower() in markup.URL_SCHEMES and ":" in href else ""


_AFTER_BREAK = re.compile("\n +")


def _soft_breaks(text: str) -> str:
    """A Markdown soft break: nothing next to Japanese (text_ja.joins_tight), else a space."""
    def join(match: re.Match[str]) -> str:
        before, after = match.group(1), match.group(2)
        return before + ("" if text_ja.joins_tight(before, after) else " ") + after  # as in the HTML

    text = re.sub("(.)\x00(.)", join, text)
    return text.replace("\x00", "")

