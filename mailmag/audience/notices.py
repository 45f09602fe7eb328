"""Mails to one person about their subscription, not an issue: the subscribe form's
confirmation, and the unsubscribe link that answers a request written by hand.

Each is a template in templates/web/mail/<kind>.<lang>.txt.j2 (the operator's copy first),
its first line the subject, sent at once through the configured transport.
"""

from __future__ import annotations

from typing import Any

import jinja2

from mailmag import addresses
from mailmag.config import Config
from mailmag.delivery import messages, transports
from mailmag.delivery.dkim import load_dkim


def environment(config: Config) -> jinja2.Environment:
    """The templates of these mails (plain text: nothing is escaped)."""
    loader = jinja2.FileSystemLoader([str(d) for d in config.web_template_dirs])
    return jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def render(env: jinja2.Environment, config: Config, kind: str, lang: str, **values: Any) -> tuple[str, str]:
    """(subject, text) of mail/<kind>.<lang>.txt.j2; `sender` is always there."""
    text = env.get_template(f"mail/{kind}.{lang}.txt.j2").render(sender=config.sender, **values)
    subject, _, body = text.partition("\n")
    return subject.strip(), body.lstrip("\n")


def send(config: Config, to_email: str, subject: str, text: str) -> None:
    """One mail now, from the bounce address; a relay's refusal raises (TransportError or a
    transports failure). No name reaches the To line: who asked may not be who owns it."""
    data = messages.build_simple(config, to_email, "", subject, text, dkim=load_dkim(config))
    connection = transports.make_transport(config).connect()
    try:
        connection.send(addresses.bounce_address(config), to_email, data)
    finally:
        connection.close()
