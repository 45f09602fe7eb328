"""Transports: SMTP against a real aiosmtpd server with injected replies and drops; file; memory."""

from __future__ import annotations

import contextlib
import email
import re
import socket
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import compat32

import pytest

from mailmag.config import Config, SmtpConfig
from mailmag.delivery.smtp import SmtpTransport
from mailmag.delivery.transports import (
    FileTransport,
    MemoryTransport,
    PermanentFailure,
    Sent,
    TemporaryFailure,
    check_relay,
    make_transport,
)
from mailmag.errors import ConfigError, TransportError

FROM = "bounces+1-abc@example.jp"


def build(to: str = "member@example.jp", body: str = "会議のお知らせです。\n") -> bytes:
    message = EmailMessage()
    message["From"] = "news@example.jp"
    message["To"] = to
    message["Subject"] = "メールマガジン 第1号"
    message.set_content(body, cte="base64")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


MESSAGE = build()


@pytest.fixture
def connect():  # type: ignore[no-untyped-def]
    """connect(server, password=None, **smtp overrides) → an SmtpConnection, closed after the test."""
    opened = []

    def make(server, password=None, **overrides):  # type: ignore[no-untyped-def]
        if password is None:
            password = next(iter(server.users.values()), "")
        connection = SmtpTransport(server.smtp_config(**overrides), password).connect()
        opened.append(connection)
        return connection

    yield make
    for connection in opened:
        connection.close()


def recipients(server) -> list[str]:  # type: ignore[no-untyped-def]
    return server.recipients()


# -- sending and reuse -----------------------------------------------------------------


def test_messages_arrive_byte_for_byte_over_one_session(smtp_server, connect):
    connection = connect(smtp_server)
    messages = [build(f"m{i}@example.jp") for i in range(5)]
    for i, message in enumerate(messages):
        assert isinstance(connection.send(FROM, f"m{i}@example.jp", message), Sent)
    assert [m.data for m in smtp_server.messages] == messages
    assert [m.envelope_from for m in smtp_server.messages] == [FROM] * 5
    assert recipients(smtp_server) == [f"m{i}@example.jp" for i in range(5)]
    assert smtp_server.sessions == 1
    assert smtp_server.commands.count("EHLO") == 1


def test_the_reply_to_the_final_dot_is_reported(smtp_server, connect):
    sent = connect(smtp_server).send(FROM, "a@example.jp", MESSAGE)
    assert sent.reply == "250 2.0.0 OK queued as 1"


def test_lines_starting_with_a_dot_arrive_intact(smtp_server, connect):
    message = b"Subject: dots\r\n\r\n.\r\n..two\r\n.hidden\r\nlast line without CRLF"
    connect(smtp_server).send(FROM, "a@example.jp", message)
    assert smtp_server.messages[0].data == message + b"\r\n"


def test_bare_line_breaks_reach_the_relay_as_crlf(smtp_server, connect):
    """A relay never sees a lone LF or CR (RFC 5321 2.3.8; a bare LF before a dot is how SMTP
    smuggling starts), whoever built the message: every line end is repaired, as sendmail would."""
    message = b"Subject: ends\n\nLF only\n.dot after an LF\rCR only\r\nlast\n"
    connect(smtp_server).send(FROM, "a@example.jp", message)
    assert smtp_server.messages[0].data == (b"Subject: ends\r\n\r\nLF only\r\n.dot after an LF\r\n"
                                            b"CR only\r\nlast\r\n")


def test_non_ascii_recipient_is_sent_with_smtputf8(smtp_server, connect):
    connect(smtp_server).send(FROM, "山田@example.jp", MESSAGE)
    assert recipients(smtp_server) == ["山田@example.jp"]


