"""Every message mailmag sends: RFC 2047 headers, base64 MIME parts, VERP envelope, DKIM last.

The work is split in two. `prepare` runs once per issue and language: it encodes the fixed
headers and splits the frozen rendering around the markers (placeholders.split).
`personalize` runs per recipient: it joins the pieces with the recipient's values, base64s
each part, writes the few per-recipient header lines by hand and signs. No `EmailMessage`
is built per recipient, and none ever folds a header: CPython's folding mangles Japanese
(gh-92081, gh-144156), so mailmag.delivery.headers writes every encoded-word itself.
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.utils
import functools
import html
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from zoneinfo import ZoneInfo

from mailmag import addresses, clock, links, placeholders
from mailmag.addresses import DOT_ATOM
from mailmag.config import Config
from mailmag.delivery import dkim, wireform
from mailmag.delivery.dkim import DkimKey
from mailmag.delivery.headers import (
    LINE_MAX,
    angle,
    check,
    encode_header,
    format_address,
    header_ja,
    is_plain,
    phrase,
)
from mailmag.errors import ConfigError, InvalidInput

CRLF = b"\r\n"
# RFC 8058 requires List-Unsubscribe-Post signed; dkimpy's default list omits it. Every name
# is over-signed (RFC 6376 §8.15): h= lists it once more than the message holds it, so a
# replayed copy with one more Reply-To, Cc, To, Content-Type… (or one that was absent) fails.
SIGNED_HEADERS = (
    "From", "Reply-To", "Sender", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To",
    "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Archive", "List-Post",
    "List-Help", "List-Subscribe", "List-Owner", "Archived-At", "Precedence", "Feedback-ID",
)
ONE_CLICK = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")


class RenderingLike(Protocol):
    """What prepare reads from a models.Rendering row."""

    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class Recipient:
    delivery_id: int
    subscriber_id: int
    email: str
    name: str
    message_id: str
    link_key: str = ""  # the subscriber row's random key (tokens.make_person)


@dataclass(frozen=True)
class _Literal:
    """A constant stretch of a part, base64-encoded ahead for each of the 3 possible alignments."""

    raw: bytes
    ends: tuple[int, ...]  # three: after k bytes carried in: raw[(3-k)%3 : ends[k]] is encoded
    encoded: tuple[bytes, ...]  # three, one per alignment

    @classmethod
    def of(cls, raw: bytes) -> _Literal:
        starts = [(3 - carry) % 3 for carry in range(3)]
        ends = tuple(start + max(len(raw) - start, 0) // 3 * 3 for start in starts)
        encoded = tuple(_base64(raw[start:end]) for start, end in zip(starts, ends, strict=True))
        return cls(raw, ends, encoded)


@dataclass(frozen=True)
class _Body:
    """One part's body, split around the placeholders and mostly base64-encoded already.

    Base64 maps 3 bytes to 4 characters, so a constant stretch encodes the same whatever
    came before it once the stream is at a multiple of 3: per recipient only the values
    and the few bytes around them are encoded. Lines end at each seam, so some are shorter
    than 76 characters (RFC 2045 sets a maximum, not a length); none has padding inside.
    """

    literals: tuple[_Literal, ...]
    keys: tuple[str, ...]

    @classmethod
    def split(cls, template: str) -> _Body:
        literals, keys = placeholders.split(template)
        return cls(tuple(_Literal.of(_crlf(p)) for p in literals), tuple(keys))

    def encode(self, values: Mapping[str, bytes]) -> list[bytes]:
        """Pieces of base64(literal0 + value1 + literal1 + …), in lines of at most 76 characters."""
        out: list[bytes] = []
        pending = b""
        for i, literal in enumerate(self.literals):
            if i:
                pending += values[self.keys[i - 1]]
            carry = len(pending) % 3
            head = (3 - carry) % 3
            if len(literal.raw) < head + 3:
                pending += literal.raw
                continue
            out += (_base64(pending + literal.raw[:head]), literal.encoded[carry])
            pending = literal.raw[literal.ends[carry] :]
        out.append(_base64(pending))
        return out


@dataclass(frozen=True)
class Skeleton:
    """One issue's message minus the recipient: built by prepare, shared by every thread."""

    from_line: bytes
    subject_line: bytes
    fixed_lines: bytes  # MIME-Version, Content-Type, List-*, Precedence, Feedback-ID
    text: _Body
    html: _Body
    seams: tuple[bytes, bytes, bytes]  # before the text part, before the html part, the end
    mailto: str  # the plain unsubscribe address; each recipient's carries their tag
    base_url: str
    bounce_local: str
    bounce_domain: str
    zone: ZoneInfo
    signed: tuple[bytes, ...]
    dkim: DkimKey | None


