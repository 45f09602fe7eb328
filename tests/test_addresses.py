"""One address rule for the whole product: what import, forms and headers accept is what is sent.

Legacy docomo/au addresses (taro..yamada.@docomo.ne.jp) and internationalized local parts
(ユーザー@example.jp) go from a CSV through the CLI to a real aiosmtpd relay.
"""

from __future__ import annotations

import json
import re
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from sqlalchemy import select

from mailmag import db
from mailmag.addresses import addr_spec, parse_address
from mailmag.delivery.headers import format_address
from mailmag.errors import InvalidEmail, InvalidInput
from mailmag.models import Delivery

LEGACY = ["taro..yamada.@docomo.ne.jp", ".hanako@ezweb.ne.jp", "jiro...@biz.ezweb.ne.jp", "a..b@au.com"]


@pytest.mark.parametrize("address", LEGACY)
def test_legacy_carrier_addresses_are_accepted_stored_as_typed_and_written_quoted(address):
    parsed = parse_address(address)
    assert parsed.email == address
    local, _, domain = address.rpartition("@")
    assert addr_spec(parsed.email) == f'"{local}"@{domain}'
    # A list exported from a mail client may hold the quoted form: it is the same subscriber.
    assert parse_address(f'"{local}"@{domain}') == parsed


@pytest.mark.parametrize("address", ["taro..yamada@example.jp", "taro.@gmail.com",
                                     ".taro@docomo.ne.jp.evil.example"])
def test_the_relaxed_dot_rule_is_for_the_carriers_domains_only(address):
    with pytest.raises(InvalidEmail):
        parse_address(address)


@pytest.mark.parametrize("address", [
    *LEGACY, "taro@example.jp", "Taro.Yamada@example.com", "ユーザー@example.jp", "info@例え.jp",
    "taro..yamada@example.jp", "taro@@example.jp", "taro", "山田@", "taro@localhost.localhost",
])
def test_the_subscriber_store_and_the_message_builder_give_one_verdict(address):
    """headers.py accepted legacy carrier addresses that parse_address refused: never again."""
    try:
        stored = parse_address(address).email
    except InvalidEmail:
        stored = None
    try:
        written = format_address("山田", address, utf8=True)
    except InvalidInput:
        written = None
    assert (stored is None) == (written is None), (stored, written)


def test_control_characters_never_make_an_address():
    with pytest.raises(InvalidEmail, match="control character"):
        parse_address("taro\x00@example.jp")
    with pytest.raises(InvalidEmail, match="control character"):  # in the name that is dropped too
        parse_address("山田\x1b[2J <yamada@example.jp>")


def test_an_address_with_a_name_is_its_bracketed_part_unless_the_name_is_another_address():
    """helper-72: 'a@example.jp <b@example.jp>' was taken as b silently; which one was meant is
    not known. A mail program's own copy, the address as its name, is one address."""
    assert parse_address("山田 太郎 <Yamada@Example.JP>").email == "Yamada@example.jp"
    assert parse_address("'yamada@example.jp' <yamada@example.jp>").email == "yamada@example.jp"
    with pytest.raises(InvalidEmail, match="it names two addresses; give the one meant"):
        parse_address("sato@example.jp <yamada@example.jp>")
    with pytest.raises(InvalidEmail, match="it names two addresses; give the one meant"):
        parse_address("sato@example.jp, <yamada@example.jp>")
    # an @ in a name that is no address (helper-75: these were refused)
    assert parse_address("田中@営業 <tanaka@example.jp>").email == "tanaka@example.jp"
    assert parse_address("山田 (@yamada) <yamada@example.jp>").email == "yamada@example.jp"
    # a quoted name holding < or > (a mail program's copy of 'Yamada <Sales>'): was refused
    assert parse_address('"Yamada <Sales>" <yamada@example.jp>').email == "yamada@example.jp"
    assert parse_address("営業部>山田 <yamada@example.jp>").email == "yamada@example.jp"
    for two in ("<sato@example.jp> <yamada@example.jp>", '"Sato <sato@example.jp>" <yamada@example.jp>'):
        with pytest.raises(InvalidEmail, match="it names two addresses; give the one meant"):
            parse_address(two)


# --- through the CLI and a real relay --------------------------------------------------------


def _use_relay(config_file: Path, port: int) -> None:
    text = config_file.read_text().replace(
        'transport = "file"', f'transport = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"')
    config_file.write_text(text)


def _compose(mailmag) -> None:  # type: ignore[no-untyped-def]
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    item = json.loads(mailmag.ok("items", "submit", "--org", "cef", "--kind", "news", "--title",
                                 "お知らせ", "--body", "本文です。", "--json").stdout)
    mailmag.ok("items", "approve", str(item["id"]))
    mailmag.ok("issues", "new")


def _deliveries(db_url: str) -> dict[str, tuple[str, str]]:
    engine = db.make_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Delivery.email, Delivery.status, Delivery.last_reply))
            return {email_: (status, reply) for email_, status, reply in rows}
    finally:
        engine.dispose()


