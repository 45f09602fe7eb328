"""Reading one message of a bounce mailbox: what it reports and what may identify its delivery.

Pure functions over bytes, no database. RFC 3464 delivery reports are parsed here because
flufl.bounce returns addresses without status codes; flufl.bounce's heuristics read the
non-standard bounces that real servers send. RFC 5965 feedback reports are complaints; a mail
to the List-Unsubscribe mailto address is an unsubscribe request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.errors
import email.utils
import hashlib
import re
import unicodedata
from email.header import Header, decode_header
from email.iterators import typed_subpart_iterator
from email.message import Message
from email.parser import HeaderParser
from typing import Any

from flufl.bounce import all_failures

from mailmag import tokens

# Where the report was delivered to: one of them is our VERP address if the bounce is ours.
ENVELOPE_HEADERS = ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")
UNSUBSCRIBE_SUBJECTS = ("unsubscribe", "配信停止")
_BROKEN = (
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.NoBoundaryInMultipartDefect,
)
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_BASIC = re.compile(r"\b([45]\d\d)\b")
_MESSAGE_ID_LINE = re.compile(rb"(?im)^(?:x-original-)?message-id:[ \t]*(<[^>\s]+>)")


class Unreadable(Exception):
    """The message cannot be read as mail; str() says why."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """One failed recipient of a bounce: hard or soft, with the status code when there is one."""

    recipient: str
    kind: str  # hard | soft
    code: str
    diagnostic: str


@dataclasses.dataclass(frozen=True)
class Reading:
    """What one message reports, and every identifier that may map it to a delivery."""

    kind: str  # hard | soft | complaint | unsubscribe | other
    source_key: str
    label: str
    at: dt.datetime | None = None
    failures: tuple[Failure, ...] = ()
    envelope: tuple[str, ...] = ()  # addresses that may be our VERP address
    original_ids: tuple[str, ...] = ()  # Message-IDs of the returned original
    recipients: tuple[str, ...] = ()  # addresses the report names (said, never acted on alone)
    detail: str = ""
    via: str = ""  # which reader recognised it: dsn | flufl.bounce | arf | mailto
    tags: tuple[str, ...] = ()  # mailto unsubscribe: the signed tags it carries (unchecked)


def read(data: bytes, unsubscribe_address: str) -> Reading:
    """Classify one message; raise Unreadable if it is not mail or its MIME is broken."""
    # No NUL belongs in mail (RFC 5322); one in an address or a Message-ID reached PostgreSQL,
    # which refuses it, and failed the whole run on every run after (helper-75).
    data = data.replace(b"\x00", b"")
    msg = email.message_from_bytes(data)
    _check_structure(msg)
    base: dict[str, Any] = {
        "source_key": source_key(msg, data), "label": label(msg), "at": _date(msg),
        "envelope": _envelope(msg), "original_ids": _original_ids(msg),
    }
    report_type = str(msg.get_param("report-type", "", "content-type")).lower()
    if msg.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return _complaint(msg, base)
    failures = dsn_failures(msg)
    if failures:
        return _bounce(failures, base, "dsn")
    sender, tags = _unsubscribe_request(msg, unsubscribe_address)
    if sender:
        return Reading(kind="unsubscribe", recipients=(sender,), detail=f"mail from {sender}",
                       via="mailto", tags=tags, **base)
    failures = heuristic_failures(msg)
    if failures:
        return _bounce(failures, base, "flufl.bounce")
    return Reading(kind="other", **base)


def source_key(msg: Message, data: bytes) -> str:
    """The idempotence key: the report's Message-ID, or a digest of its bytes without one."""
    message_id = " ".join(str(msg.get("Message-ID", "")).split())
    if message_id and len(message_id) <= 200 and message_id.isascii():
        return f"mid:{message_id}"
    return "sha256:" + hashlib.sha256(data).hexdigest()


def label(msg: Message) -> str:
    """'From …, Subject …', so a person can find the message in a mail client."""
    sender = _decoded(msg.get("From", "")) or "(no sender)"
    return f"from {sender}, subject {_decoded(msg.get('Subject', ''))!r}"


def _check_structure(msg: Message) -> None:
    if not msg.keys():
        raise Unreadable("no mail headers: not an e-mail message")
    for part in msg.walk():
        for defect in part.defects:
            if isinstance(defect, _BROKEN):
                raise Unreadable(f"broken MIME structure ({type(defect).__name__}): truncated or damaged")


def _bounce(failures: list[Failure], base: dict, via: str) -> Reading:
    kind = "hard" if any(f.kind == "hard" for f in failures) else "soft"
    worst = [f for f in failures if f.kind == kind]
    recipients = tuple(dict.fromkeys(f.recipient for f in worst if f.recipient))
    return Reading(kind=kind, failures=tuple(worst), recipients=recipients, detail=worst[0].diagnostic,
                   via=via, **base)


