"""The wire form of a message, and the pipelined SMTP transaction that writes it as it stands.

After DATA/354 a message goes on the wire with CRLF line ends, every line that starts with
a dot doubled, and ".\\r\\n" after it. smtplib's `sendmail` repairs line ends and stuffs dots
with two regular expressions over the whole message, for every recipient; mailmag's
messages are built in wire form instead (`messages.prepare` checks the issue's constant
pieces once with `check`; the per-recipient lines are header lines, which start with a name
or a folding space, and base64, which has no dot), so `PipelinedConnection.send(…,
prepared=True)` writes them with no pass over their bytes.

PIPELINING (RFC 2920), where the relay offers it: MAIL, RCPT and DATA go in one write and
their three replies are read after it, so a message costs two round trips instead of four.
Every reply is classified exactly as in the sequential session (mailmag.delivery.smtp),
in the order of the commands: the first refusal decides. A relay that answers 354 to a
transaction it refused gets no body: the connection is dropped, so nothing can be queued.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mailmag.addresses import addr_spec
from mailmag.delivery.smtp import SmtpConnection, SmtpTransport, _Stale
from mailmag.delivery.transports import Connection, Sent, TemporaryFailure

END = b".\r\n"
# A line that starts with a dot, a CR not before LF, or an LF not after CR.
_NOT_WIRE = re.compile(rb"(?:^|\n)\.|\r(?!\n)|(?<!\r)\n")


def is_wire_form(data: bytes) -> bool:
    """True when `data` is its own wire form: CRLF line ends and no line starting with a dot, so it
    may follow DATA/354 as it is (a stuffed message is not: its doubled dots would be doubled again)."""
    return not data or (data.endswith(b"\r\n") and _NOT_WIRE.search(data) is None)


def check(*pieces: bytes) -> None:
    """Raise ValueError unless every piece is in wire form (once per issue, not per message)."""
    for piece in pieces:
        if piece and not is_wire_form(piece):
            raise ValueError(f"not in SMTP wire form (a bare line break, or a line starting with a dot): "
                             f"{piece[:60]!r}")


def to_wire(message: bytes) -> bytes:
    """Any message in wire form: line ends repaired to CRLF, leading dots doubled, ending CRLF."""
    if is_wire_form(message):
        return message
    message = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    message = re.sub(rb"(?m)^\.", b"..", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def send_prepared(connection: Connection, envelope_from: str, recipient: str, message: bytes, *,
                  meanwhile: Callable[[], object] | None = None) -> Sent:
    """Send a message that is in wire form (built by messages.personalize) through any connection.

    `meanwhile` runs before any of the message's content goes (SmtpConnection.send: while the
    relay reads the envelope); if it raises, nothing of this message was sent.
    """
    if isinstance(connection, PipelinedConnection):
        return connection.send(envelope_from, recipient, message, prepared=True, meanwhile=meanwhile)
    if meanwhile is not None:
        meanwhile()
    return connection.send(envelope_from, recipient, message)


class PipelinedConnection(SmtpConnection):
    """An SmtpConnection that pipelines MAIL, RCPT and DATA where the relay offers PIPELINING.

    `force`: pipeline even when it is not offered (tests run the fault-injecting aiosmtpd,
    which reads commands one at a time and does not announce it, through this path).
    """

    force = False

    def __init__(self, transport: SmtpTransport) -> None:
        super().__init__(transport)
        self._prepared = False

    @property
    def pipelining(self) -> bool:
        """The open session pipelines its transactions."""
        smtp = self._smtp
        return smtp is not None and (self.force or smtp.has_extn("pipelining"))

    def send(self, envelope_from: str, recipient: str, message: bytes, *, prepared: bool = False,
             meanwhile: Callable[[], object] | None = None) -> Sent:
        """As SmtpConnection.send; `prepared`: `message` is in wire form already (nothing is scanned)."""
        self._prepared = prepared
        return super().send(envelope_from, recipient, message, meanwhile=meanwhile)

    def _data(self, message: bytes) -> Sent:
        if not self._prepared:
            return super()._data(message)
        return self._write_body(message, END)

    def _transaction(self, envelope_from: str, recipient: str, message: bytes, reused: bool) -> Sent:
        if not self.pipelining:
            return super()._transaction(envelope_from, recipient, message, reused)
        assert self._smtp is not None
        self._count += 1
        recipient = addr_spec(recipient)
        options = f" SIZE={len(message)}" if self._size else ""
        if not (recipient.isascii() and envelope_from.isascii()):
            options += self._smtputf8(envelope_from, recipient)
        if any(c in envelope_from + recipient for c in "\r\n"):
            raise ValueError("a line break in an envelope address")  # smtplib's putcmd refuses it too
        commands = f"MAIL FROM:<{envelope_from}>{options}\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"
        try:
            self._write(commands.encode(self._smtp.command_encoding), "at MAIL FROM")
            self._overlap()  # while the relay reads the envelope
            code, reply = self._reply("MAIL FROM")
        except TemporaryFailure:
            if reused:
                raise _Stale() from None
            raise
        if code == 421:
            self._drop()
            if reused:
                raise _Stale()
            raise TemporaryFailure(code, reply, reconnect=True)
        rcpt_code, rcpt_reply = self._reply("RCPT TO")
        if rcpt_code == 421:
            self._failed(rcpt_code, rcpt_reply)
        data_code, data_reply = self._reply("DATA")
        if data_code == 354 and not (code == 250 and rcpt_code in (250, 251)):
            self._drop()  # no body for a refused transaction: a lone dot could queue an empty message
        if code != 250:
            self._refused_sender(envelope_from, code, reply, len(message))
        if rcpt_code not in (250, 251):
            self._failed(rcpt_code, rcpt_reply)
        if data_code != 354:
            self._failed(data_code, data_reply)
        return self._data(message)

    def _reset(self) -> None:
        if self._smtp is not None:  # dropped after an unexpected 354: the next send opens a new session
            super()._reset()
