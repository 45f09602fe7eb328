"""The bytes a subscriber's mail server receives: headers, MIME structure, VERP, DKIM.

Run this file as a script for the personalize() micro-benchmark:
    .venv/bin/python tests/test_messages.py
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import email.utils
import re
import time
from email.header import decode_header, make_header
from pathlib import Path

import dkim
import pytest
from conftest import REFERENCE, SECRET
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmag import addresses, tokens
from mailmag import placeholders as placeholders
from mailmag.config import Config, DkimConfig, GeneralConfig, SenderConfig
from mailmag.delivery import messages
from mailmag.delivery.dkim import load_dkim
from mailmag.errors import ConfigError, InvalidInput
from mailmag.models import Rendering, utcnow

BASE_URL = "https://news.example.jp"
SUBJECT = "中国地域産学官コラボレーション会議 メールマガジン 第12号（2026年12月1日）"
MARK = placeholders.PLACEHOLDERS


def _config(**sender) -> Config:
    return Config(
        mailmag=GeneralConfig(base_url=BASE_URL),
        sender=SenderConfig(from_="news@example.jp", **sender),
        secret_key=SECRET,
    )


def _rendering(article: str) -> Rendering:
    text = (
        f"{MARK['name']} 様\n\n{article}\n\n―――\n配信先: {MARK['email']}\n"
        f"配信停止: {MARK['unsubscribe_url']}\n配信設定: {MARK['preferences_url']}\n"
    )
    paragraphs = "".join(
        f'<p style="margin:0 0 1em;line-height:1.8">{line}</p>\n' for line in article.splitlines() if line
    )
    html = (
        '<!DOCTYPE html>\n<html lang="ja"><head><meta charset="utf-8"></head><body>\n'
        f"<p>{MARK['name']} 様</p>\n{paragraphs}"
        f'<p><a href="{MARK["unsubscribe_url"]}">配信停止</a> ・ '
        f'<a href="{MARK["preferences_url"]}">配信設定</a> ({MARK["email"]})</p>\n</body></html>\n'
    )
    return Rendering(lang="ja", subject=SUBJECT, html=html, text=text)


def _names_row(purpose: str, token: str, subscriber_id: int, link_key: str) -> bool:
    """Whether a link token names this row (its id and key) and no row with another key."""
    link = tokens.read_person(SECRET, purpose, token)
    created = utcnow()
    return (link.subscriber_id == subscriber_id and link.fits(link_key, created)
            and not link.fits(link_key + "-other", created))


def _recipient(delivery_id: int = 41, subscriber_id: int = 7, **kw) -> messages.Recipient:
    values = {"email": "taro@example.com", "name": "山田 太郎", "message_id": "<mm.12.7.beef@example.jp>",
              "link_key": f"key-of-row-{subscriber_id}"}
    return messages.Recipient(delivery_id, subscriber_id, **{**values, **kw})


@pytest.fixture
def rendering(reference_text: str) -> Rendering:
    return _rendering(reference_text)


@pytest.fixture
def sent(rendering):  # type: ignore[no-untyped-def]
    """(envelope sender, raw bytes, parsed message) of one issue mail to 山田 太郎."""
    skeleton = messages.prepare(rendering, 12, _config(feedback_id="newsletter:council"))
    envelope_from, data = messages.personalize(skeleton, _recipient(), SECRET)
    return envelope_from, data, email.message_from_bytes(data, policy=email.policy.default)


def _raw_headers(data: bytes) -> dict[str, list[bytes]]:
    """Header name (lower case) → its raw values, folds kept, as they are on the wire."""
    block = data.split(b"\r\n\r\n", 1)[0]
    fields: dict[str, list[bytes]] = {}
    for field in re.split(rb"\r\n(?![ \t])", block):
        name, _, value = field.partition(b":")
        fields.setdefault(name.decode().lower(), []).append(value[1:])
    return fields


def _decoded(raw: bytes) -> str:
    return str(make_header(decode_header(raw.decode().replace("\r\n", ""))))


def test_every_header_a_receiver_looks_at(sent):
    _, data, message = sent
    raw = _raw_headers(data)
    assert _decoded(raw["from"][0]) == "中国地域産学官コラボレーション会議 事務局 <news@example.jp>"
    assert _decoded(raw["to"][0]) == "山田 太郎 <taro@example.com>"
    assert _decoded(raw["subject"][0]) == SUBJECT
    assert email.utils.parsedate_to_datetime(message["Date"]).utcoffset().total_seconds() == 9 * 3600
    assert message["Message-ID"] == "<mm.12.7.beef@example.jp>"
    list_name = "中国地域産学官コラボレーション会議 メールマガジン"
    assert _decoded(raw["list-id"][0]) == f"{list_name} <news.example.jp>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Precedence"] == "bulk"
    assert message["Feedback-ID"] == "12:newsletter:council"
    assert message["Archived-At"] == "<https://news.example.jp/archive/12>"
    assert message["List-Archive"] == "<https://news.example.jp/archive/>"
    assert message["MIME-Version"] == "1.0"
    assert "return-path" not in raw and "bcc" not in raw and "cc" not in raw
    assert all(len(values) == 1 for values in raw.values())


def test_list_unsubscribe_is_folded_between_a_working_https_link_and_a_mailto(sent):
    _, data, _ = sent
    match = re.search(
        rb"\r\nList-Unsubscribe: <https://news\.example\.jp/u/([\w.-]+)>,\r\n "
        rb"<mailto:unsubscribe@example\.jp\?subject=unsubscribe%20(7-[a-z2-7]{13})>\r\n(?! )",
        data,
    )
    assert match, data[:1500]
    assert _names_row("unsubscribe", match.group(1).decode(), 7, "key-of-row-7")
    tag = tokens.unsubscribe_tag(SECRET, 7, "key-of-row-7").encode()
    assert match.group(2) == tag  # signed for this row's key: unforgeable


def test_unsubscribe_mailto_follows_the_configuration(rendering):
    skeleton = messages.prepare(rendering, 12, _config(unsubscribe_mailto="optout@lists.example.jp"))
    _, data = messages.personalize(skeleton, _recipient(), SECRET)
    tag = tokens.unsubscribe_tag(SECRET, 7, "key-of-row-7")
    assert f",\r\n <mailto:optout@lists.example.jp?subject=unsubscribe%20{tag}>\r\n".encode() in data
    assert b"Feedback-ID" not in data


def test_multipart_alternative_plain_first_base64_utf8_bodies_equal_the_substitution(sent, rendering):
    message = sent[2]
    assert message.get_content_type() == "multipart/alternative"
    plain, markup = message.iter_parts()
    assert [plain.get_content_type(), markup.get_content_type()] == ["text/plain", "text/html"]
    for part in (plain, markup):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "base64"
    body = plain.get_content()
    values = {
        "name": "山田 太郎",
        "email": "taro@example.com",
        "unsubscribe_url": re.search(r"配信停止: (\S+)", body).group(1),
        "preferences_url": re.search(r"配信設定: (\S+)", body).group(1),
    }
    assert _names_row("preferences", values["preferences_url"].rsplit("/", 1)[1], 7, "key-of-row-7")
    crlf = lambda s: s.replace("\n", "\r\n")  # noqa: E731 - text/* is CRLF on the wire (RFC 2046)
    assert body == crlf(placeholders.substitute(rendering.text, values, escape=False))
    assert markup.get_content() == crlf(placeholders.substitute(rendering.html, values, escape=True))


def test_on_the_wire_crlf_only_lines_within_76_and_no_8bit(sent):
    _, data, _ = sent
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert data.isascii()
    for line in data.split(b"\r\n"):
        # An https unsubscribe URL is never split (see tests/test_mail_trust.py for the folding).
        assert len(line) <= 76 or re.fullmatch(rb"List-Unsubscribe: <https://news\.example\.jp/u/[\w.-]+>,",
                                               line), line
        assert not line.startswith(b".")


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    segments=st.lists(_TEXT, min_size=1, max_size=6),
    markers=st.lists(st.sampled_from(sorted(MARK.values())), min_size=5, max_size=5),
    name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=30),
)
def test_base64_stays_exact_wherever_the_values_fall(segments, markers, name):
    """Bodies are mostly pre-encoded per issue; every alignment of a value must decode exactly."""
    template = "".join(seg + mark for seg, mark in zip(segments, markers, strict=False)) + "終"
    rendering = Rendering(lang="ja", subject="件名", html=template, text=template)
    _, data = messages.personalize(messages.prepare(rendering, 1, _config()), _recipient(name=name), SECRET)
    message = email.message_from_bytes(data, policy=email.policy.default)
    unsubscribe = re.search(r"<(https://\S+)>,", message["List-Unsubscribe"]).group(1)
    values = {"name": name, "email": "taro@example.com", "unsubscribe_url": unsubscribe,
              "preferences_url": unsubscribe.replace("/u/", "/p/")}
    for part, escape in zip(message.iter_parts(), (False, True), strict=True):
        lines = part.get_payload().splitlines()
        assert all(0 < len(line) <= 76 for line in lines)
        decoded = binascii.a2b_base64("".join(lines).encode(), strict_mode=True).decode()
        expected = placeholders.substitute(template, values, escape=escape)
        if MARK["preferences_url"] in template:  # its token differs; compare around it
            expected = re.sub(r"/p/[\w.-]+", "/p/", expected)
            decoded = re.sub(r"/p/[\w.-]+", "/p/", decoded)
        assert decoded == expected.replace("\r\n", "\n").replace("\n", "\r\n")


def test_html_part_escapes_values_the_plain_part_keeps_them(rendering):
    skeleton = messages.prepare(rendering, 12, _config())
    _, data = messages.personalize(skeleton, _recipient(name='田中 & "<営業>"'), SECRET)
    plain, markup = email.message_from_bytes(data, policy=email.policy.default).iter_parts()
    assert plain.get_content().startswith('田中 & "<営業>" 様')
    assert "<p>田中 &amp; &quot;&lt;営業&gt;&quot; 様</p>" in markup.get_content()
    assert _decoded(_raw_headers(data)["to"][0]) == '田中 & "<営業>" <taro@example.com>'


def test_each_recipient_gets_only_their_own_address_links_and_id(rendering):
    skeleton = messages.prepare(rendering, 12, _config())
    one = messages.personalize(skeleton, _recipient(), SECRET)[1]
    other = messages.personalize(
        skeleton, _recipient(42, 8, email="hanako@example.org", name="", message_id="<b@example.jp>"), SECRET
    )[1]
    parsed = email.message_from_bytes(other, policy=email.policy.default)
    assert parsed["To"] == "hanako@example.org"
    assert parsed["Message-ID"] == "<b@example.jp>"
    assert b"taro@example.com" not in other and b"hanako@example.org" not in one
    assert "taro@example.com" not in parsed.get_body(("plain",)).get_content()
    unsubscribe = re.search(r"/u/([\w.-]+)>", parsed["List-Unsubscribe"]).group(1)
    assert _names_row("unsubscribe", unsubscribe, 8, "key-of-row-8")


def test_a_retry_reuses_the_message_id_fixed_at_enqueue(rendering):
    config = _config()
    message_id = addresses.make_message_id(config)
    assert re.fullmatch(r"<mm\.[0-9a-f]{24}@example\.jp>", message_id)
    assert addresses.make_message_id(config) != message_id
    skeleton = messages.prepare(rendering, 12, config)
    recipient = _recipient(message_id=message_id)
    attempts = [messages.personalize(skeleton, recipient, SECRET)[1] for _ in range(2)]
    assert {email.message_from_bytes(a)["Message-ID"] for a in attempts} == {message_id}


def test_envelope_sender_is_verp_and_bounces_to_it_name_the_delivery(sent):
    envelope_from, _, _ = sent
    config = _config()
    assert re.fullmatch(r"bounces\+41-[0-9a-f]{10}@example\.jp", envelope_from)
    assert addresses.verp("bounces", "example.jp", SECRET, 41) == envelope_from
    assert addresses.parse_verp(config, SECRET, envelope_from) == 41
    assert addresses.parse_verp(config, SECRET, f"<{envelope_from.upper()}>") == 41
    assert addresses.parse_verp(config, SECRET, "bounces+42-" + envelope_from[11:]) is None  # forged
    assert addresses.parse_verp(config, SECRET, envelope_from.replace("example.jp", "evil.jp")) is None
    assert addresses.parse_verp(config, "another-secret", envelope_from) is None
    assert addresses.parse_verp(config, SECRET, "someone@example.jp") is None


def test_configured_bounce_address_is_the_verp_base(rendering):
    config = _config(bounce_address="return@bounce.example.jp")
    envelope_from, _ = messages.personalize(messages.prepare(rendering, 1, config), _recipient(), SECRET)
    assert envelope_from.startswith("return+41-") and envelope_from.endswith("@bounce.example.jp")
    assert addresses.parse_verp(config, SECRET, envelope_from) == 41


@pytest.mark.parametrize(
    ("recipient", "message"),
    [
        (_recipient(name="山田\r\nBcc: all@example.com"), "To name contains a line break or NUL character"),
        (_recipient(email="taro@example.com\nBcc: x@y"), "To address contains a line break or NUL character"),
        (_recipient(message_id="<a@b>\r\nBcc: x@y"), "is not of the form <id@domain>"),
        (_recipient(message_id="no-brackets@example.jp"), "is not of the form <id@domain>"),
    ],
)
def test_data_with_line_breaks_is_refused_not_sent(rendering, recipient, message):
    skeleton = messages.prepare(rendering, 12, _config())
    with pytest.raises(InvalidInput, match=re.escape(message)):
        messages.personalize(skeleton, recipient, SECRET)


def test_a_subject_with_a_line_break_is_refused_when_the_issue_is_prepared(rendering):
    rendering.subject = "第12号\r\nBcc: everyone@example.com"
    with pytest.raises(InvalidInput, match=r"^Subject contains a line break or NUL character; remove it$"):
        messages.prepare(rendering, 12, _config())


@pytest.mark.parametrize(
    ("sender", "message"),
    [
        ({"list_id": "news example"}, "[sender] list_id 'news example' must be a label such as news.example"),
        ({"feedback_id": "a b"}, "[sender] feedback_id must be ASCII without spaces"),
        ({"from_": "news"}, "[sender] from 'news' is not an address like news@example.jp"),
        ({"bounce_address": "x"}, "[sender] bounce_address 'x' must look like bounces@example.jp"),
    ],
)
def test_bad_sender_settings_are_named(rendering, sender, message):
    config = Config(mailmag=GeneralConfig(base_url=BASE_URL), sender=SenderConfig(**sender))
    with pytest.raises(ConfigError, match=re.escape(message)):
        messages.prepare(rendering, 12, config)


# --- DKIM ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def dkim_config(rsa_key, tmp_path: Path) -> Config:
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    (tmp_path / "dkim.pem").write_bytes(pem)
    return _config().replace(dkim=DkimConfig(selector="mm2026", private_key_file=str(tmp_path / "dkim.pem")))


@pytest.fixture
def dns(rsa_key):  # type: ignore[no-untyped-def]
    """A DNS TXT lookup answering only mm2026._domainkey.example.jp, as a zone would."""
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"mm2026._domainkey.example.jp." else None

    return lookup


def _signature_tags(data: bytes) -> dict[str, str]:
    value = _raw_headers(data)["dkim-signature"][0].decode()
    value = re.sub(r"\s+", "", value)
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def test_dkim_signature_verifies_and_covers_the_one_click_headers(rendering, dkim_config, dns):
    skeleton = messages.prepare(rendering, 12, dkim_config, dkim=load_dkim(dkim_config))
    _, data = messages.personalize(skeleton, _recipient(), SECRET)
    assert data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(data, dnsfunc=dns)
    tags = _signature_tags(data)
    assert tags["d"] == "example.jp" and tags["s"] == "mm2026"
    signed = tags["h"].split(":")
    for name in ("from", "to", "subject", "date", "message-id", "list-id", "list-unsubscribe",
                 "list-unsubscribe-post"):
        assert name in signed


def test_dkim_fails_once_list_unsubscribe_is_tampered_with(rendering, dkim_config, dns):
    skeleton = messages.prepare(rendering, 12, dkim_config, dkim=load_dkim(dkim_config))
    _, data = messages.personalize(skeleton, _recipient(), SECRET)
    tampered = re.sub(rb"(List-Unsubscribe:\s+<https://)news\.example\.jp", rb"\1evil.example", data)
    assert tampered != data
    assert not dkim.verify(tampered, dnsfunc=dns)
    added = data.replace(b"\r\nFrom: ", b"\r\nList-Unsubscribe: <https://evil.example/u/x>\r\nFrom: ", 1)
    assert not dkim.verify(added, dnsfunc=dns)  # over-signed: a second header breaks it too


def test_dkim_also_signs_one_off_mail(dkim_config, dns):
    data = messages.build_simple(
        dkim_config, "taro@example.com", "山田 太郎", "【確認】メールマガジン登録", "本文です。\n",
        dkim=load_dkim(dkim_config),
    )
    assert dkim.verify(data, dnsfunc=dns)


def test_no_dkim_section_means_unsigned(rendering):
    assert load_dkim(_config()) is None
    _, data = messages.personalize(messages.prepare(rendering, 12, _config()), _recipient(), SECRET)
    assert b"DKIM-Signature" not in data


def test_dkim_key_with_crlf_line_ends_still_loads(dkim_config, dns):
    path = Path(dkim_config.dkim.private_key_file)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    key = load_dkim(dkim_config)
    data = messages.build_simple(dkim_config, "t@example.com", "", "test", "x", dkim=key)
    assert dkim.verify(data, dnsfunc=dns)


def test_dkim_configuration_errors_name_the_fix(dkim_config, tmp_path):
    half = dkim_config.replace(dkim=DkimConfig(selector="mm2026"))
    with pytest.raises(ConfigError, match=r"^\[dkim\] needs both selector and private_key_file"):
        load_dkim(half)
    missing = dkim_config.replace(dkim=DkimConfig("mm2026", str(tmp_path / "nope.pem")))
    with pytest.raises(ConfigError, match=r"^cannot read \[dkim\] private_key_file .*nope\.pem: No such"):
        load_dkim(missing)
    (tmp_path / "junk.pem").write_text("not a key")
    junk = dkim_config.replace(dkim=DkimConfig("mm2026", str(tmp_path / "junk.pem")))
    with pytest.raises(ConfigError, match=r"junk\.pem is not a PEM RSA private key \(make one with dkn"):
        load_dkim(junk)


# --- one-off mail ----------------------------------------------------------------------

def test_confirmation_mail_is_single_part_base64_with_the_same_headers():
    data = messages.build_simple(
        _config(), "taro@example.com", "山田 太郎", "【確認】メールマガジン登録のご確認",
        "以下のリンクを開いて登録を完了してください。\nhttps://news.example.jp/confirm/abc\n",
        message_id="<c1@example.jp>",
    )
    message = email.message_from_bytes(data, policy=email.policy.default)
    raw = _raw_headers(data)
    assert _decoded(raw["subject"][0]) == "【確認】メールマガジン登録のご確認"
    assert _decoded(raw["to"][0]) == "山田 太郎 <taro@example.com>"
    assert message["Message-ID"] == "<c1@example.jp>"
    assert message.get_content_type() == "text/plain" and message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "base64"
    assert message.get_content() == (
        "以下のリンクを開いて登録を完了してください。\r\nhttps://news.example.jp/confirm/abc\r\n"
    )
    assert all(len(line) <= 76 for line in data.split(b"\r\n"))
    assert "list-unsubscribe" not in raw


def test_test_send_with_html_and_extra_headers():
    data = messages.build_simple(
        _config(), "taro@example.com", "", "[テスト] 第12号", "本文", html="<p>本文</p>",
        headers={"X-Mailmag-Test": "第12号の試し送信", "List-Unsubscribe": "<https://news.example.jp/u/x>"},
    )
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message.get_body(("html",)).get_content() == "<p>本文</p>"
    assert _decoded(_raw_headers(data)["x-mailmag-test"][0]) == "第12号の試し送信"
    assert message["List-Unsubscribe"] == "<https://news.example.jp/u/x>"
    with pytest.raises(ValueError, match="header name 'Subject' is not allowed here"):
        messages.build_simple(_config(), "t@example.com", "", "s", "b", headers={"Subject": "x"})
    with pytest.raises(InvalidInput, match=r"^X-A contains a line break or NUL character"):
        messages.build_simple(_config(), "t@example.com", "", "s", "b", headers={"X-A": "a\r\nBcc: b@c"})


# --- benchmark (not a test) ------------------------------------------------------------

def benchmark(count: int = 3000, dkim_key: Path | None = None) -> float:
    """personalize() µs per message on a ~30 KB Japanese issue (text ~28 KB + HTML ~31 KB)."""
    article = REFERENCE
    rendering = _rendering((article.read_text(encoding="utf-8") * 5)[:10000])
    config = _config()
    if dkim_key:
        config = config.replace(dkim=DkimConfig("mm2026", str(dkim_key)))
    skeleton = messages.prepare(rendering, 12, config, dkim=load_dkim(config))
    recipients = [_recipient(i, i, email=f"user{i}@example.com") for i in range(count)]
    start = time.perf_counter()
    for recipient in recipients:
        messages.personalize(skeleton, recipient, SECRET)
    return (time.perf_counter() - start) / count * 1e6


if __name__ == "__main__":
    import sys

    key = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    print(f"personalize: {benchmark(300 if key else 3000, key):.0f} µs/message{' with DKIM' if key else ''}")


def test_unsubscribe_mailto_written_as_a_link_is_read_the_same_by_mail_and_bounces():
    """'mailto:u@x?subject=…' in the configuration must neither break sending nor bounce matching."""
    from mailmag import addresses as m
    from mailmag.config import Config, SenderConfig

    config = Config(sender=SenderConfig(unsubscribe_mailto="mailto:Stop@Example.JP?subject=unsubscribe"))
    assert m.unsubscribe_address(config) == "Stop@example.jp"  # the one address rule lower-cases domains
    config = Config(sender=SenderConfig(from_="news@example.jp"))
    assert m.unsubscribe_address(config) == "unsubscribe@example.jp"
