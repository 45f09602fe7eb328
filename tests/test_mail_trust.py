"""What a strict receiver checks: DKIM a replay cannot extend, one-click only over https,
List-Unsubscribe that survives re-serialization, Reply-To, and the EHLO name the relay sees."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from pathlib import Path

import dkim
import pytest
from conftest import SECRET
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailmag import links, text_ja, tokens
from mailmag.config import Config, DkimConfig, GeneralConfig, SenderConfig, SmtpConfig
from mailmag.delivery import messages, smtp
from mailmag.delivery.dkim import load_dkim
from mailmag.delivery.transports import make_transport
from mailmag.errors import ConfigError
from mailmag.models import Rendering, utcnow

ROUND_TRIP = email.policy.default.clone(linesep="\r\n")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def dns(rsa_key):  # type: ignore[no-untyped-def]
    public = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    return lambda name, timeout=5: record if name == b"mm2026._domainkey.example.jp." else None


@pytest.fixture
def key_file(rsa_key, tmp_path: Path) -> str:
    path = tmp_path / "dkim.pem"
    path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


def _config(key_file: str | None = None, base_url: str = "https://news.example.jp", **sender) -> Config:
    config = Config(mailmag=GeneralConfig(base_url=base_url), sender=SenderConfig(**sender),
                    secret_key=SECRET)
    if key_file:
        config = config.replace(dkim=DkimConfig(selector="mm2026", private_key_file=key_file))
    return config


RENDERING = Rendering(lang="ja", subject="【第1号】お知らせ",
                      text="__MM_NAME__ 様\n本文です。\n配信停止: __MM_UNSUBSCRIBE_URL__\n",
                      html="<p>__MM_NAME__ 様</p><p>本文です。</p>")


def _mail(config: Config, email_: str = "taro@example.com") -> bytes:
    skeleton = messages.prepare(RENDERING, 1, config, dkim=load_dkim(config))
    recipient = messages.Recipient(41, 7, email_, "山田 太郎", "<mm.1.7.beef@example.jp>")
    return messages.personalize(skeleton, recipient, SECRET)[1]


def _head(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def _tags(data: bytes) -> dict[str, str]:
    value = re.search(rb"^DKIM-Signature: (.*?)\r\n(?! )", data, re.S | re.M).group(1).decode()
    return dict(t.split("=", 1) for t in re.sub(r"\s+", "", value).split(";") if t)


# --- DKIM ------------------------------------------------------------------------------------

REPLAYED = [
    b"Reply-To: attacker@evil.example",
    b"Cc: victim@example.org",
    b"To: second@evil.example",
    b'Content-Type: text/html; charset="utf-8"',
    b"From: someone@evil.example",
    b"Subject: =?UTF-8?B?5b2T6YG4?=",
    b"List-Unsubscribe: <https://evil.example/u/x>",
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    b"Sender: evil@evil.example",
    b"Message-ID: <replay@evil.example>",
    b"Date: Tue, 01 Dec 2026 09:00:00 +0900",
    b"Content-Transfer-Encoding: 8bit",
]


@pytest.mark.parametrize("where", ["top", "bottom"])
@pytest.mark.parametrize("added", REPLAYED, ids=lambda h: h.split(b":")[0].decode())
def test_each_header_a_replay_would_add_breaks_the_signature(key_file, dns, added, where):
    data = _mail(_config(key_file))
    assert dkim.verify(data, dnsfunc=dns)
    head, body = data.split(b"\r\n\r\n", 1)
    replayed = (added + b"\r\n" + head if where == "top" else head + b"\r\n" + added) + b"\r\n\r\n" + body
    assert not dkim.verify(replayed, dnsfunc=dns)


def test_relaxed_canonicalization_survives_what_relays_do_to_whitespace(key_file, dns):
    data = _mail(_config(key_file))
    assert _tags(data)["c"] == "relaxed/relaxed"
    head, body = data.split(b"\r\n\r\n", 1)
    respaced = head.replace(b"Precedence: bulk", b"Precedence:   bulk\t") + b"\r\n\r\n" + \
        body.replace(b"\r\n", b"  \r\n", 3) + b"\r\n\r\n"  # trailing spaces, blank lines at the end
    assert dkim.verify(respaced, dnsfunc=dns)
    assert not dkim.verify(data.replace(b"\r\n--=_mailmag", b"\r\nX\r\n--=_mailmag", 1), dnsfunc=dns)


def test_h_lists_every_header_once_more_than_the_message_holds_it(key_file):
    data = _mail(_config(key_file, reply_to="office@example.jp"))
    signed = _tags(data)["h"].split(":")
    names = [line.split(b":")[0].decode().lower() for line in _head(data).split(b"\r\n")
             if line[:1] not in (b" ", b"\t")]
    for name in ("from", "reply-to", "to", "subject", "content-type", "list-unsubscribe",
                 "list-unsubscribe-post", "cc", "sender"):
        assert signed.count(name) == names.count(name) + 1, name


# --- one-click and List-Unsubscribe ----------------------------------------------------------


def test_one_click_is_offered_only_with_an_https_unsubscribe_url():
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in _mail(_config())
    plain = _mail(_config(base_url="http://news.example.jp"))
    assert b"List-Unsubscribe-Post" not in plain
    assert b"\r\nList-Unsubscribe: <http://news.example.jp/u/" in plain


def test_issues_send_says_why_an_http_base_url_gets_no_one_click(mailmag, config_file):
    config_file.write_text(config_file.read_text().replace("https://news.example.jp", "http://news.example.jp"))
    mailmag.ok("subscribers", "add", "a@example.jp")
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "お知らせ", "--body", "本文")
    mailmag.ok("items", "approve", "1")
    mailmag.ok("issues", "new")
    result = mailmag.ok("issues", "send", "1", "--yes")
    assert "note: [mailmag] base_url http://news.example.jp is not https, so the mail carries no " \
           "one-click unsubscribe header (RFC 8058 requires https" in result.stderr
    assert "1 messages queued" in result.stdout or "1 message queued" in result.stdout


BIG_ID = 1234567  # a 7-digit subscriber id: the longest a typical list reaches


def _real_mail(config: Config) -> bytes:
    """A message personalized with the real link maker, for subscriber BIG_ID."""
    skeleton = messages.prepare(RENDERING, 1, config, dkim=load_dkim(config))
    recipient = messages.Recipient(41, BIG_ID, "taro@example.com", "山田 太郎",
                                   "<mm.1.7.beef@example.jp>", link_key="k" * 32)
    return messages.personalize(skeleton, recipient, SECRET)[1]


def test_list_unsubscribe_is_folded_between_uris_within_78_columns():
    data = _real_mail(_config())
    tag = tokens.unsubscribe_tag(SECRET, BIG_ID, "k" * 32)
    url = links.unsubscribe_url("https://news.example.jp", SECRET, BIG_ID, "k" * 32)
    mailto = f"<mailto:unsubscribe@example.jp?subject=unsubscribe%20{tag}>"
    assert f"\r\nList-Unsubscribe: <{url}>,\r\n {mailto}\r\n" in data.decode()
    assert max(len(line) for line in _head(data).split(b"\r\n")) <= 78


def test_a_policy_default_round_trip_keeps_the_link_and_the_signature(key_file, dns):
    """Every line within 78: email.policy.default passes the message on byte for byte.

    (A longer line is refolded, and an https URL that does not fit in 78 columns is turned
    into encoded-words: the link and the signature break. See list_unsubscribe.)
    """
    data = _real_mail(_config(key_file))
    assert max(len(line) for line in _head(data).split(b"\r\n")) <= 78
    parsed = email.message_from_bytes(data, policy=ROUND_TRIP)
    again = parsed.as_bytes(policy=ROUND_TRIP)
    assert again == data
    assert dkim.verify(again, dnsfunc=dns)
    reparsed = email.message_from_bytes(again, policy=email.policy.default)
    url, mailto = re.findall(r"<([^>]+)>", str(reparsed["List-Unsubscribe"]))
    link = tokens.read_person(SECRET, "unsubscribe", url.removeprefix("https://news.example.jp/u/"))
    assert link.subscriber_id == BIG_ID and link.fits("k" * 32, utcnow())
    subject = mailto.removeprefix("mailto:unsubscribe@example.jp?subject=unsubscribe%20")
    assert tokens.unsubscribe_tag_fits(SECRET, subject, BIG_ID, "k" * 32)


def test_a_url_too_long_for_78_columns_is_never_split():
    data = _mail(_config())
    match = re.search(rb"\r\nList-Unsubscribe: <(https://[^>\s]+)>,\r\n <mailto:[^>]+>\r\n", data)
    assert match and match.group(1).startswith(b"https://news.example.jp/u/")


# --- Reply-To ----------------------------------------------------------------------------------


def test_reply_to_goes_into_issue_mail_and_one_off_mail(key_file, dns):
    config = _config(key_file, reply_to="office@example.jp")
    data = _mail(config)
    assert b"\r\nReply-To: office@example.jp\r\n" in data and dkim.verify(data, dnsfunc=dns)
    simple = messages.build_simple(config, "t@example.com", "", "件名", "本文\n",
                                   dkim=load_dkim(config))
    assert b"\r\nReply-To: office@example.jp\r\n" in simple and dkim.verify(simple, dnsfunc=dns)
    assert b"Reply-To" not in _mail(_config())


def test_a_bad_reply_to_is_named():
    with pytest.raises(ConfigError, match=r"^\[sender\] reply_to 'office at example' must be an address"):
        _mail(_config(reply_to="office at example"))


# --- EHLO ---------------------------------------------------------------------------------------


def _send_one(config: Config) -> None:
    connection = make_transport(config).connect()
    try:
        connection.send("bounces@example.jp", "a@example.jp", b"Subject: x\r\n\r\nbody\r\n")
    finally:
        connection.close()


def test_the_relay_sees_the_configured_helo_name(smtp_server):
    _send_one(_config().replace(smtp=smtp_server.smtp_config(helo_name="mail.example.jp")))
    assert [m.helo for m in smtp_server.messages] == ["mail.example.jp"]


def test_a_machine_called_localhost_helos_as_the_from_domain(smtp_server, monkeypatch):
    monkeypatch.setattr(smtp.socket, "getfqdn", lambda *a: "localhost")
    _send_one(_config(from_="news@council.example.jp").replace(smtp=smtp_server.smtp_config()))
    assert [m.helo for m in smtp_server.messages] == ["council.example.jp"]


def test_a_machine_with_a_real_name_helos_as_itself(smtp_server, monkeypatch):
    monkeypatch.setattr(smtp.socket, "getfqdn", lambda *a: "mx1.council.example.jp")
    _send_one(_config().replace(smtp=smtp_server.smtp_config()))
    assert [m.helo for m in smtp_server.messages] == ["mx1.council.example.jp"]


def test_a_helo_name_that_is_no_host_name_is_refused():
    with pytest.raises(ConfigError, match=r"^\[smtp\] helo_name 'mail host' must be a host name"):
        make_transport(_config().replace(smtp=SmtpConfig(transport="smtp", helo_name="mail host")))


# --- characters that render poorly ------------------------------------------------------------


@pytest.mark.parametrize(("written", "suggested"), [
    ("①", "1"), ("⑳", "20"), ("⑴", "(1)"), ("㈱", "(株)"), ("㊤", "上"), ("㌔", "キロ"), ("㍻", "平成"),
    ("Ⅲ", "III"), ("№", "No"), ("℡", "TEL"), ("ｶﾞｲﾄﾞ", "ガイド"), ("ﾊﾟﾝﾌ", "パンフ"), ("㎡", "m²"),
])
def test_poorly_rendered_characters_get_the_form_to_use_instead(written, suggested):
    assert text_ja.poor_characters(f"会場{written}です") == [(written, suggested)]
    assert text_ja.suggest_display(f"会場{written}です") == f"会場{suggested}です"


def test_what_renders_well_is_left_alone():
    assert text_ja.poor_characters("全角ＡＢＣ１２３ カタカナ ひらがな 漢字 ※→「」（）〜 ~ m² 5,000円") == []


def test_compose_warns_about_them_and_offers_the_normalized_form(mailmag):
    """helper-70: the warning said "normalized: 「…」", and the mail went with the text as written."""
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("items", "submit", "--org", "cef", "--kind", "event", "--title", "①㈱テスト説明会",
               "--date", "2030-09-10", "--venue", "ｶﾝﾌｧﾚﾝｽﾙｰﾑ", "--body", "広さは100㎡、会場まで1㌔です。")
    mailmag.ok("items", "approve", "1")
    result = mailmag.ok("issues", "new")
    warnings = [line for line in result.stderr.splitlines() if "show poorly" in line]
    assert warnings == [
        "warning: item 1 「①㈱テスト説明会」: the title has characters some mail clients show poorly "
        "(① → 1, ㈱ → (株)); suggested: 「1(株)テスト説明会」 (it goes as written until the item is edited)",
        "warning: item 1 「①㈱テスト説明会」: the venue has characters some mail clients show poorly "
        "(ｶﾝﾌｧﾚﾝｽﾙｰﾑ → カンファレンスルーム); suggested: 「カンファレンスルーム」 "
        "(it goes as written until the item is edited)",
        "warning: item 1 「①㈱テスト説明会」: the body has characters some mail clients show poorly "
        "(㎡ → m², ㌔ → キロ)",
    ]
