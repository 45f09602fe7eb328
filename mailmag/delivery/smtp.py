"""The SMTP transport: persistent smtplib sessions, each reply sorted into sent, retry, fail or stop.

One `SmtpConnection` belongs to one worker thread. It opens lazily on the first send,
carries up to `messages_per_connection` messages, then QUITs and opens again. How replies
are classified (the issue's table):

    421 anywhere                          TemporaryFailure(reconnect=True); the session is closed
    other 4xx                             TemporaryFailure; RSET, the session stays
    5xx at RCPT, DATA or after the dot    PermanentFailure, its `kind` from the enhanced status
                                          code (RFC 3463, `transports.classify_refusal`)
    5xx at connect, EHLO, STARTTLS,       TransportError: the relay refuses *us*, so the run stops
      AUTH or MAIL FROM
    no session (refused, timeout, 4xx     TemporaryFailure(no_session=True): nothing was sent
      or drop before MAIL FROM)
    drop or timeout before the final dot  TemporaryFailure(reconnect=True)
    drop after the final dot              TemporaryFailure(ambiguous=True, reconnect=True)

The ambiguous window: when the connection dies after the final dot was sent but before the
relay's reply arrived, the relay may have queued the message. The dispatcher retries it
like any temporary failure (under [retry], until the lifetime), so that recipient may get
the issue twice, never none (at-least-once, as Postfix does); at most one message per
connection can be in this window at a time.

A reused session that the relay closed while idle (a drop or a 421 at MAIL FROM) is
reopened once and the message sent on the new session, so idle pooled connections do not
turn into deferrals. Nothing was accepted before MAIL FROM, so this cannot duplicate mail.
"""

from __future__ import annotations

import ipaddress
import re
import smtplib
import socket
import ssl
import sys
from collections.abc import Callable

from mailmag import text_ja
from mailmag.addresses import addr_spec
from mailmag.config import ENV_SMTP_PASSWORD, SmtpConfig
from mailmag.delivery import wireform
from mailmag.delivery.transports import LOCAL, PermanentFailure, Sent, TemporaryFailure
from mailmag.errors import ConfigError, MailmagError, TransportError

_DROPPED = (smtplib.SMTPServerDisconnected, OSError)
_HELO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def socket_of(smtp: smtplib.SMTP | None) -> socket.socket | None:
    """The session's socket: a plain socket.socket, an ssl.SSLSocket, or None (not connected)."""
    return getattr(smtp, "sock", None)


def _send_parts(smtp: smtplib.SMTP, parts: tuple[bytes, ...]) -> None:
    """smtplib's send of the parts one after the other, in one system call on a plain socket:
    joining a 63 KB message to its final dot would copy it once more per message (TLS
    sockets have no sendmsg; there the parts are joined, and encrypting costs more anyway)."""
    sock = socket_of(smtp)
    if sock is None:
        raise smtplib.SMTPServerDisconnected("please run connect() first")
    sys.audit("smtplib.send", smtp, parts)
    if type(sock) is not socket.socket:
        sock.sendall(b"".join(parts))
        return
    views = [memoryview(part) for part in parts if part]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if sent:
            views[0] = views[0][sent:]


def tls_context(config: SmtpConfig) -> ssl.SSLContext | None:
    """A verifying client context (system CAs, or `ca_file`), or None for security "none"."""
    if config.security == "none":
        return None
    try:
        return ssl.create_default_context(cafile=config.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[smtp] ca_file {config.ca_file} cannot be read as PEM certificates ({exc}); "
            "point it at the CA certificate that signed the relay's certificate"
        ) from exc