# --- RFC 3464 delivery status notifications --------------------------------------------------


def dsn_failures(msg: Message) -> list[Failure]:
    """The failed or delayed recipients of every message/delivery-status part."""
    failures = []
    for part in typed_subpart_iterator(msg, "message", "delivery-status"):
        for block in _blocks(part):
            action = str(block.get("Action", "")).strip().lower()
            diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
            code = status_code(str(block.get("Status", ""))) or status_code(diagnostic)
            kind = classify(action, code)
            if kind is not None:
                recipient = _dsn_address(block.get("Final-Recipient") or block.get("Original-Recipient"))
                status = str(block.get("Status", "")).strip()
                failures.append(Failure(recipient, kind, code, diagnostic or (
                    f"Status: {code}" if code else f"unreadable Status: {status[:40]!r}")))
    return failures


def status_code(text: str) -> str:
    """The enhanced status code ('5.1.1') in a text, else the SMTP reply code ('550'), else ''."""
    if match := _ENHANCED.search(text):
        return match.group(0)
    match = _BASIC.search(text)
    return match.group(1) if match else ""


def classify(action: str, code: str) -> str | None:
    """hard, soft, or None for a report of success. 5.x.x is hard except the persistent-transient
    ones: X.2.2 (mailbox full) and X.7.x (policy: often our reputation, not a dead address). A
    failure with no status code to read (Status: xyz, 5.x.y) is soft: counted, so that a few of
    them suppress the address, but no garbled report takes a reader off the list at once
    (helper-95)."""
    if action.startswith(("delivered", "relayed", "expanded")):
        return None
    if action.startswith("delayed") or code.startswith("4"):
        return "soft"
    if code.startswith("5"):
        transient = code == "552" or ("." in code and (code.split(".")[1] == "7" or code[2:5] == "2.2"))
        return "soft" if transient else "hard"
    return "soft" if action.startswith(("fail", "error")) else None


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = str(payload).replace("\r\n", "\n")
    return [HeaderParser().parsestr(chunk) for chunk in text.split("\n\n") if chunk.strip()]


def _dsn_address(value: object) -> str:
    """'rfc822; user@example.jp' → 'user@example.jp'."""
    text = str(value or "")
    return email.utils.parseaddr(text.split(";", 1)[-1].strip())[1]


# --- non-standard bounces -------------------------------------------------------------------


def heuristic_failures(msg: Message) -> list[Failure]:
    """What flufl.bounce's detectors find in bounces that are not RFC 3464 reports."""
    temporary, permanent = all_failures(msg)
    text = _plain_text(msg)
    code = status_code(text)
    line = next((ln.strip() for ln in text.splitlines() if code and code in ln), "")
    failures = []
    for address in sorted(permanent):
        kind = classify("failed", code) if code.startswith("5") else "hard"
        failures.append(Failure(address.decode(), kind or "hard", code if code.startswith("5") else "",
                                line or "permanent failure (non-standard report)"))
    for address in sorted(temporary - permanent):
        failures.append(Failure(address.decode(), "soft", code if code.startswith("4") else "",
                                line or "temporary failure (non-standard report)"))
    return failures


def _plain_text(msg: Message) -> str:
    parts = []
    for part in typed_subpart_iterator(msg, "text", "plain"):
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            parts.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(parts)


# --- RFC 5965 complaints and mailto unsubscribe requests -------------------------------------


def _complaint(msg: Message, base: dict) -> Reading:
    fields = next((b for p in typed_subpart_iterator(msg, "message", "feedback-report")
                   for b in _blocks(p)), Message())
    feedback_type = str(fields.get("Feedback-Type", "abuse")).strip().lower()
    if feedback_type == "not-spam":
        return Reading(kind="other", detail="a not-spam feedback report", **base)
    envelope = base.pop("envelope") + _addresses(fields, "Original-Mail-From")
    recipients = _addresses(fields, "Original-Rcpt-To")
    for headers in _embedded_headers(msg):
        recipients += _addresses(headers, "To")
    reporter = str(fields.get("User-Agent", "")).strip() or _decoded(msg.get("From", ""))
    return Reading(kind="complaint", envelope=tuple(dict.fromkeys(envelope)),
                   recipients=tuple(dict.fromkeys(recipients)),
                   detail=f"{feedback_type} report from {reporter}", via="arf", **base)