def _crlf(text: str) -> bytes:
    """UTF-8 with CRLF line breaks, the canonical form of text/* before base64 (RFC 2046)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode()


def _line(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode()


@functools.lru_cache(maxsize=4)
def _date_line(second: int, zone: ZoneInfo) -> bytes:
    """The Date line of a whole second (clock.timestamp(), as DKIM's t=): formatted once a
    second, not once a message; an int is a far cheaper cache key than an aware datetime."""
    return _line("Date", email.utils.format_datetime(dt.datetime.fromtimestamp(second, zone)))


# --- configuration derived once --------------------------------------------------------

# --- per issue -------------------------------------------------------------------------

def prepare(
    rendering: RenderingLike, issue_number: int, config: Config, dkim: DkimKey | None = None
) -> Skeleton:
    """Everything about an issue's messages that does not depend on the recipient."""
    base_url = config.mailmag.base_url.rstrip("/")
    if not re.fullmatch(r"https?://[\x21-\x7e]+", base_url):
        raise ConfigError("[mailmag] base_url must be an http(s) URL without spaces or line breaks")
    mailto = addresses.unsubscribe_address(config)
    boundary = f"=_mailmag_{secrets.token_hex(12)}"
    fixed = _fixed_headers(config, base_url, issue_number, boundary)
    present = ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", *(n for n, _ in fixed),
               *(("Reply-To",) if config.sender.reply_to else ()))
    bounce_local, _, bounce_domain = addresses.bounce_address(config).rpartition("@")
    skeleton = Skeleton(
        from_line=_from_lines(config),
        subject_line=_line("Subject", encode_header(rendering.subject)),
        fixed_lines=b"".join(_line(name, value) for name, value in fixed),
        text=_Body.split(rendering.text),
        html=_Body.split(rendering.html),
        seams=_seams(boundary.encode()),
        mailto=mailto,
        base_url=base_url,
        bounce_local=bounce_local,
        bounce_domain=bounce_domain,
        zone=config.zone,
        signed=_signed_list(present),
        dkim=dkim,
    )
    # Sent as it stands after DATA (wire.send_prepared): the per-recipient lines are header lines
    # and base64, so these constant pieces are all that could hold a bare line end or a leading dot.
    wireform.check(skeleton.from_line, skeleton.subject_line, skeleton.fixed_lines, *skeleton.seams)
    return skeleton


def _fixed_headers(config: Config, base_url: str, issue_number: int, boundary: str) -> list[tuple[str, str]]:
    """The header lines every recipient of an issue gets as they are."""
    sender = config.sender
    if not DOT_ATOM.fullmatch(sender.list_id):
        raise ConfigError(f"[sender] list_id {sender.list_id!r} must be a label such as news.example.jp")
    fixed = [
        ("List-Id", _list_id(sender.list_name, sender.list_id)),
        *([ONE_CLICK] if one_click(base_url) else []),
        ("List-Archive", f"<{links.archive_url(base_url)}>"),
        ("Archived-At", f"<{links.archive_url(base_url, issue_number)}>"),
        ("Precedence", "bulk"),
    ]
    if sender.feedback_id:
        if not re.fullmatch(r"[\x21-\x7e]+", sender.feedback_id):
            raise ConfigError("[sender] feedback_id must be ASCII without spaces, e.g. newsletter:council")
        # Gmail reads Feedback-ID as fields ending with the sender's id: the issue is the campaign.
        fixed.append(("Feedback-ID", f"{issue_number}:{sender.feedback_id}"))
    return [*fixed, ("MIME-Version", "1.0"), ("Content-Type", _alternative(boundary))]