def helo_name(config: SmtpConfig, sender_from: str = "") -> str:
    """The EHLO name: [smtp] helo_name; else this machine's FQDN when it has a dot; else the From domain.

    socket.getfqdn() is "localhost" on many hosts, which receivers score as spam
    (SpamAssassin HELO_LOCALHOST, FSL_HELO_NON_FQDN_1); the From domain is at least a real name.
    """
    if config.helo_name:
        if not _HELO.fullmatch(config.helo_name):
            raise ConfigError(f"[smtp] helo_name {config.helo_name!r} must be a host name such as "
                              "mail.example.jp (ASCII letters, digits, dots and hyphens)")
        return config.helo_name
    fqdn = socket.getfqdn()  # may ask DNS: called once per transport
    if "." in fqdn and not fqdn.lower().startswith("localhost") and _HELO.fullmatch(fqdn):
        return fqdn
    domain = sender_from.rpartition("@")[2].lower()
    return domain if _HELO.fullmatch(domain) else fqdn


class _Stale(Exception):
    """A reused session was closed by the relay before MAIL FROM was accepted."""


class SmtpTransport:
    """Opens `SmtpConnection`s to the relay in `config`; AUTH uses `password` when a username is set."""

    def __init__(self, config: SmtpConfig, password: str = "", helo: str | None = None) -> None:
        self.config = config
        self.password = password
        self.context = tls_context(config)  # built once: loading the CA store costs milliseconds
        self.local_hostname = helo or helo_name(config)  # once, not per connection: it may ask DNS

    def connect(self) -> SmtpConnection:
        from mailmag.delivery.wire import PipelinedConnection  # it extends SmtpConnection

        return PipelinedConnection(self)