def test_a_csv_of_legacy_carrier_addresses_is_imported_and_each_is_delivered(
        mailmag, tmp_path, smtp_server, config_file, db_url):
    csv_file = tmp_path / "members.csv"
    csv_file.write_text("メールアドレス,氏名\r\ntaro..yamada.@docomo.ne.jp,山田 太郎\r\n"
                        ".hanako@ezweb.ne.jp,花子\r\nplain@example.jp,普通\r\n", encoding="utf-8")
    result = mailmag.ok("subscribers", "import", str(csv_file))
    assert result.stdout.splitlines()[0].startswith("added 3, updated 0, unchanged 0, invalid 0")
    _compose(mailmag)
    _use_relay(config_file, smtp_server.port)
    mailmag.ok("issues", "send", "1", "--yes")
    assert mailmag.ok("worker", "--once").stdout.strip() == "sent 3, failed 0, deferred 0"
    rcpt = sorted(line for line in smtp_server.command_lines if line.startswith("RCPT"))
    assert rcpt == ['RCPT TO:<".hanako"@ezweb.ne.jp>', 'RCPT TO:<"taro..yamada."@docomo.ne.jp>',
                    "RCPT TO:<plain@example.jp>"]  # quoted on the wire (RFC 5321 §4.1.2)
    (taro,) = [m for m in smtp_server.messages if m.recipients == ("taro..yamada.@docomo.ne.jp",)]
    to = re.search(rb"\r\nTo: (.*?)\r\n(?! )", taro.data, re.S).group(1).decode()
    decoded = str(make_header(decode_header(to.replace("\r\n", ""))))
    assert decoded == '山田 太郎 <"taro..yamada."@docomo.ne.jp>'
    assert {status for status, _ in _deliveries(db_url).values()} == {"sent"}


def _smtputf8_setup(mailmag, tmp_path) -> None:  # type: ignore[no-untyped-def]
    csv_file = tmp_path / "members.csv"
    csv_file.write_text("メールアドレス\r\nユーザー@example.jp\r\nascii@example.jp\r\n", encoding="utf-8")
    result = mailmag.ok("subscribers", "import", str(csv_file))
    assert result.stdout.splitlines()[0].startswith("added 2, updated 0, unchanged 0, invalid 0")
    assert "note: line 2: ユーザー@example.jp has non-ASCII characters before the @: it can be delivered " \
           "only through a relay that offers SMTPUTF8" in result.stderr
    _compose(mailmag)


def test_a_non_ascii_address_is_sent_with_smtputf8_when_the_relay_offers_it(
        mailmag, tmp_path, smtp_server, config_file):
    _smtputf8_setup(mailmag, tmp_path)
    _use_relay(config_file, smtp_server.port)
    mailmag.ok("issues", "send", "1", "--yes")
    assert mailmag.ok("worker", "--once").stdout.strip() == "sent 2, failed 0, deferred 0"
    (utf8,) = [m for m in smtp_server.messages if m.recipients == ("ユーザー@example.jp",)]
    assert "SMTPUTF8" in utf8.mail_options
    assert b"\r\nTo: \xe3\x83\xa6\xe3\x83\xbc\xe3\x82\xb6\xe3\x83\xbc@example.jp\r\n" in utf8.data  # RFC 6532


def test_without_smtputf8_only_that_recipient_fails_and_says_why(
        mailmag, tmp_path, make_smtp_server, config_file, db_url):
    server = make_smtp_server(smtputf8=False)
    _smtputf8_setup(mailmag, tmp_path)
    _use_relay(config_file, server.port)
    mailmag.ok("issues", "send", "1", "--yes")
    assert mailmag.ok("worker", "--once").stdout.strip() == "sent 1, failed 1, deferred 0"
    assert server.recipients() == ["ascii@example.jp"]
    status, reply = _deliveries(db_url)["ユーザー@example.jp"]
    assert status == "failed"
    assert "does not accept non-ASCII addresses (SMTPUTF8) such as ユーザー@example.jp" in reply


def test_subscribers_add_says_a_non_ascii_address_needs_smtputf8(mailmag):
    result = mailmag.ok("subscribers", "add", "ユーザー@example.jp")
    assert result.stdout.strip() == "added ユーザー@example.jp"
    assert "relay that offers SMTPUTF8" in result.stderr


def test_a_mailto_unsubscribe_from_the_quoted_form_finds_the_legacy_subscriber(session, config, tmp_path):
    import bounce_samples as samples
    from test_bounces import process, write_maildir

    from mailmag.audience import subscribers
    from mailmag.audience.subscribers import Consent

    subscribers.add(session, parse_address("taro..yamada.@docomo.ne.jp"), Consent("cli"))
    box = write_maildir(tmp_path / "Maildir", [samples.mailto_unsubscribe('"taro..yamada."@docomo.ne.jp')])
    report = process(session, config, box)
    assert report.unmatched == []  # matched; without a tag it is answered with the reader's own link
    assert [a.email for a in report.asks] == ["taro..yamada.@docomo.ne.jp"]


def test_characters_that_would_make_another_address_are_refused_not_read_otherwise():
    """helper-81: ①@example.jp was stored as 1@example.jp, another person's address, silently.
    Full-width letters, ＠ and spaces are still the same keys typed in full-width mode."""
    for typed, shown in (("①@example.jp", "①"), ("ﬁle@example.jp", "ﬁ"), ("a²@example.jp", "²"),
                         ("山田 <yamada@exa㎜ple.jp>", "㎜")):
        with pytest.raises(InvalidEmail, match="would make another address") as refused:
            parse_address(typed)
        assert f"「{shown}」はアドレスに使えない文字です" in refused.value.ja
    assert parse_address("ｙａｍａｄａ＠ｅｘａｍｐｌｅ．ｊｐ").email == "yamada@example.jp"
    assert parse_address("㈱山田　＜yamada@example.jp＞").email == "yamada@example.jp"  # in the name: dropped
    assert parse_address("　yamada@example.jp\u00a0").email == "yamada@example.jp"
