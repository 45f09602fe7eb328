"""The wire form (delivery.wireform, .wire): messages built ready for DATA, and PIPELINING against Postfix.

The fault classification of the pipelined session is tested against aiosmtpd in
test_transports_pipelined.py; here: what makes sending without a pass over the bytes safe,
and a real pipelining relay (Postfix's smtp-sink: skipped where it is not installed, a
failure in CI, which installs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SECRET
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_server import TlsFiles
from test_messages import _config, _recipient, _rendering
from test_transports import FROM

from mailmag.config import SmtpConfig
from mailmag.delivery import messages, wire, wireform
from mailmag.delivery.dkim import load_dkim
from mailmag.delivery.smtp import SmtpTransport
from mailmag.errors import InvalidInput

SMTP_SINK = "/usr/sbin/smtp-sink"


@pytest.fixture(scope="module")
def skeleton(reference_text: str) -> messages.Skeleton:
    return messages.prepare(_rendering(reference_text), 12, _config())


@pytest.fixture(scope="module")
def reference_text() -> str:
    from conftest import REFERENCE

    return REFERENCE.read_text(encoding="utf-8")


@settings(max_examples=60, deadline=None)
@given(name=st.text(min_size=0, max_size=30), local=st.sampled_from([".taro", "taro.", "a..b", "x"]))
def test_every_personalized_message_is_in_wire_form(skeleton, name, local):  # type: ignore[no-untyped-def]
    """What send_prepared writes without looking: no bare line end, no line starting with a dot."""
    recipient = _recipient(name=name, email=f'"{local}"@example.com' if ".." in local or local[0] == "."
                           or local[-1] == "." else f"{local}@example.com")
    try:
        _, data = messages.personalize(skeleton, recipient, SECRET)
    except InvalidInput:
        return  # a line break in a name is refused, never sent
    assert wireform.is_wire_form(data)


def test_a_signed_message_is_in_wire_form(reference_text, tmp_path):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from mailmag.config import DkimConfig

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    config = _config().replace(dkim=DkimConfig(selector="s", private_key_file=str(tmp_path / "k.pem")))
    skeleton = messages.prepare(_rendering(reference_text), 12, config, dkim=load_dkim(config))
    _, data = messages.personalize(skeleton, _recipient(name=".山田"), SECRET)
    assert data.startswith(b"DKIM-Signature: ") and wireform.is_wire_form(data)


@pytest.mark.parametrize(("raw", "wired"), [
    (b"a\r\n.b\r\n", b"a\r\n..b\r\n"),
    (b".a\nb", b"..a\r\nb\r\n"),
    (b"a\rb\r\n", b"a\r\nb\r\n"),
    (b"a\r\n", b"a\r\n"),
])
def test_to_wire_repairs_line_ends_and_stuffs_dots(raw, wired):  # type: ignore[no-untyped-def]
    assert wireform.is_wire_form(raw) == (raw == wired)
    assert wireform.to_wire(raw) == wired


def test_a_skeleton_piece_out_of_wire_form_is_refused_once_per_issue():
    wireform.check(b"List-Id: <news.example.jp>\r\n")
    for piece in (b"X: a\r\n.b\r\n", b"X: a\nb\r\n", b"X: a"):
        with pytest.raises(ValueError, match="wire form"):
            wireform.check(piece)


def test_a_prepared_message_arrives_byte_for_byte_pipelined(smtp_server, monkeypatch, skeleton):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(wire.PipelinedConnection, "force", True)
    connection = SmtpTransport(smtp_server.smtp_config()).connect()
    try:
        envelope_from, data = messages.personalize(skeleton, _recipient(), SECRET)
        for _ in range(3):
            wire.send_prepared(connection, envelope_from, "taro@example.com", data)
    finally:
        connection.close()
    assert [m.data for m in smtp_server.messages] == [data] * 3
    assert [m.session for m in smtp_server.messages] == [1, 1, 1]


# -- against Postfix's smtp-sink, which offers PIPELINING ---------------------------------------


@pytest.fixture
def postfix_sink() -> Iterator[tuple[int, Path]]:
    """smtp-sink on a free port, dumping every message into a folder: (port, folder)."""
    if not Path(SMTP_SINK).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SMTP_SINK} is missing, and CI must test pipelining against it "
                        "(apt-get install postfix)")
        pytest.skip(f"{SMTP_SINK} is not installed (Debian package postfix)")
    folder = Path(tempfile.mkdtemp(prefix="mailmag-sink-"))
    folder.chmod(0o777)  # smtp-sink drops root for nobody, who writes the dumps
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen([SMTP_SINK, *user, "-4", "-d", f"{folder}/m", f"127.0.0.1:{port}", "10"])
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "smtp-sink did not start"
            time.sleep(0.05)
        yield port, folder
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_postfix_gets_pipelined_messages_intact(postfix_sink):  # type: ignore[no-untyped-def]
    port, folder = postfix_sink
    config = SmtpConfig(transport="smtp", host="127.0.0.1", port=port, security="none", timeout_seconds=10)
    sent = [f"From: news@example.jp\r\nTo: r{i}@example.jp\r\nSubject: dots\r\n\r\n"
            ".a line starting with a dot\r\n..and two\r\n.\r\nlast\r\n".encode() for i in range(5)]
    connection = SmtpTransport(config).connect()
    try:
        replies = [connection.send(FROM, f"r{i}@example.jp", data).reply for i, data in enumerate(sent)]
        assert connection.pipelining  # Postfix offered PIPELINING and the session used it
        prepared = wireform.to_wire(sent[0])
        replies.append(wire.send_prepared(connection, FROM, "r5@example.jp", prepared).reply)
    finally:
        connection.close()
    assert all(reply.startswith("250") for reply in replies)
    deadline = time.monotonic() + 5
    while len(list(folder.iterdir())) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    dumps = sorted((path.read_bytes() for path in folder.iterdir()),
                   key=lambda dump: dump.split(b"X-Rcpt-Args: ")[1])
    assert len(dumps) == 6
    for number, dump in enumerate(dumps):
        assert f"X-Rcpt-Args: <r{number}@example.jp>".encode() in dump
        expected = (sent[number] if number < 5 else sent[0]).replace(b"\r\n", b"\n")
        assert expected in dump  # smtp-sink stores LF line ends, the dots unstuffed


def test_a_relay_that_says_354_to_a_refused_recipient_gets_no_body():
    """RFC 2920: after a refused RCPT a broken relay may still answer DATA with 354. A lone dot
    could then queue an empty message: the client hangs up instead, and the recipient's refusal
    is reported as it was given."""
    import threading

    from mailmag.delivery.transports import PermanentFailure

    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def relay() -> None:
        connection, _ = listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 broken ESMTP\r\n")
            replies = {b"EHLO": b"250-broken\r\n250 PIPELINING\r\n", b"MAIL": b"250 2.1.0 ok\r\n",
                       b"RCPT": b"550 5.1.1 no such user\r\n", b"DATA": b"354 go ahead\r\n"}
            for line in lines:
                received.append(line)
                verb = line[:4].upper()
                if verb in replies:
                    connection.sendall(replies[verb])

    server = threading.Thread(target=relay, daemon=True)
    server.start()
    config = SmtpConfig(transport="smtp", host="127.0.0.1", port=listener.getsockname()[1], security="none",
                        timeout_seconds=5)
    connection = SmtpTransport(config).connect()
    with pytest.raises(PermanentFailure, match=r"5\.1\.1 no such user") as failure:
        connection.send(FROM, "gone@example.jp", b"Subject: x\r\n\r\nbody\r\n")
    server.join(timeout=5)
    listener.close()
    assert failure.value.kind == "address" and not connection.is_open
    assert [line.split(b" ")[0].strip().upper() for line in received] == [b"EHLO", b"MAIL", b"RCPT", b"DATA"]


def test_a_message_larger_than_the_socket_buffer_goes_whole_and_in_order():
    """The body and its final dot are written without joining them (one sendmsg); a kernel that
    takes only part of it each time must still get every byte once, in order."""
    import smtplib
    import threading

    from mailmag.delivery.smtp import _send_parts

    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # partial sends at every call
    ours.settimeout(10)
    received = bytearray()

    def read() -> None:
        while chunk := theirs.recv(1000):
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    smtp = smtplib.SMTP()
    smtp.sock = ours
    body = bytes(range(256)) * 4000  # 1 MB
    try:
        _send_parts(smtp, (body, b"", wireform.END))
    finally:
        ours.close()
        reader.join()
        theirs.close()
    assert bytes(received) == body + wireform.END


class _PipeliningRelay:
    """A relay on a raw socket that offers PIPELINING and records what it read: the body's lines
    as they come (`body`), whether the final dot came (`dot`), and whether the client hung up."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        """`tls`: the session is TLS from the start (security = "tls"), with these certificates."""
        import threading

        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.body: list[bytes] = []
        self.dot = threading.Event()
        self.hung_up = threading.Event()
        self.close_before_dot = False  # hang up once the content is read
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def config(self) -> SmtpConfig:
        if self.tls is not None:  # its certificate names localhost
            return SmtpConfig(transport="smtp", host="localhost", port=self.listener.getsockname()[1],
                              security="tls", ca_file=str(self.tls.ca), timeout_seconds=5)
        return SmtpConfig(transport="smtp", host="127.0.0.1", port=self.listener.getsockname()[1],
                          security="none", timeout_seconds=5)

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        if self.tls is not None:
            connection = self.tls.server_context().wrap_socket(connection, server_side=True)
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 relay ESMTP\r\n")
            in_data = False
            for line in lines:
                if in_data:
                    if self.close_before_dot and len(self.body) == 101:  # the content's last line
                        self.body.append(line)
                        break
                    if line == b".\r\n":
                        in_data = False
                        self.dot.set()
                        connection.sendall(b"250 2.0.0 queued\r\n")
                    else:
                        self.body.append(line)
                    continue
                verb = line[:4].upper()
                reply = {b"EHLO": b"250-relay\r\n250 PIPELINING\r\n", b"MAIL": b"250 ok\r\n",
                         b"RCPT": b"250 ok\r\n", b"DATA": b"354 go ahead\r\n", b"QUIT": b"221 bye\r\n"}
                in_data = verb == b"DATA"
                connection.sendall(reply.get(verb, b"500 what\r\n"))
        self.hung_up.set()

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.listener.close()


MESSAGE = b"Subject: x\r\n\r\n" + b"line\r\n" * 100


@pytest.mark.parametrize("tls", [False, True])
def test_the_previous_result_is_committed_while_the_relay_reads_the_content_before_the_dot(tls, tls_files):  # type: ignore[no-untyped-def]
    """`meanwhile` (the dispatcher commits the previous result there) runs once the content is on
    the wire, and the final dot waits for it: the relay reads the message while the database
    commits, and accepts nothing before the commit. The dot goes at once when it may (Nagle's
    algorithm held it 40 ms for the relay's delayed ACK: 23 messages a second). Over TLS, where
    anything from the relay before the dot counts as a hang-up, the message goes all the same."""
    relay = _PipeliningRelay(tls_files if tls else None)
    seen: list[tuple[int, bool]] = []

    def meanwhile() -> None:
        deadline = time.monotonic() + 5
        while len(relay.body) < 102 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append((len(relay.body), relay.dot.is_set()))

    connection = SmtpTransport(relay.config()).connect()
    try:
        sent = wire.send_prepared(connection, FROM, "r@example.jp", MESSAGE, meanwhile=meanwhile)
        assert connection._smtp.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        connection.close()
        relay.close()
    assert seen == [(102, False)]  # the whole content read, no dot yet
    assert sent.reply.startswith("250") and relay.dot.is_set()


def test_a_message_whose_previous_result_cannot_be_committed_gets_no_final_dot():
    """If `meanwhile` raises (the database went away, or the row was withdrawn meanwhile), the
    session is dropped before the dot: the relay discards what it read, nothing is accepted."""
    relay = _PipeliningRelay()

    def meanwhile() -> None:
        raise RuntimeError("the database went away")

    connection = SmtpTransport(relay.config()).connect()
    try:
        with pytest.raises(RuntimeError, match="went away"):
            wire.send_prepared(connection, FROM, "r@example.jp", MESSAGE, meanwhile=meanwhile)
        assert not connection.is_open
    finally:
        connection.close()
        relay.close()
    assert relay.hung_up.is_set() and not relay.dot.is_set()
    assert len(relay.body) == 102  # it had the content, and no dot to accept it with


@pytest.mark.parametrize("tls", [False, True])
def test_a_relay_that_hangs_up_before_the_dot_is_a_plain_drop(tls, tls_files):  # type: ignore[no-untyped-def]
    """helper-62: a relay that closed the session while the content went (here while the previous
    result was being committed) had no dot, so it cannot have the message; the dot written after
    it met a closed connection, and the worker reported 'may arrive twice'. Over TLS too."""
    from mailmag.delivery.transports import TemporaryFailure

    relay = _PipeliningRelay(tls_files if tls else None)
    relay.close_before_dot = True

    def meanwhile() -> None:
        assert relay.hung_up.wait(5)

    connection = SmtpTransport(relay.config()).connect()
    try:
        with pytest.raises(TemporaryFailure, match="before the final dot") as failure:
            wire.send_prepared(connection, FROM, "r@example.jp", MESSAGE, meanwhile=meanwhile)
    finally:
        connection.close()
        relay.close()
    assert not failure.value.ambiguous and not relay.dot.is_set()