def test_non_ascii_recipient_without_smtputf8_fails_only_that_recipient(make_smtp_server, connect):
    server = make_smtp_server(smtputf8=False)
    connection = connect(server)
    with pytest.raises(PermanentFailure, match=r"does not accept non-ASCII addresses .* 山田@example\.jp"):
        connection.send(FROM, "山田@example.jp", MESSAGE)
    connection.send(FROM, "yamada@example.jp", MESSAGE)
    assert recipients(server) == ["yamada@example.jp"] and server.sessions == 1


def test_non_ascii_sender_without_smtputf8_stops_the_run(make_smtp_server, connect):
    server = make_smtp_server(smtputf8=False)
    with pytest.raises(TransportError, match=r"such as the sender news@例え\.jp; write the domains"):
        connect(server).send("news@例え.jp", "a@example.jp", MESSAGE)
    assert server.messages == []


def test_messages_per_connection_is_respected(smtp_server, connect):
    connection = connect(smtp_server, messages_per_connection=2)
    for i in range(5):
        connection.send(FROM, f"m{i}@example.jp", MESSAGE)
    assert [m.session for m in smtp_server.messages] == [1, 1, 2, 2, 3]
    assert smtp_server.commands.count("QUIT") == 2  # each full session ended politely


def test_connection_opens_lazily_and_close_quits(smtp_server, connect):
    connection = connect(smtp_server)
    assert smtp_server.sessions == 0
    connection.send(FROM, "a@example.jp", MESSAGE)
    connection.close()
    assert smtp_server.commands[-1] == "QUIT"
    assert not connection.is_open


# -- replies at each stage -------------------------------------------------------------

PERMANENT = [
    (550, "5.1.1 no such user", False),
    (551, "5.1.6 user has moved", False),
    (553, "5.1.3 bad address syntax", False),
    (554, "5.7.1 rejected by policy", True),
    (550, "5.7.26 unauthenticated mail is prohibited", True),
]


@pytest.mark.parametrize("stage", ["rcpt", "data", "data_end"])
@pytest.mark.parametrize(("code", "text", "blocked"), PERMANENT)
def test_5xx_for_a_recipient_is_permanent_and_the_session_goes_on(
    smtp_server, connect, stage, code, text, blocked
):
    connection = connect(smtp_server)
    smtp_server.fail_next(stage, code, text)
    with pytest.raises(PermanentFailure) as failure:
        connection.send(FROM, "gone@example.jp", MESSAGE)
    assert (failure.value.code, failure.value.reply, failure.value.blocked) == (code, text, blocked)
    assert str(failure.value) == f"{code} {text}"
    connection.send(FROM, "next@example.jp", MESSAGE)
    assert recipients(smtp_server) == ["next@example.jp"]
    assert smtp_server.sessions == 1 and "RSET" in smtp_server.commands


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data", "data_end"])
def test_4xx_is_temporary_and_the_session_goes_on(smtp_server, connect, stage):
    connection = connect(smtp_server)
    smtp_server.fail_next(stage, 451, "4.3.0 try again later")
    with pytest.raises(TemporaryFailure) as failure:
        connection.send(FROM, "busy@example.jp", MESSAGE)
    assert (failure.value.code, failure.value.reconnect, failure.value.ambiguous) == (451, False, False)
    connection.send(FROM, "busy@example.jp", MESSAGE)
    assert recipients(smtp_server) == ["busy@example.jp"]
    assert smtp_server.sessions == 1


@pytest.mark.parametrize("stage", ["connect", "ehlo", "mail", "rcpt", "data", "data_end"])
def test_421_anywhere_defers_and_the_next_send_reconnects(smtp_server, connect, stage):
    connection = connect(smtp_server)
    smtp_server.fail_next(stage, 421, "4.3.2 shutting down")
    with pytest.raises(TemporaryFailure) as failure:
        connection.send(FROM, "a@example.jp", MESSAGE)
    assert (failure.value.code, failure.value.reconnect) == (421, True)
    assert smtp_server.messages == []
    assert not connection.is_open
    connection.send(FROM, "a@example.jp", MESSAGE)
    assert [m.session for m in smtp_server.messages] == [2]


