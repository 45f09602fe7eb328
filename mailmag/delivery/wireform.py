"""The wire form of a message: what follows DATA/354 on an SMTP session, as it stands.

After DATA/354 a message goes on the wire with CRLF line ends, every line that starts with
a dot doubled, and ".\\r\\n" after it. smtplib's `sendmail` repairs line ends and stuffs dots
with two regular expressions over the whole message, for every recipient; mailmag's
messages are built in wire form instead (`messages.prepare` checks the issue's constant
pieces once with `check`; the per-recipient lines are header lines, which start with a name
or a folding space, and base64, which has no dot), so the dispatcher's sends
(wire.send_prepared) write them with no pass over their bytes. Any other message (a test
mail, a confirmation mail) goes through `to_wire` in the SMTP session: a bare line feed
never reaches a relay, whoever built the message.
"""

from __future__ import annotations

import re

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
