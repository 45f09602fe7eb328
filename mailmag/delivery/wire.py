"""The pipelined SMTP transaction that writes a message in wire form (wireform) as it stands.

The dispatcher's messages are built in wire form (mailmag.delivery.wireform), so
`PipelinedConnection.send(…, prepared=True)` writes them with no pass over their bytes.

PIPELINING (RFC 2920), where the relay offers it: MAIL, RCPT and DATA go in one write and
their three replies are read after it, so a message costs two round trips instead of four.
The caller's `meanwhile` (the dispatcher commits the previous message's result there) runs
once the content is written, before its final dot: the relay reads and checks the 63 KB
while the database commits, instead of after it (benchmarks/README.md, Round 19). A relay
accepts nothing before the dot, so the contract holds as before: each result is committed
before the connection's next message can be accepted, and if `meanwhile` raises the session
is dropped without the dot (the relay discards what it read).
Every reply is classified exactly as in the sequential session (mailmag.delivery.smtp),
in the order of the commands: the first refusal decides. A relay that answers 354 to a
transaction it refused gets no body: the connection is dropped, so nothing can be queued.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Callable

from mailmag.addresses import addr_spec
from mailmag.delivery.smtp import SmtpConnection, SmtpTransport, _Stale, socket_of
from mailmag.delivery.transports import Connection, Sent, TemporaryFailure
from mailmag.delivery.wireform import END


def send_prepared(connection: Connection, envelope_from: str, recipient: str, message: bytes, *,
                  meanwhile: Callable[[], object] | None = None) -> Sent:
    """Send a message that is in wire form (built by messages.personalize) through any connection.

    `meanwhile` runs before the message's final dot goes (PipelinedConnection: while the relay
    reads its content; SmtpConnection.send: while it reads the envelope); if it raises, the
    session is dropped before that dot, and nothing of this message was accepted.
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

    def open(self) -> None:
        super().open()
        # The final dot goes apart from the content, once the previous result is committed: with
        # Nagle's algorithm those three bytes would wait for the relay's delayed ACK (40 ms).
        sock = socket_of(self._smtp)
        with contextlib.suppress(OSError):  # not TCP (a Unix socket): nothing to hold back
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
        self._write(message, "during DATA")
        self._overlap()  # while the relay reads the content; before its final dot
        if self._hung_up():  # it cannot have the message: a plain drop, not "may arrive twice"
            raise self._dropped(ConnectionResetError("closed by the relay"), "before the final dot")
        return self._write_body(b"", END)

    def _hung_up(self) -> bool:
        """The relay closed the session while the content went (a proxy's size limit, an idle
        timeout while the database was slow): written after that, the dot would meet a closed
        connection, read as a drop after the final dot (helper-62). Asked without waiting.

        A TLS session cannot be peeked at: there, anything at all from the relay before the dot
        (its close, an alert, a 421) counts, as a relay reading the content says nothing. Taken
        wrongly, that costs a retry, never a second copy: the dot was not sent."""
        sock = socket_of(self._smtp)
        if isinstance(sock, ssl.SSLSocket):
            return bool(sock.pending()) or bool(select.select([sock], [], [], 0)[0])
        if type(sock) is not socket.socket or not select.select([sock], [], [], 0)[0]:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:  # reset
            return True

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
            if not self._prepared:
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