def test_421_midway_keeps_exactly_the_accepted_messages(smtp_server, connect):
    connection = connect(smtp_server)
    smtp_server.fail_next("rcpt", 421, "4.7.0 too many messages", after=2)
    connection.send(FROM, "m0@example.jp", MESSAGE)
    connection.send(FROM, "m1@example.jp", MESSAGE)
    with pytest.raises(TemporaryFailure, match="too many messages"):
        connection.send(FROM, "m2@example.jp", MESSAGE)
    assert recipients(smtp_server) == ["m0@example.jp", "m1@example.jp"]
    connection.send(FROM, "m2@example.jp", MESSAGE)
    assert [(m.recipients[0], m.session) for m in smtp_server.messages][-1] == ("m2@example.jp", 2)


@pytest.mark.parametrize(
    ("stage", "code", "text", "message"),
    [
        ("connect", 554, "5.7.1 no SMTP service here", r"127\.0\.0\.1:\d+ greeted us with 554 5\.7\.1"),
        ("ehlo", 550, "5.7.1 access denied", r"refused EHLO with 550 5\.7\.1 access denied"),
        ("mail", 550, "5.7.1 sender not allowed",
         rf"refused the sender {re.escape(FROM)}: 550 5\.7\.1 sender not allowed; check \[sender\] from"),
        ("mail", 553, "5.1.8 bad sender domain", r"refused the sender .*553 5\.1\.8"),
        ("mail", 552, "5.3.4 message too big", r"refuses messages of \d+ bytes: 552 .*make the issue"),
    ],
)
def test_5xx_before_any_recipient_stops_the_run(smtp_server, connect, stage, code, text, message):
    connection = connect(smtp_server)
    smtp_server.fail_next(stage, code, text)
    with pytest.raises(TransportError, match=message):
        connection.send(FROM, "a@example.jp", MESSAGE)
    assert smtp_server.messages == [] and "RCPT" not in smtp_server.commands
    assert not connection.is_open


def test_4xx_at_ehlo_is_temporary(smtp_server, connect):
    smtp_server.fail_next("ehlo", 454, "4.7.0 try later")
    with pytest.raises(TemporaryFailure) as failure:
        connect(smtp_server).send(FROM, "a@example.jp", MESSAGE)
    assert (failure.value.code, failure.value.reconnect) == (454, True)


def test_per_address_failure_hits_only_that_recipient(smtp_server, connect):
    connection = connect(smtp_server)
    smtp_server.fail_rcpt("Gone@Example.jp", 550, "5.1.1 no such user")
    for address in ("a@example.jp", "gone@example.jp", "b@example.jp", "gone@example.jp"):
        with contextlib.suppress(PermanentFailure):
            connection.send(FROM, address, MESSAGE)
    assert recipients(smtp_server) == ["a@example.jp", "b@example.jp"]


# -- dropped connections and timeouts --------------------------------------------------


@pytest.mark.parametrize("stage", ["connect", "ehlo", "mail", "rcpt", "data"])
def test_drop_before_the_final_dot_is_a_plain_retry(smtp_server, connect, stage):
    connection = connect(smtp_server)
    smtp_server.drop(stage)
    with pytest.raises(TemporaryFailure) as failure:
        connection.send(FROM, "a@example.jp", MESSAGE)
    assert (failure.value.reconnect, failure.value.ambiguous) == (True, False)
    assert smtp_server.messages == []
    connection.send(FROM, "a@example.jp", MESSAGE)
    assert [m.session for m in smtp_server.messages] == [2]