class SmtpConnection:
    """One session with the relay, opened lazily and reused; not shared between threads."""

    def __init__(self, transport: SmtpTransport) -> None:
        self._transport = transport
        self._config = transport.config
        self._where = f"{self._config.host}:{self._config.port}"
        self._smtp: smtplib.SMTP | None = None
        self._count = 0  # transactions started on the open session
        self._size = False  # the relay announced SIZE
        self._meanwhile: Callable[[], object] | None = None  # the caller's work for this send

    @property
    def is_open(self) -> bool:
        return self._smtp is not None

    def send(self, envelope_from: str, recipient: str, message: bytes, *,
             meanwhile: Callable[[], object] | None = None) -> Sent:
        """Send one message to one recipient; raise TemporaryFailure, PermanentFailure or TransportError.

        `meanwhile`: the caller's own work, run at most once while the relay reads the envelope
        (after MAIL FROM is written, before any of the message's content; a pipelined send,
        wire.PipelinedConnection, runs it later, before the final dot); the dispatcher
        commits the previous message's result there. If it raises, the session is dropped (a
        relay discards a transaction without its final dot) and the exception propagates:
        nothing of this message was accepted. If the send fails before MAIL FROM, it is not run.
        """
        self._meanwhile = meanwhile
        try:
            if self._smtp is not None and self._count >= self._config.messages_per_connection:
                self.close()
            reused = self._smtp is not None
            if not reused:
                self._open_for_send()
            try:
                return self._transaction(envelope_from, recipient, message, reused)
            except _Stale:
                self._open_for_send()
                return self._transaction(envelope_from, recipient, message, False)
        finally:
            self._meanwhile = None

    def _overlap(self) -> None:
        """The caller's `meanwhile`, once; MAIL FROM may be on the wire, so an error drops the session."""
        work, self._meanwhile = self._meanwhile, None
        if work is None:
            return
        try:
            work()
        except BaseException:
            self._drop()
            raise

    def _open_for_send(self) -> None:
        try:
            self.open()
        except TemporaryFailure as failure:
            failure.no_session = True  # refused, timed out or 4xx before MAIL FROM: nothing was sent
            raise

    def open(self) -> None:
        """Connect, EHLO, STARTTLS and AUTH as configured (send() calls this when needed)."""
        self._drop()
        smtp = None
        try:
            smtp = self._connect()
            self._hello(smtp)
            if self._config.security == "starttls":
                self._starttls(smtp)
            if self._config.username:
                self._login(smtp)
        except BaseException:
            if smtp is not None:
                smtp.close()
            raise
        self._smtp, self._count, self._size = smtp, 0, smtp.has_extn("size")

    def close(self) -> None:
        """QUIT politely if the session is open; the next send opens a new one."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            smtp.close()

    # -- the transaction ----------------------------------------------------------------

    def _transaction(self, envelope_from: str, recipient: str, message: bytes, reused: bool) -> Sent:
        self._count += 1
        recipient = addr_spec(recipient)  # quoted legacy local part, A-label domain
        options = f" SIZE={len(message)}" if self._size else ""
        if not (recipient.isascii() and envelope_from.isascii()):
            options += self._smtputf8(envelope_from, recipient)
        self._overlap()  # one command at a time: nothing to overlap with, but before MAIL FROM all the same
        try:
            code, reply = self._command("mail", f"FROM:<{envelope_from}>{options}", "MAIL FROM")
        except TemporaryFailure:
            if reused:
                raise _Stale() from None
            raise
        if code == 421 and reused:
            self._drop()
            raise _Stale()
        if code != 250:
            self._refused_sender(envelope_from, code, reply, len(message))
        code, reply = self._command("rcpt", f"TO:<{recipient}>", "RCPT TO")
        if code not in (250, 251):
            self._failed(code, reply)
        code, reply = self._command("data", "", "DATA")
        if code != 354:
            self._failed(code, reply)
        return self._data(message)

    def _data(self, message: bytes) -> Sent:
        # Line ends repaired and dots stuffed, as smtplib's sendmail would (a message that is in
        # wire form already is only scanned): no bare line feed reaches the relay.
        return self._write_body(wireform.to_wire(message), wireform.END)

    def _write_body(self, message: bytes, end: bytes) -> Sent:
        """Write the message, stuffed, and its final dot; read the reply to that dot."""
        assert self._smtp is not None
        self._write((message, end), "during DATA")
        try:
            code, raw = self._smtp.getreply()
        except _DROPPED as exc:
            self._drop()
            raise TemporaryFailure(
                0, f"the connection to {self._where} dropped after the final dot ({exc}); "
                "the relay may have accepted the message", ambiguous=True, reconnect=True,
            ) from exc
        reply = _text(raw)
        if not 200 <= code < 300:
            self._failed(code, reply, after_dot=True)
        return Sent(f"{code} {reply}")

    def _command(self, verb: str, args: str, name: str) -> tuple[int, str]:
        """One command and its reply (smtplib's docmd), a drop made a TemporaryFailure."""
        assert self._smtp is not None
        try:
            self._smtp.putcmd(verb, args)
        except _DROPPED as exc:
            raise self._dropped(exc, f"at {name}") from exc
        return self._reply(name)

    def _reply(self, name: str) -> tuple[int, str]:
        """The relay's next reply (to `name`); a drop or a timeout is a TemporaryFailure."""
        assert self._smtp is not None
        try:
            code, raw = self._smtp.getreply()
        except _DROPPED as exc:
            raise self._dropped(exc, f"at {name}") from exc
        return code, _text(raw)

    def _write(self, data: bytes | tuple[bytes, ...], stage: str) -> None:
        """Bytes as they stand (commands, or a message in wire form and its final dot); a drop is
        a TemporaryFailure."""
        assert self._smtp is not None
        try:
            if isinstance(data, bytes):
                self._smtp.send(data)
            else:
                _send_parts(self._smtp, data)
        except _DROPPED as exc:
            raise self._dropped(exc, stage) from exc

    def _dropped(self, exc: Exception, stage: str) -> TemporaryFailure:
        """The session died mid-transaction: close it; what to raise (the message goes on a new one)."""
        self._drop()
        return TemporaryFailure(0, f"the relay {self._where} dropped the connection {stage} ({exc})",
                                reconnect=True)

    def _smtputf8(self, envelope_from: str, recipient: str) -> str:
        assert self._smtp is not None
        if not self._smtp.has_extn("smtputf8"):
            if not envelope_from.isascii():
                raise TransportError(
                    f"the relay {self._where} does not accept non-ASCII addresses (SMTPUTF8) such as the "
                    f"sender {envelope_from}; write the domains in [sender] from and bounce_address as xn--…"
                )
            raise PermanentFailure(0, f"the relay {self._where} does not accept non-ASCII addresses "
                                   f"(SMTPUTF8) such as {recipient}", kind=LOCAL)
        self._smtp.command_encoding = "utf-8"
        return " SMTPUTF8"

    def _failed(self, code: int, reply: str, *, after_dot: bool = False) -> None:
        """A refusal of this message or recipient (RCPT, DATA, or `after_dot`: after the final dot)."""
        if code == 421 or not 400 <= code < 600:
            self._drop()
            raise TemporaryFailure(code, reply, reconnect=True)
        self._reset()
        if code < 500:
            raise TemporaryFailure(code, reply)
        raise PermanentFailure(code, reply, after_dot=after_dot)

    def _refused_sender(self, envelope_from: str, code: int, reply: str, size: int) -> None:
        if code == 421 or not 400 <= code < 600:
            self._drop()
            raise TemporaryFailure(code, reply, reconnect=True)
        if code < 500:
            self._reset()
            raise TemporaryFailure(code, reply)
        self.close()
        if code == 552:
            raise TransportError(
                f"the relay {self._where} refuses messages of {size} bytes: {code} {reply}; "
                "make the issue smaller or raise the relay's message size limit"
            )
        raise TransportError(
            f"the relay {self._where} refused the sender {envelope_from}: {code} {reply}; "
            "check [sender] from and bounce_address and the relay's permissions for this client"
        )

    def _reset(self) -> None:
        """RSET so the next message starts clean; close the session if even that fails."""
        assert self._smtp is not None
        try:
            code, _ = self._smtp.rset()
        except _DROPPED:
            code = 0
        if code != 250:
            self._drop()

    def _drop(self) -> None:
        """Close without QUIT (the session is broken or the relay said 421)."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    # -- opening a session --------------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        config, context = self._config, self._transport.context
        if config.security == "none" and config.username and not is_loopback(config.host):
            raise TransportError(
                f'[smtp] security = "none" would send the password for {config.username} unencrypted '
                f'to {config.host}; use security = "starttls" (port 587) or "tls" (port 465)'
            )
        hostname, timeout = self._transport.local_hostname, config.timeout_seconds
        try:
            if config.security == "tls":
                return smtplib.SMTP_SSL(config.host, config.port, local_hostname=hostname, timeout=timeout,
                                        context=context)
            return smtplib.SMTP(config.host, config.port, local_hostname=hostname, timeout=timeout)
        except smtplib.SMTPConnectError as exc:
            self._refused_session("greeted us with", exc.smtp_code, exc.smtp_error)
            raise  # unreachable: _refused_session raises
        except ssl.SSLError as exc:
            raise self._tls_error(exc) from exc
        except _DROPPED as exc:
            raise TemporaryFailure(0, f"cannot connect to the relay {self._where}: {exc}; "
                                   "check [smtp] host and port", reconnect=True) from exc

    def _hello(self, smtp: smtplib.SMTP) -> None:
        try:
            code, reply = smtp.ehlo()
        except _DROPPED as exc:
            raise TemporaryFailure(0, f"the relay {self._where} dropped the connection at EHLO ({exc})",
                                   reconnect=True) from exc
        if code != 250:
            self._refused_session("refused EHLO with", code, reply)

    def _starttls(self, smtp: smtplib.SMTP) -> None:
        if not smtp.has_extn("starttls"):
            raise TransportError(
                f"the relay {self._where} does not offer STARTTLS, and mailmag never falls back to "
                'plain text; use security = "tls" for an implicit-TLS port (465) or enable TLS on the relay'
            )
        try:
            smtp.starttls(context=self._transport.context)
        except smtplib.SMTPResponseException as exc:
            self._refused_session("refused STARTTLS with", exc.smtp_code, exc.smtp_error)
        except ssl.SSLError as exc:
            raise self._tls_error(exc) from exc
        except _DROPPED as exc:
            raise TemporaryFailure(0, f"the relay {self._where} dropped the connection at STARTTLS ({exc})",
                                   reconnect=True) from exc
        self._hello(smtp)

    def _login(self, smtp: smtplib.SMTP) -> None:
        user, password = self._config.username, self._transport.password
        if not password:
            raise TransportError(
                f"[smtp] username is {user} but {ENV_SMTP_PASSWORD} is not set; "
                "set it in the environment of the worker"
            )
        if not smtp.has_extn("auth"):
            raise TransportError(
                f"the relay {self._where} does not offer AUTH on this connection; "
                'empty [smtp] username, or use security = "starttls" or "tls" if it offers AUTH only over TLS'
            )
        try:
            smtp.login(user, password)
        except smtplib.SMTPAuthenticationError as exc:
            if 400 <= exc.smtp_code < 500:
                self._refused_session("deferred AUTH with", exc.smtp_code, exc.smtp_error)
            raise TransportError(
                f"the relay {self._where} rejected the login of {user}: {exc.smtp_code} "
                f"{_text(exc.smtp_error)}; check [smtp] username and {ENV_SMTP_PASSWORD}"
            ) from exc
        except _DROPPED as exc:
            raise TemporaryFailure(0, f"the relay {self._where} dropped the connection at AUTH ({exc})",
                                   reconnect=True) from exc
        except smtplib.SMTPException as exc:  # no mechanism in common
            raise TransportError(f"cannot log in to the relay {self._where}: {exc}") from exc

    def _refused_session(self, what: str, code: int, reply: bytes | str) -> None:
        """A reply while opening the session: 4xx retry later, 5xx stop the run."""
        text = _text(reply)
        if 400 <= code < 500 or code < 0:
            raise TemporaryFailure(code, text, reconnect=True)
        raise TransportError(
            f"the relay {self._where} {what} {code} {text}; it refuses this client: "
            "check [smtp] host, port and security, and the relay's access rules"
        )

    def _tls_error(self, exc: ssl.SSLError) -> TransportError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return TransportError(
                f"the certificate of the relay {self._where} cannot be verified ({exc.verify_message}); "
                "set [smtp] host to the name in its certificate, or [smtp] ca_file to the CA that signed it"
            )
        return TransportError(
            f"the TLS handshake with the relay {self._where} failed ({exc.reason or exc}); "
            'check [smtp] security and port ("tls" is port 465, "starttls" port 587)'
        )


def check_relay(config: SmtpConfig, password: str, helo: str | None = None) -> list[str]:
    """Connect, EHLO, STARTTLS and AUTH without sending; one line per problem, naming the fix."""
    problems = []
    if config.security == "none" and not is_loopback(config.host):
        problems.append(
            f'[smtp] security = "none" sends mail unencrypted to {config.host}; '
            'use "starttls" or "tls" unless the relay runs on this machine'
        )
    try:
        connection = SmtpTransport(config, password, helo).connect()
        connection.open()
        connection.close()
    except MailmagError as exc:
        problems.append(str(exc))
    except TemporaryFailure as exc:
        problems.append(str(exc) if not exc.code else
                        f"the relay {config.host}:{config.port} answered {exc} (temporarily refused); "
                        "try again later, and ask the relay's administrator if it persists")
    return problems


def _text(reply: bytes | str) -> str:
    """A relay's reply as text to keep and show (smtplib joins a multi-line reply's lines with
    '\\n'): one line, nothing in it that could rewrite a terminal (text_ja.foreign_line)."""
    return text_ja.foreign_line(reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
