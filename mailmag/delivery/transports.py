"""How bytes leave: a small transport interface, with smtp, file and memory implementations.

A transport sends one already-built message (bytes, CRLF line endings) from an envelope
sender to recipients. The dispatcher owns the outbox; a transport only says what happened:

    Sent                 the relay accepted the message (250 after the final dot)
    raises TemporaryFailure  4xx, a dropped connection, a timeout: retry later
    raises PermanentFailure  5xx for this recipient (RCPT or DATA)
    raises TransportError    the relay refuses us (connect, EHLO, AUTH, MAIL FROM): stop

The SMTP implementation and its reply table live in `mailmag.delivery.smtp`; `file` writes
each message as an .eml file (the default, so a fresh machine needs no relay); `memory`
keeps messages in a list for tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import threading
import uuid
from pathlib import Path
from typing import NamedTuple, Protocol

from mailmag import clock
from mailmag.config import Config
from mailmag.errors import ConfigError, MailmagError, TransportError


@dataclasses.dataclass(frozen=True)
class Sent:
    reply: str = "250 ok"


class DeliveryFailure(Exception):
    """Base of per-message failures; `code` is the SMTP reply code (0 if none)."""

    def __init__(self, code: int, reply: str) -> None:
        super().__init__(f"{code} {reply}" if code else reply)
        self.code = code
        self.reply = reply


class TemporaryFailure(DeliveryFailure):
    """Retry later. `ambiguous` when the connection dropped after the final dot; `no_session`
    when no session could be opened (nothing of this message reached the relay)."""

    def __init__(self, code: int, reply: str, *, ambiguous: bool = False, reconnect: bool = False,
                 no_session: bool = False):
        super().__init__(code, reply)
        self.ambiguous = ambiguous
        self.reconnect = reconnect
        self.no_session = no_session


# Whose fault a permanent refusal is, from its enhanced status code (RFC 3463):
ADDRESS = "address"  # 5.1.x, or a bare 550/551/553: the address is bad; a hard bounce
MAILBOX = "mailbox"  # 5.2.2 mailbox full, 5.4.x routing: a soft bounce, counted
MESSAGE = "message"  # 5.2.3/5.3.x/5.5.x/5.6.x, a bare 552/554: the content or the system
POLICY = "policy"  # 5.7.x: the relay's or the receiver's policy about us
RELAY = "relay"  # "relay access denied": the relay refuses to carry our mail at all
LOCAL = "local"  # mailmag could not build the message for this recipient
SUBSCRIBERS_FAULT = (ADDRESS, MAILBOX)
_ENHANCED = re.compile(r"^\s*5\.(\d{1,3})\.(\d{1,3})\b")
_RELAY_DENIED = re.compile(r"relay(ing)?\b.*\b(denied|not permitted|not allowed|prohibited)|"
                           r"(not permitted|unable) to relay", re.IGNORECASE)


def classify_refusal(code: int, reply: str) -> str:
    """ADDRESS, MAILBOX, MESSAGE, POLICY or RELAY for a 5xx reply to RCPT, DATA or the final dot."""
    match = _ENHANCED.match(reply)
    if match is None:
        return ADDRESS if code in (550, 551, 553) else MESSAGE
    subject, detail = int(match.group(1)), int(match.group(2))
    if subject == 7:
        return RELAY if _RELAY_DENIED.search(reply) else POLICY
    if subject == 1 or (subject == 2 and detail not in (2, 3)):
        return ADDRESS
    if subject == 4 or (subject, detail) == (2, 2):
        return MAILBOX
    if subject == 0:  # 5.0.0: undefined; the basic code decides
        return ADDRESS if code in (550, 551, 553) else MESSAGE
    return MESSAGE


class PermanentFailure(DeliveryFailure):
    """Do not retry this message. `kind` says whose fault it is (see `classify_refusal`);
    `blocked` is true when it is not the subscriber's; `after_dot`: the refusal came after the final
    dot, when the relay had accepted the recipient and judged the message (or its sender)."""

    def __init__(self, code: int, reply: str, *, blocked: bool = False, kind: str | None = None,
                 after_dot: bool = False) -> None:
        super().__init__(code, reply)
        self.kind = kind or (LOCAL if blocked else classify_refusal(code, reply))
        self.after_dot = after_dot

    @property
    def blocked(self) -> bool:
        return self.kind not in SUBSCRIBERS_FAULT


class Connection(Protocol):
    """One open session with the relay (or a folder); reused for many messages."""

    def send(self, envelope_from: str, recipient: str, message: bytes) -> Sent: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Opens connections; the dispatcher keeps a pool of them."""

    def connect(self) -> Connection: ...