@pytest.mark.parametrize(("stage", "kept"), [("data_end", 0), ("after_data", 1)])
def test_drop_after_the_final_dot_is_ambiguous(smtp_server, connect, stage, kept):
    connection = connect(smtp_server)
    smtp_server.drop(stage)
    with pytest.raises(TemporaryFailure, match="after the final dot") as failure:
        connection.send(FROM, "a@example.jp", MESSAGE)
    assert (failure.value.reconnect, failure.value.ambiguous) == (True, True)
    assert len(smtp_server.messages) == kept  # the client cannot tell these two apart
    connection.send(FROM, "b@example.jp", MESSAGE)
    assert smtp_server.messages[-1].session == 2


@pytest.mark.parametrize(("stage", "ambiguous"), [("rcpt", False), ("after_data", True)])
def test_a_silent_relay_times_out(smtp_server, connect, stage, ambiguous):
    connection = connect(smtp_server, timeout_seconds=0.3)
    smtp_server.stall(stage)
    with pytest.raises(TemporaryFailure, match="timed out") as failure:
        connection.send(FROM, "a@example.jp", MESSAGE)
    assert (failure.value.reconnect, failure.value.ambiguous) == (True, ambiguous)


def test_idle_session_closed_by_the_relay_is_reopened_once(smtp_server, connect):
    connection = connect(smtp_server)
    connection.send(FROM, "a@example.jp", MESSAGE)
    smtp_server.drop("mail")  # what a relay's idle timeout looks like to the next command
    connection.send(FROM, "b@example.jp", MESSAGE)
    smtp_server.fail_next("mail", 421, "4.4.2 idle timeout")
    connection.send(FROM, "c@example.jp", MESSAGE)
    assert [(m.recipients[0], m.session) for m in smtp_server.messages] == [
        ("a@example.jp", 1), ("b@example.jp", 2), ("c@example.jp", 3)]


def test_a_relay_that_keeps_dropping_is_not_retried_forever(smtp_server, connect):
    connection = connect(smtp_server)
    connection.send(FROM, "a@example.jp", MESSAGE)
    smtp_server.drop("mail", times=2)
    with pytest.raises(TemporaryFailure) as failure:
        connection.send(FROM, "b@example.jp", MESSAGE)
    assert failure.value.reconnect
    assert smtp_server.sessions == 2 and recipients(smtp_server) == ["a@example.jp"]


def test_no_relay_listening_is_temporary(connect):
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    transport = SmtpTransport(SmtpConfig(transport="smtp", port=port, security="none", timeout_seconds=2))
    with pytest.raises(TemporaryFailure, match=rf"cannot connect to the relay 127\.0\.0\.1:{port}") as fail:
        transport.connect().send(FROM, "a@example.jp", MESSAGE)
    assert fail.value.reconnect


# -- TLS and AUTH ----------------------------------------------------------------------


def test_starttls_with_a_trusted_ca_and_auth(make_smtp_server, connect):
    server = make_smtp_server(tls="starttls", users={"news": "s3cret"})
    connect(server).send(FROM, "a@example.jp", MESSAGE)
    assert server.commands[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]
    assert [(m.recipients, m.login) for m in server.messages] == [(("a@example.jp",), "news")]


def test_starttls_with_an_untrusted_certificate_stops_before_any_mail(make_smtp_server, connect):
    server = make_smtp_server(tls="starttls", trusted=False, users={"news": "s3cret"})
    with pytest.raises(TransportError, match=r"certificate of the relay .* cannot be verified .*ca_file"):
        connect(server).send(FROM, "a@example.jp", MESSAGE)
    assert server.messages == [] and server.commands == ["EHLO", "STARTTLS"]


def test_system_cas_do_not_trust_a_private_relay(make_smtp_server, connect):
    server = make_smtp_server(tls="starttls")
    with pytest.raises(TransportError, match="cannot be verified"):
        connect(server, ca_file="").send(FROM, "a@example.jp", MESSAGE)
    assert server.messages == []


def test_no_starttls_offered_means_no_plain_text_fallback(smtp_server, connect):
    with pytest.raises(TransportError, match="does not offer STARTTLS, and mailmag never falls back"):
        connect(smtp_server, security="starttls").send(FROM, "a@example.jp", MESSAGE)
    assert smtp_server.messages == [] and smtp_server.commands == ["EHLO"]


