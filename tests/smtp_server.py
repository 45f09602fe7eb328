"""A real aiosmtpd server on loopback whose replies and dropped connections tests choose.

    server = SmtpServer().start()                  # or the `smtp_server` fixture
    server.fail_rcpt("x@example.jp", 550, "5.1.1 no such user")
    server.fail_next("data_end", 451, times=2)     # the next two messages get 451 after the dot
    server.fail_next("rcpt", 421, after=2)         # the third RCPT gets 421 (the server then hangs up)
    server.drop("after_data")                      # keep the next message, then close without a reply
    server.stall("rcpt")                           # say nothing: the client times out
    server.delay("data_end", 0.3, times=None)      # answer every message 0.3 s after the dot
    server.most_sessions = 1                       # a second connection open at once gets 421
    server.messages, server.sessions, server.commands, server.port, server.smtp_config()

Stages: "connect" (instead of the 220 banner), "ehlo", "mail", "rcpt", "data" (the DATA
command, before 354), "data_end" (after the final dot; the message is not kept) and, for
drop() and stall() only, "after_data" (the message is kept, then the connection closes unanswered:
the ambiguous case). A 421 reply is followed by the server closing the connection, as real
servers do. TLS ("starttls" or "implicit") uses certificates from `TlsFiles`, a throwaway
CA made once per test session; `users` turns on AUTH (PLAIN and LOGIN); smtputf8=False
makes a server that refuses non-ASCII addresses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailmag.config import Config, SmtpConfig

HOST = "127.0.0.1"
STAGES = ("connect", "ehlo", "mail", "rcpt", "data", "data_end", "after_data")
DEFAULT_TEXT = {4: "4.3.0 injected temporary failure", 5: "5.0.0 injected permanent failure"}


@dataclasses.dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    envelope_from: str
    recipients: tuple[str, ...]
    data: bytes
    session: int  # 1 for the first connection of the test, 2 for the next…
    login: str | None  # the AUTH user, if the client logged in
    helo: str = ""  # the name the client gave in EHLO/HELO
    mail_options: tuple[str, ...] = ()  # MAIL FROM parameters (SIZE=…, SMTPUTF8)
    at: float = 0.0  # time.monotonic() when its final dot had arrived


@dataclasses.dataclass
class _Fault:
    stage: str
    reply: str | None  # None: drop the connection
    times: int | None  # None: forever
    after: int = 0  # let this many matching commands pass first
    address: str | None = None  # just this recipient (RCPT, and a message's first one after it)
    stall: bool = False  # with reply None: say nothing and keep the connection open
    delay: float = 0.0  # wait this long, then answer `reply` (None: as usual)


class _Handler:
    """aiosmtpd hooks; all state lives on the SmtpServer (the test thread reads it)."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        reply = await self.server._fault(smtp, "ehlo")
        return responses if reply is None else [reply]

    async def handle_MAIL(self, smtp: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        reply = await self.server._fault(smtp, "mail")
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, smtp: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        reply = await self.server._fault(smtp, "rcpt", address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        first = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        reply = await self.server._fault(smtp, "data_end", first)
        if reply is not None:
            return reply
        number = self.server._store(smtp, session, envelope)
        await self.server._fault(smtp, "after_data", first)
        return f"250 2.0.0 OK queued as {number}"


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP plus the stages it has no hook for (banner, DATA command) and a command log."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._server = handler.server
        self.session_number = 0
        self._smtp_methods = {name: self._logged(name, method) for name, method in self._smtp_methods.items()}

    def _logged(self, name: str, method: Any) -> Any:
        async def run(arg: str | None) -> None:
            self._server.commands.append(name)
            self._server.command_lines.append(f"{name} {arg}" if arg else name)
            await method(arg)

        return run

    async def _handle_client(self) -> None:
        self.session_number = self._server._new_session(self)
        reply = await self._server._fault(self, "connect") or self._server._too_many()
        if reply is not None:
            await self.push(reply)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        self._server._live.discard(self)
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        reply = await self._server._fault(self, "data")
        if reply is not None:
            await self.push(reply)
            return
        await super().smtp_DATA(arg)

    async def push(self, status: str | bytes) -> None:
        await super().push(status)
        code = status[:3] if isinstance(status, str) else status[:3].decode()
        if code == "421" and self.transport is not None:
            self.transport.close()  # a server that says 421 hangs up


class _Controller(Controller):
    """Binds a free port itself (no race) and builds the fault-injecting SMTP class."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        self._socket = socket.create_server((HOST, 0))
        super().__init__(handler, hostname=HOST, port=self._socket.getsockname()[1], **kwargs)

    def factory(self) -> SMTP:
        return _FaultySMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self):  # type: ignore[no-untyped-def]
        return self.loop.create_server(self._factory_invoker, sock=self._socket, ssl=self.ssl_context)


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA, a server certificate it signed and one it did not."""

    ca: Path
    cert: Path
    key: Path
    rogue_cert: Path
    rogue_key: Path

    @classmethod
    def create(cls, directory: Path) -> TlsFiles:
        ca_key, ca_cert = _certificate("mailmag test CA", None)
        key, cert = _certificate("localhost", (ca_key, ca_cert))
        rogue_key, rogue_cert = _certificate("localhost", None, leaf=True)
        files = cls(*(directory / n for n in ("ca.pem", "cert.pem", "key.pem", "rogue.pem", "rogue-key.pem")))
        files.ca.write_bytes(_pem(ca_cert))
        files.cert.write_bytes(_pem(cert))
        files.key.write_bytes(_pem(key))
        files.rogue_cert.write_bytes(_pem(rogue_cert))
        files.rogue_key.write_bytes(_pem(rogue_key))
        return files

    def server_context(self, trusted: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if trusted:
            context.load_cert_chain(self.cert, self.key)
        else:
            context.load_cert_chain(self.rogue_cert, self.rogue_key)
        return context


class SmtpServer:
    """The server and what it saw; see the module docstring."""

    def __init__(self, *, tls: str = "none", tls_files: TlsFiles | None = None, trusted: bool = True,
                 users: dict[str, str] | None = None, smtputf8: bool = True) -> None:
        if tls not in ("none", "starttls", "implicit"):
            raise ValueError(f"tls must be none, starttls or implicit, not {tls!r}")
        self.tls, self.tls_files, self.users = tls, tls_files, dict(users or {})
        self.messages: list[Received] = []
        self.commands: list[str] = []  # every SMTP verb received, in order ("EHLO", "MAIL", …)
        self.command_lines: list[str] = []  # the same with their arguments as sent ("RCPT TO:<…>")
        self.sessions = 0
        self.most_sessions: int | None = None  # more open at once: 421 at the banner, as relays limit clients
        self.refused_sessions = 0  # sessions turned away by most_sessions
        self.stalled = threading.Event()  # set when a stall() fault holds a session: a race test waits on it
        self._faults: list[_Fault] = []
        self._live: set[SMTP] = set()  # open server-side sessions, closed by stop()
        self._lock = threading.Lock()
        self._controller = _Controller(_Handler(self), enable_SMTPUTF8=smtputf8, **self._smtp_kwargs(trusted))

    def _smtp_kwargs(self, trusted: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"server_hostname": "mx.test", "ident": "mailmag test SMTP"}
        if self.tls != "none":
            assert self.tls_files is not None, "TLS needs tls_files"
            context = self.tls_files.server_context(trusted)
            kwargs["ssl_context" if self.tls == "implicit" else "tls_context"] = context
        if self.users:
            kwargs["authenticator"] = self._authenticate
            # Implicit TLS is invisible to aiosmtpd, which would then hide AUTH; over plain text AUTH is
            # offered too (loopback relays). aiosmtpd warns only when AUTH is also required.
            kwargs["auth_require_tls"] = self.tls == "starttls"
        return kwargs

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._controller.port

    def start(self) -> SmtpServer:
        self._controller.start()
        self.sessions = 0  # the controller's own start-up probe is not a test's session
        self.commands.clear()
        self.command_lines.clear()
        return self

    def stop(self) -> None:
        """Close the sessions a test left open (so no transport is left unclosed), then stop."""
        loop = self._controller.loop
        asyncio.run_coroutine_threadsafe(self._close_sessions(), loop).result(timeout=5)
        self._controller.stop()

    async def _close_sessions(self) -> None:
        for smtp in list(self._live):
            if smtp.transport is not None:
                smtp.transport.abort()
        for _ in range(3):  # let connection_lost() run for each
            await asyncio.sleep(0)

    # -- what tests call ------------------------------------------------------------------

    def fail_next(self, stage: str, code: int, text: str = "", *, times: int | None = 1,
                  after: int = 0) -> None:
        """Answer the next `times` commands of `stage` (after letting `after` pass) with `code text`."""
        self._add(_Fault(stage, _reply(code, text), times, after))

    def fail_rcpt(self, address: str, code: int, text: str = "", *, times: int | None = None,
                  after: int = 0, delay: float = 0.0) -> None:
        """Answer RCPT TO:<address> with `code text` (`times` None: every time), after letting
        `after` of them pass, `delay` seconds late."""
        self._add(_Fault("rcpt", _reply(code, text), times, after, address.lower(), delay=delay))

    def drop(self, stage: str, *, times: int | None = 1, after: int = 0, address: str | None = None) -> None:
        """Close the connection without replying at `stage` (after "after_data": the message is kept);
        with `address`, only for that recipient."""
        self._add(_Fault(stage, None, times, after, (address or "").lower() or None))

    def stall(self, stage: str, *, times: int | None = 1, after: int = 0) -> None:
        """Say nothing at `stage` and keep the connection open, so the client times out."""
        self._add(_Fault(stage, None, times, after, stall=True))

    def delay(self, stage: str, seconds: float, *, times: int | None = 1, after: int = 0) -> None:
        """Wait `seconds` at `stage`, then go on as usual (a slow relay, not a broken one)."""
        self._add(_Fault(stage, None, times, after, delay=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def smtp_config(self, **overrides: Any) -> SmtpConfig:
        """[smtp] settings that point at this server (a trusting ca_file, the first user)."""
        values: dict[str, Any] = {
            "transport": "smtp", "host": HOST, "port": self.port, "timeout_seconds": 5.0,
            "security": {"none": "none", "starttls": "starttls", "implicit": "tls"}[self.tls],
            "ca_file": str(self.tls_files.ca) if self.tls_files and self.tls != "none" else "",
            "username": next(iter(self.users), ""),
        }
        values.update(overrides)
        return SmtpConfig(**values)

    def configure(self, config: Config, **overrides: Any) -> Config:
        """`config` sending through this server, with the first user's password as MAILMAG_SMTP_PASSWORD."""
        return config.replace(smtp=self.smtp_config(**overrides),
                              smtp_password=next(iter(self.users.values()), ""))

    def recipients(self) -> list[str]:
        """Every accepted recipient, in order of acceptance."""
        return [rcpt for message in self.messages for rcpt in message.recipients]

    # -- called from the server thread ----------------------------------------------------

    def _add(self, fault: _Fault) -> None:
        if fault.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {fault.stage!r}")
        if fault.stage == "after_data" and fault.reply is not None:
            raise ValueError("after_data only drops or stalls; use data_end for a reply after the final dot")
        with self._lock:
            self._faults.append(fault)

    def _new_session(self, smtp: SMTP) -> int:
        with self._lock:
            self._live.add(smtp)
            self.sessions += 1
            return self.sessions

    def _too_many(self) -> str | None:
        with self._lock:
            if self.most_sessions is None or len(self._live) <= self.most_sessions:
                return None
            self.refused_sessions += 1
        return "421 4.7.0 too many connections from your address, try again later"

    async def _fault(self, smtp: SMTP, stage: str, address: str | None = None) -> str | None:
        """The reply to inject at this stage, or None; a drop or stall never returns."""
        fault = self._take(stage, address)
        if fault is None:
            return None
        if fault.delay:  # a slow relay: then the fault's reply, or the usual one
            await asyncio.sleep(fault.delay)
            return fault.reply
        if fault.reply is not None:
            return fault.reply
        if smtp.transport is not None and not fault.stall:
            smtp.transport.abort()  # no reply, no TLS goodbye: as if the cable were pulled
        if fault.stall:
            self.stalled.set()
        await asyncio.sleep(3600)  # connection_lost() cancels this task
        return None

    def _take(self, stage: str, address: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.stage != stage or (fault.address and fault.address != (address or "").lower()):
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _store(self, smtp: SMTP, session: Session, envelope: Envelope) -> int:
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        data = envelope.original_content or b""
        with self._lock:
            self.messages.append(Received(envelope.mail_from or "", tuple(envelope.rcpt_tos), data,
                                          getattr(smtp, "session_number", 0), login,
                                          session.host_name or "", tuple(envelope.mail_options),
                                          time.monotonic()))
            return len(self.messages)

    def _authenticate(self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and self.users.get(auth_data.login.decode()) == auth_data.password.decode())
        return AuthResult(success=ok, handled=False, auth_data=auth_data)  # handled=False: aiosmtpd says 535


def _reply(code: int, text: str) -> str:
    """`code text`; a text of several lines is a multi-line reply (`code-` on all but the last)."""
    *first, last = (text or DEFAULT_TEXT.get(code // 100, "injected reply")).split("\n")
    return "".join(f"{code}-{line}\r\n" for line in first) + f"{code} {last}"


def _certificate(name: str, issuer: tuple[Any, Any] | None, leaf: bool | None = None) -> tuple[Any, Any]:
    """An EC key and certificate: a CA when `issuer` is None (unless `leaf`), else a server cert."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    is_ca = issuer is None and not leaf
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_key, issuer_cert = issuer or (key, None)
    # OpenSSL checks validity against the machine's real clock, which a test's moved clock is not.
    import time_machine

    hatch = time_machine.escape_hatch
    now = (hatch.datetime.datetime if hatch.is_travelling() else dt.datetime).now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                       critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return key, builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return obj.public_bytes(serialization.Encoding.PEM)