def _unsubscribe_request(msg: Message, unsubscribe_address: str) -> tuple[str, tuple[str, ...]]:
    """(sender, tags) of a request to unsubscribe (RFC 2369 mailto), or ('', ()) if it is none.

    Each recipient's mailto is unsubscribe@domain?subject=unsubscribe TAG (mail sent before
    also carried unsubscribe+TAG@domain): the tags are read from the subject and from where
    the request was delivered.
    """
    if str(msg.get("Auto-Submitted", "no")).strip().lower().startswith("auto-replied"):
        return "", ()  # an out-of-office reply to the unsubscribe address is not a request
    sender = email.utils.parseaddr(_utf8_header(msg, "From"))[1]
    if not sender or sender.lower().startswith(("mailer-daemon@", "postmaster@")):
        return "", ()
    local, _, domain = unsubscribe_address.lower().rpartition("@")
    tags: list[str] = []
    to_us = False
    for address in _addresses(msg, *ENVELOPE_HEADERS, "Cc"):
        got_local, _, got_domain = address.rpartition("@")
        if got_domain == domain and got_local == local:
            to_us = True
        elif got_domain == domain and got_local.startswith(f"{local}+"):
            to_us = True
            tags.append(got_local[len(local) + 1 :])
    words = unicodedata.normalize("NFKC", _decoded(msg.get("Subject", ""))).lower().split()
    while words and words[0].rstrip(":") in ("re", "fw", "fwd"):
        words = words[1:]
    asked = bool(words) and words[0] in UNSUBSCRIBE_SUBJECTS
    if asked:
        tags += words[1:2]
    if not (to_us or (asked and len(words) <= 2)):
        return "", ()
    # Only a word shaped as a tag is one: 'unsubscribe me' or '配信停止 お願いします' typed by hand
    # is a request without a tag, not one with a forged tag (helper-75).
    return sender, tuple(dict.fromkeys(t for t in tags if tokens.unsubscribe_tag_id(t) is not None))


# --- identifiers ----------------------------------------------------------------------------


def _envelope(msg: Message) -> tuple[str, ...]:
    """Addresses the report was delivered to, then the Return-Path of the returned original."""
    found = _addresses(msg, *ENVELOPE_HEADERS)
    for headers in _embedded_headers(msg):
        found += _addresses(headers, "Return-Path")
    return tuple(dict.fromkeys(found))


def _original_ids(msg: Message) -> tuple[str, ...]:
    """Message-IDs of the returned original: in its headers, or quoted inline in the text."""
    found = [str(h.get("Message-ID", "")) for h in _embedded_headers(msg)]
    for part in msg.walk():
        if part is not msg:  # Gmail names it in the delivery-status fields
            found.append(str(part.get("X-Original-Message-ID", "")))
        payload = None if part.is_multipart() else part.get_payload(decode=True)
        if isinstance(payload, bytes):
            found += [m.decode("ascii", "replace") for m in _MESSAGE_ID_LINE.findall(payload)]
    return tuple(dict.fromkeys(" ".join(f.split()) for f in found if f.strip()))


def _embedded_headers(msg: Message) -> list[Message]:
    """The headers of the returned original (message/rfc822 or text/rfc822-headers parts)."""
    found: list[Message] = []
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822" and isinstance(part.get_payload(), list) and part.get_payload():
            inner = part.get_payload(0)
            if isinstance(inner, Message):
                found.append(inner)
        elif kind == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                found.append(HeaderParser().parsestr(payload.decode("utf-8", "replace")))
    return found


def _addresses(msg: Message, *names: str) -> tuple[str, ...]:
    values = [str(v) for name in names for v in msg.get_all(name, [])]
    return tuple(a.strip().lower() for _, a in email.utils.getaddresses(values) if "@" in a)


def _date(msg: Message) -> dt.datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(str(msg.get("Date", "")))
    except (TypeError, ValueError, IndexError):
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _utf8_header(msg: Message, name: str) -> str:
    """The header as it came, raw 8-bit read as UTF-8 (RFC 6532: an SMTPUTF8 client writes
    `From: nm4@例え.jp` so), encoded-words left alone: no address hides in one. The parser's
    own value showed such an address as U+FFFD and matched no one (helper-84)."""
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            text = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
            return " ".join(text.split())
    return ""


def _decoded(value: object) -> str:
    """A header as text: RFC 2047 encoded-words decoded, raw 8-bit read as UTF-8."""
    try:
        chunks = decode_header(value if isinstance(value, Header) else str(value))
    except email.errors.HeaderParseError:
        return " ".join(str(value).split())
    return " ".join("".join(_text(chunk, charset) for chunk, charset in chunks).split())


def _text(chunk: bytes | str, charset: str | None) -> str:
    if isinstance(chunk, str):
        return chunk
    try:
        return chunk.decode(charset if charset and charset != "unknown-8bit" else "utf-8", "replace")
    except LookupError:
        return chunk.decode("utf-8", "replace")