def test_implicit_tls_works(make_smtp_server, connect):
    server = make_smtp_server(tls="implicit", users={"news": "s3cret"})
    connection = connect(server)
    connection.send(FROM, "a@example.jp", MESSAGE)
    connection.send(FROM, "b@example.jp", MESSAGE)
    assert [(m.session, m.login) for m in server.messages] == [(1, "news"), (1, "news")]


def test_implicit_tls_with_an_untrusted_certificate_fails(make_smtp_server, connect):
    server = make_smtp_server(tls="implicit", trusted=False)
    with pytest.raises(TransportError, match="cannot be verified"):
        connect(server).send(FROM, "a@example.jp", MESSAGE)
    assert server.messages == []


def test_implicit_tls_against_a_plain_port_names_the_setting(smtp_server, connect, tls_files):
    with pytest.raises(TransportError, match=r"TLS handshake .* failed .*check \[smtp\] security and port"):
        connect(smtp_server, security="tls", ca_file=str(tls_files.ca)).send(FROM, "a@example.jp", MESSAGE)
    assert smtp_server.messages == []


def test_wrong_password_names_the_environment_variable(make_smtp_server, connect):
    server = make_smtp_server(tls="starttls", users={"news": "s3cret"})
    with pytest.raises(TransportError, match=r"rejected the login of news: 535 .*MAILMAG_SMTP_PASSWORD"):
        connect(server, password="wrong").send(FROM, "a@example.jp", MESSAGE)
    assert server.messages == [] and "MAIL" not in server.commands


def test_username_without_password_names_the_environment_variable(make_smtp_server, connect):
    server = make_smtp_server(tls="starttls", users={"news": "s3cret"})
    with pytest.raises(TransportError, match="username is news but MAILMAG_SMTP_PASSWORD is not set"):
        connect(server, password="").send(FROM, "a@example.jp", MESSAGE)
    assert "AUTH" not in server.commands


def test_auth_on_a_plain_loopback_relay(make_smtp_server, connect):
    server = make_smtp_server(users={"news": "s3cret"})
    connect(server).send(FROM, "a@example.jp", MESSAGE)
    assert server.messages[0].login == "news"


def test_password_is_never_sent_in_clear_to_a_remote_relay():
    config = SmtpConfig(transport="smtp", host="192.0.2.1", security="none", username="news")
    with pytest.raises(TransportError, match=r'"none" would send the password for news unencrypted'):
        SmtpTransport(config, "s3cret").connect().send(FROM, "a@example.jp", MESSAGE)


