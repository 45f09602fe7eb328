"""Every SMTP transport test again, with MAIL, RCPT and DATA pipelined (mailmag.delivery.wire).

aiosmtpd does not announce PIPELINING but reads commands one at a time, so the pipelining
client can be forced against the fault-injecting server: every reply classification (4xx,
5xx with enhanced codes, 421, drops and timeouts at each stage, the ambiguous drop after the
dot, the stale idle session) is checked on the pipelined path with the same assertions.
"""

from __future__ import annotations

import re

import pytest
from test_transports import *  # noqa: F403 - the same tests, collected again here
from test_transports import FROM, MESSAGE, recipients

from mailmag.delivery import wire
from mailmag.errors import TransportError


@pytest.fixture(autouse=True)
def _pipelined(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(wire.PipelinedConnection, "force", True)


@pytest.mark.parametrize(
    ("code", "text", "message"),
    [
        (550, "5.7.1 sender not allowed",
         rf"refused the sender {re.escape(FROM)}: 550 5\.7\.1 sender not allowed; check \[sender\] from"),
        (553, "5.1.8 bad sender domain", r"refused the sender .*553 5\.1\.8"),
        (552, "5.3.4 message too big", r"refuses messages of \d+ bytes: 552 .*make the issue"),
    ],
)
def test_5xx_before_any_recipient_stops_the_run(smtp_server, connect, code, text, message):  # type: ignore[no-untyped-def]
    """Pipelined, RCPT and DATA went out with MAIL: the relay refuses them, and no body follows."""
    connection = connect(smtp_server)
    smtp_server.fail_next("mail", code, text)
    with pytest.raises(TransportError, match=message):
        connection.send(FROM, "a@example.jp", MESSAGE)
    assert smtp_server.messages == [] and smtp_server.commands == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert not connection.is_open


def test_the_pipelined_path_is_the_one_tested(smtp_server, connect):  # type: ignore[no-untyped-def]
    connection = connect(smtp_server)
    connection.send(FROM, "a@example.jp", MESSAGE)
    assert connection.pipelining and recipients(smtp_server) == ["a@example.jp"]