def _list_id(name: str, label: str) -> str:
    """RFC 2919: the magazine's name as a phrase, then <list_id>."""
    return angle(phrase(name, "List-Id"), label, "List-Id") if name else f"<{label}>"


def one_click(base_url: str) -> bool:
    """RFC 8058 one-click unsubscribe is offered only over https (List-Unsubscribe-Post)."""
    return base_url.lower().startswith("https://")


def one_click_note(config: Config) -> str | None:
    """Why mail from this configuration carries no one-click header, or None when it does."""
    if one_click(config.mailmag.base_url):
        return None
    return (f"[mailmag] base_url {config.mailmag.base_url} is not https, so the mail carries no one-click "
            "unsubscribe header (RFC 8058 requires https; Gmail and Yahoo expect it from bulk senders)")


def _from_lines(config: Config) -> bytes:
    """From, and Reply-To when [sender] reply_to is set."""
    sender = config.sender
    replies = reply_to(config)
    from_line = _line("From", format_address(sender.name, sender.from_, header="From"))
    return from_line + (_line("Reply-To", replies) if replies else b"")


def reply_to(config: Config) -> str:
    """The Reply-To value ([sender] reply_to), or "" when replies go to From."""
    if not config.sender.reply_to:
        return ""
    try:
        return format_address("", config.sender.reply_to, header="Reply-To")
    except InvalidInput as exc:
        raise ConfigError(f"[sender] reply_to {config.sender.reply_to!r} must be an address like "
                          "office@example.jp") from exc


def _signed_list(present: tuple[str, ...]) -> tuple[bytes, ...]:
    """Each signed name once more than `present` holds it (over-signing, RFC 6376 §5.4.2)."""
    counts = {name.lower(): 0 for name in SIGNED_HEADERS}
    for name in present:
        if name.lower() in counts:
            counts[name.lower()] += 1
    return tuple(name.encode() for name, count in counts.items() for _ in range(count + 1))


# --- per recipient ---------------------------------------------------------------------

def personalize(skeleton: Skeleton, recipient: Recipient, secret: str) -> tuple[str, bytes]:
    """(envelope sender, message bytes with CRLF line ends), DKIM-signed if a key is set."""
    if not addresses.MESSAGE_ID.fullmatch(recipient.message_id):
        raise InvalidInput(f"Message-ID {recipient.message_id!r} is not of the form <id@domain>",
                           ja=f"Message-ID「{recipient.message_id}」が <id@domain> の形ではありません")
    values = {
        "name": recipient.name,
        "email": recipient.email,
        "unsubscribe_url": links.unsubscribe_url(skeleton.base_url, secret, recipient.subscriber_id,
                                                 recipient.link_key),
        "preferences_url": links.preferences_url(skeleton.base_url, secret, recipient.subscriber_id,
                                                 recipient.link_key),
    }
    data = b"".join((
        skeleton.from_line,
        _line("To", format_address(recipient.name, recipient.email, utf8=True)),
        skeleton.subject_line,
        _date_line(clock.timestamp(), skeleton.zone),
        _line("Message-ID", recipient.message_id),
        list_unsubscribe(values["unsubscribe_url"],
                         addresses.unsubscribe_mailto(skeleton.mailto, secret, recipient.subscriber_id,
                                                    recipient.link_key)).encode(),
        skeleton.fixed_lines,
        skeleton.seams[0],
        *skeleton.text.encode({k: v.encode() for k, v in values.items()}),
        skeleton.seams[1],
        *skeleton.html.encode({k: html.escape(v, quote=True).encode() for k, v in values.items()}),
        skeleton.seams[2],
    ))
    envelope_from = addresses.verp(skeleton.bounce_local, skeleton.bounce_domain, secret,
                                   recipient.delivery_id)
    return envelope_from, _sign(data, skeleton.dkim, skeleton.signed)