def test_unreadable_ca_file_is_a_config_error(tmp_path):
    config = Config(smtp=SmtpConfig(transport="smtp", ca_file=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match=r"\[smtp\] ca_file .*missing\.pem cannot be read"):
        make_transport(config)


# -- check_relay (for `mailmag doctor`) ------------------------------------------------


def test_check_relay_passes_without_sending(make_smtp_server):
    server = make_smtp_server(tls="starttls", users={"news": "s3cret"})
    assert check_relay(server.configure(Config())) == []
    assert server.messages == [] and "MAIL" not in server.commands and server.commands[-1] == "QUIT"


def test_check_relay_reports_each_problem_as_one_line(make_smtp_server, smtp_server):
    server = make_smtp_server(tls="starttls", users={"news": "s3cret"})
    [line] = check_relay(server.configure(Config()).replace(smtp_password="wrong"))
    assert "MAILMAG_SMTP_PASSWORD" in line and "\n" not in line
    [line] = check_relay(smtp_server.configure(Config(), security="starttls"))
    assert "does not offer STARTTLS" in line


def test_check_relay_reports_a_temporary_refusal(smtp_server):
    smtp_server.fail_next("ehlo", 454, "4.7.0 too busy")
    assert check_relay(smtp_server.configure(Config())) == [
        f"the relay 127.0.0.1:{smtp_server.port} answered 454 4.7.0 too busy (temporarily refused); "
        "try again later, and ask the relay's administrator if it persists"]


def test_check_relay_warns_about_plain_text_to_a_remote_host():
    config = Config(smtp=SmtpConfig(transport="smtp", host="192.0.2.1", port=9, security="none",
                                    timeout_seconds=0.2))
    problems = check_relay(config)
    assert 'security = "none" sends mail unencrypted to 192.0.2.1' in problems[0]


# -- file and memory transports --------------------------------------------------------


def test_file_transport_writes_complete_eml_files_in_order(tmp_path):
    folder = tmp_path / "outbox" / "new"
    connection = make_transport(Config(smtp=SmtpConfig(transport="file", file_dir=str(folder)))).connect()
    for i in range(3):
        connection.send(FROM, f"m{i}@example.jp", build(f"m{i}@example.jp", f"本文{i}\n"))
    connection.close()
    files = sorted(folder.iterdir())
    assert [f.suffix for f in files] == [".eml"] * 3  # no temporary files left behind
    for i, path in enumerate(files):
        parsed = email.message_from_bytes(path.read_bytes(), policy=compat32)
        assert (parsed["Return-Path"], parsed["Delivered-To"], parsed["To"]) == (
            f"<{FROM}>", f"m{i}@example.jp", f"m{i}@example.jp")
        assert str(make_header(decode_header(parsed["Subject"]))) == "メールマガジン 第1号"
        assert parsed.get_payload(decode=True).decode() == f"本文{i}\n"
        assert path.read_bytes().endswith(build(f"m{i}@example.jp", f"本文{i}\n"))


def test_file_transport_names_never_collide_between_transports(tmp_path):
    a, b = FileTransport(tmp_path).connect(), FileTransport(tmp_path).connect()
    for _ in range(20):
        a.send(FROM, "a@example.jp", MESSAGE)
        b.send(FROM, "b@example.jp", MESSAGE)
    assert len(list(tmp_path.glob("*.eml"))) == 40


def test_file_transport_unwritable_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the folder should be")
    config = Config(smtp=SmtpConfig(transport="file", file_dir=str(blocker)))
    with pytest.raises(TransportError, match=r"into .*outbox \(File exists\); check \[smtp\] file_dir"):
        make_transport(config).connect().send(FROM, "a@example.jp", MESSAGE)
    assert check_relay(config) == [f"cannot write messages into {blocker} (File exists); "
                                   "check [smtp] file_dir and its permissions"]
    assert blocker.read_text() == "a file where the folder should be"


def test_memory_transport_records_and_fails_on_request():
    transport = make_transport(Config(smtp=SmtpConfig(transport="memory")))
    assert isinstance(transport, MemoryTransport)
    transport.fail("gone@example.jp", PermanentFailure(550, "5.1.1 no such user"))
    transport.fail("busy@example.jp", TemporaryFailure(451, "4.3.0 later"), times=1)
    connection = transport.connect()
    connection.send(FROM, "a@example.jp", MESSAGE)
    with pytest.raises(PermanentFailure, match=r"5\.1\.1"):
        connection.send(FROM, "gone@example.jp", MESSAGE)
    with pytest.raises(TemporaryFailure):
        connection.send(FROM, "busy@example.jp", MESSAGE)
    connection.send(FROM, "busy@example.jp", MESSAGE)
    with pytest.raises(PermanentFailure):
        connection.send(FROM, "gone@example.jp", MESSAGE)
    assert [(d.envelope_from, d.recipient) for d in transport.messages] == [
        (FROM, "a@example.jp"), (FROM, "busy@example.jp")]
    assert transport.to("a@example.jp") == [MESSAGE] and transport.connections == 1


def test_default_configuration_uses_the_file_transport():
    assert isinstance(make_transport(Config()), FileTransport)