def make_transport(config: Config) -> Transport:
    """The transport `[smtp] transport` names: "smtp", "file" or "memory"."""
    kind = config.smtp.transport
    if kind == "smtp":
        from mailmag.delivery.smtp import SmtpTransport, helo_name

        return SmtpTransport(config.smtp, config.smtp_password, helo_name(config.smtp, config.sender.from_))
    if kind == "file":
        return FileTransport(config.smtp.file_dir)
    if kind == "memory":
        return MemoryTransport()
    raise ConfigError(f"[smtp] transport must be one of smtp, file, memory, not {kind!r}")


def check_relay(config: Config) -> list[str]:
    """Problems that would stop sending (for `mailmag doctor`), one line each naming the fix."""
    if config.smtp.transport == "smtp":
        from mailmag.delivery.smtp import check_relay as check_smtp
        from mailmag.delivery.smtp import helo_name

        return check_smtp(config.smtp, config.smtp_password, helo_name(config.smtp, config.sender.from_))
    if config.smtp.transport == "file":
        try:
            FileTransport(config.smtp.file_dir).connect().check()
        except MailmagError as exc:
            return [str(exc)]
    return []


class FileTransport:
    """Writes each message as `<UTC time>-<unique>.eml` into `directory` (created when missing).

    Names sort by time and never collide (process id, a counter and a random part); a message
    is written under a hidden temporary name and renamed, so a reader never sees half a file.
    Like a local delivery agent, the file starts with Return-Path and Delivered-To headers
    that record the envelope.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._counter = itertools.count()
        self._ready = False  # the folder exists

    def connect(self) -> FileConnection:
        return FileConnection(self)

    def write(self, envelope_from: str, recipient: str, message: bytes) -> Path:
        now = clock.now()
        name = f"{now:%Y%m%dT%H%M%S.%fZ}-{self._unique}-{next(self._counter):06d}.eml"
        envelope = f"Return-Path: <{envelope_from}>\r\nDelivered-To: {recipient}\r\n".encode()
        final = self.directory / name
        temporary = self.directory / f".{name}.tmp"
        try:
            if not self._ready:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._ready = True
            with open(temporary, "wb") as file:
                file.write(envelope)
                file.write(message)
            os.replace(temporary, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise self._error(exc) from exc
        return final

    def _error(self, exc: OSError) -> TransportError:
        return TransportError(
            f"cannot write messages into {self.directory} ({exc.strerror}); "
            "check [smtp] file_dir and its permissions"
        )


class FileConnection:
    def __init__(self, transport: FileTransport) -> None:
        self._transport = transport

    def send(self, envelope_from: str, recipient: str, message: bytes) -> Sent:
        path = self._transport.write(envelope_from, recipient, message)
        return Sent(f"250 written to {path.name}")

    def check(self) -> None:
        """Raise TransportError unless the folder can be created and written."""
        directory = self._transport.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise self._transport._error(exc) from exc

    def close(self) -> None:
        pass


class Delivered(NamedTuple):
    envelope_from: str
    recipient: str
    message: bytes


class MemoryTransport:
    """Keeps every message in `messages`; `fail()` makes chosen recipients fail (for tests)."""

    def __init__(self) -> None:
        self.messages: list[Delivered] = []
        self.connections = 0
        self._failures: dict[str, list] = {}
        self._lock = threading.Lock()

    def connect(self) -> MemoryConnection:
        with self._lock:
            self.connections += 1
        return MemoryConnection(self)

    def fail(self, recipient: str, failure: Exception, *, times: int | None = None) -> None:
        """Raise `failure` (a DeliveryFailure or TransportError) for `recipient`; `times` None = always."""
        with self._lock:
            self._failures[recipient] = [failure, times]

    def deliver(self, envelope_from: str, recipient: str, message: bytes) -> Sent:
        with self._lock:
            planned = self._failures.get(recipient)
            if planned is not None:
                failure, times = planned
                if times is not None:
                    planned[1] = times - 1
                    if planned[1] <= 0:
                        del self._failures[recipient]
                raise failure
            self.messages.append(Delivered(envelope_from, recipient, message))
        return Sent()

    def to(self, recipient: str) -> list[bytes]:
        """The messages delivered to one recipient, oldest first."""
        with self._lock:
            return [d.message for d in self.messages if d.recipient == recipient]


class MemoryConnection:
    def __init__(self, transport: MemoryTransport) -> None:
        self._transport = transport
        self.closed = False

    def send(self, envelope_from: str, recipient: str, message: bytes) -> Sent:
        return self._transport.deliver(envelope_from, recipient, message)

    def close(self) -> None:
        self.closed = True