def list_unsubscribe(url: str, mailto: str) -> str:
    """The List-Unsubscribe line (RFC 2369), folded between its URIs.

    One long line is refolded by re-serializers (Python's email.policy.default turns it into
    encoded-words), which breaks the link and the DKIM signature; folded, every line is within
    78 as long as the https URL has at most 57 characters (a compact link under a short
    base_url) and the mailto address at most 22 with a 7-digit id. A URI is never split, and the https
    one stays on the first line: naive parsers expect the value to start with '<'.
    """
    return f"List-Unsubscribe: <{url}>,\r\n {mailto}\r\n"


def _part_head(content_type: bytes) -> bytes:
    return b"Content-Type: " + content_type + b'; charset="utf-8"\r\nContent-Transfer-Encoding: base64\r\n'


def _alternative(boundary: str) -> str:
    return f'multipart/alternative;\r\n boundary="{boundary}"'  # folded: the line would pass 76


def _seams(boundary: bytes) -> tuple[bytes, bytes, bytes]:
    """What goes between the header block, the two base64 parts and the end."""
    return (
        CRLF + b"--" + boundary + CRLF + _part_head(b"text/plain") + CRLF,
        b"--" + boundary + CRLF + _part_head(b"text/html") + CRLF,
        b"--" + boundary + b"--" + CRLF,
    )


def _base64(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ending CRLF; never 8bit, no line starts with a dot."""
    if not data:
        return b""
    encoded = binascii.b2a_base64(data, newline=False)
    if len(encoded) <= LINE_MAX:  # the pieces around each value: most calls are one short line
        return encoded + CRLF
    return CRLF.join([encoded[i : i + LINE_MAX] for i in range(0, len(encoded), LINE_MAX)]) + CRLF


def _sign(data: bytes, key: DkimKey | None, signed: tuple[bytes, ...]) -> bytes:
    """DKIM as the very last step: nothing may touch the bytes after this."""
    if key is None:
        return data
    return dkim.sign(data, key.selector, key.domain, key.rsa, signed) + data


# --- one-off mail (double opt-in confirmation, `issues test`) --------------------------

def build_simple(
    config: Config,
    to_email: str,
    to_name: str,
    subject: str,
    text: str,
    html: str | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    dkim: DkimKey | None = None,
    message_id: str | None = None,
) -> bytes:
    """A single message with the same encoder and rules; send it from addresses.bounce_address(config)."""
    lines = [
        ("From", format_address(config.sender.name, config.sender.from_, header="From")),
        *([("Reply-To", reply_to(config))] if config.sender.reply_to else []),
        ("To", format_address(to_name, to_email, utf8=True)),
        ("Subject", encode_header(subject)),
        ("Date", email.utils.format_datetime(clock.local_now(config.zone))),
        ("Message-ID", message_id or addresses.make_message_id(config)),
    ]
    for name, value in (headers or {}).items():
        if not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name) or name.lower() in {n.lower() for n, _ in lines}:
            raise ValueError(f"header name {name!r} is not allowed here")
        check(value, name, header_ja(name))
        lines.append((name, value if is_plain(value) else encode_header(value, header=name)))
    if message_id is not None and not addresses.MESSAGE_ID.fullmatch(message_id):
        raise InvalidInput(f"Message-ID {message_id!r} is not of the form <id@domain>",
                           ja=f"Message-ID「{message_id}」が <id@domain> の形ではありません")
    text_body = _crlf(text)
    if html is None:
        lines += [("MIME-Version", "1.0"), ("Content-Type", 'text/plain; charset="utf-8"'),
                  ("Content-Transfer-Encoding", "base64")]
        body = _base64(text_body)
    else:
        boundary = f"=_mailmag_{secrets.token_hex(12)}"
        lines += [("MIME-Version", "1.0"), ("Content-Type", _alternative(boundary))]
        before_text, before_html, end = _seams(boundary.encode())
        body = before_text[2:] + _base64(text_body) + before_html + _base64(_crlf(html)) + end
    data = b"".join(_line(name, value) for name, value in lines) + CRLF + body
    return _sign(data, dkim, _signed_list(tuple(name for name, _ in lines)))
