"""How bytes leave: a small transport interface, with smtp, file and memory implementations.

A transport sends one already-built message (bytes, CRLF line endings) from an envelope
sender to recipients. The dispatcher owns the outbox; a transport only says what happened:

    Sent                 the relay accepted the message (250 after the final dot)
    raises TemporaryFailure  4xx, a dropped connection, a timeout: retry later
    raises PermanentFailure  5xx for this recipient (RCPT or DATA)
    raises TransportError    the relay refuses us (connect, EHLO, AUTH, MAIL FROM): stop
"""

from __future__ import annotations

import dataclasses
from typing import Protocol


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
    """Retry later. `ambiguous` when the connection dropped after the final dot."""

    def __init__(self, code: int, reply: str, *, ambiguous: bool = False, reconnect: bool = False):
        super().__init__(code, reply)
        self.ambiguous = ambiguous
        self.reconnect = reconnect


class PermanentFailure(DeliveryFailure):
    """Do not retry this recipient. `blocked` for 5.7.x policy refusals (not the address's fault)."""

    def __init__(self, code: int, reply: str, *, blocked: bool = False) -> None:
        super().__init__(code, reply)
        self.blocked = blocked


class Connection(Protocol):
    """One open session with the relay (or a folder); reused for many messages."""

    def send(self, envelope_from: str, recipient: str, message: bytes) -> Sent: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Opens connections; the dispatcher keeps a pool of them."""

    def connect(self) -> Connection: ...
