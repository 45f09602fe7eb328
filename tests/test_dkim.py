"""mailmag's DKIM signer, checked by dkimpy as the receiving side would verify it."""

from __future__ import annotations

import base64

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mailmag.delivery import dkim

SIGNED = (b"from", b"to", b"subject", b"date", b"list-unsubscribe", b"from", b"list-unsubscribe")

MESSAGE = (
    b"From: =?UTF-8?B?5LqL5YuZ5bGA?= <news@example.jp>\r\n"
    b"To:   taro@example.com  \r\n"
    b"Subject: =?UTF-8?B?44CQ56ysMTLlj7fjgJE=?=\r\n =?UTF-8?B?44GK55+l44KJ44Gb?=\r\n"
    b"Date: Tue, 01 Dec 2026 09:00:00 +0900\r\n"
    b"List-Unsubscribe: <https://news.example.jp/u/abc>,\r\n\t<mailto:unsubscribe@example.jp>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=\"utf-8\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"5pys5paH44Gn44GZ44CC\r\n"
    b"\r\n\r\n"
)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def dns(key):  # type: ignore[no-untyped-def]
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    return lambda name, timeout=5: record if name == b"mm2026._domainkey.example.jp." else None


def signed(message: bytes, key: rsa.RSAPrivateKey, headers=SIGNED) -> bytes:  # type: ignore[no-untyped-def]
    return dkim.sign(message, b"mm2026", b"example.jp", key, headers) + message


def test_a_receiver_verifies_folded_and_oddly_spaced_headers_and_trailing_blank_lines(key, dns):
    data = signed(MESSAGE, key)
    assert dkimpy.verify(data, dnsfunc=dns)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))


def test_a_message_in_a_bytearray_or_memoryview_is_signed_as_the_same_bytes(key, dns):
    """What a caller may hold a message in (a buffer being filled, a view of one)."""
    made = [dkim.sign(form, b"mm2026", b"example.jp", key, SIGNED, timestamp=1)
            for form in (MESSAGE, bytearray(MESSAGE), memoryview(MESSAGE))]
    assert made[1] == made[2] == made[0]  # PKCS#1 v1.5: the same bytes sign the same
    assert dkimpy.verify(made[1] + MESSAGE, dnsfunc=dns)


def test_changing_the_body_or_a_signed_header_breaks_the_signature(key, dns):
    data = signed(MESSAGE, key)
    assert not dkimpy.verify(data.replace(b"5pys5paH44Gn44GZ44CC", b"5pys5paH44Gn44GZ44CD"), dnsfunc=dns)
    assert not dkimpy.verify(data.replace(b"taro@example.com", b"jiro@example.com"), dnsfunc=dns)


def test_whitespace_a_relay_may_change_in_headers_does_not(key, dns):
    data = signed(MESSAGE, key)
    refolded = data.replace(b"To:   taro@example.com  \r\n", b"To: taro@example.com\r\n")
    assert dkimpy.verify(refolded, dnsfunc=dns)


def test_over_signed_headers_refuse_a_second_copy(key, dns):
    data = signed(MESSAGE, key)
    added = data.replace(b"\r\nMIME-Version", b"\r\nList-Unsubscribe: <https://evil.example/u/x>\r\nMIME-Version")
    assert not dkimpy.verify(added, dnsfunc=dns)


def test_a_listed_header_the_message_lacks_cannot_be_added_later(key, dns):
    data = signed(MESSAGE, key, headers=(b"from", b"to", b"subject", b"list-unsubscribe-post"))
    assert dkimpy.verify(data, dnsfunc=dns)
    one_click = b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click"
    added = data.replace(b"\r\nMIME-Version", one_click + b"\r\nMIME-Version")
    assert not dkimpy.verify(added, dnsfunc=dns)


def test_a_message_without_a_body_is_signed_too(key, dns):
    message = b"From: news@example.jp\r\nTo: taro@example.com\r\nSubject: x\r\n"
    assert dkimpy.verify(signed(message, key, (b"from", b"to", b"subject")), dnsfunc=dns)


def test_pkcs8_and_pkcs1_pem_load_and_other_keys_are_refused(key):
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        assert dkim.load_private_key(pem).private_numbers() == key.private_numbers()
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret"))
    for bad in (b"not a key", ec_pem, encrypted):
        with pytest.raises(dkim.InvalidKey):
            dkim.load_private_key(bad)


def test_a_plain_text_body_with_spaces_survives_what_relays_do_to_whitespace(key, dns):
    """Relaxed body canonicalization: runs of spaces and tabs, and trailing ones, do not count."""
    head = MESSAGE.split(b"\r\n\r\n", 1)[0].replace(b"base64", b"8bit")
    data = signed(head + b"\r\n\r\nfirst  line \t\r\n\tsecond line\r\n\r\n", key)
    assert dkimpy.verify(data, dnsfunc=dns)
    relayed = data.replace(b"first  line \t\r\n\tsecond", b"first line\r\n second")
    assert dkimpy.verify(relayed, dnsfunc=dns)
    assert not dkimpy.verify(data.replace(b"first  line", b"firstline"), dnsfunc=dns)


@pytest.mark.parametrize("body", [b"a b\r\n", b"a  b\r\n", b"a \r\nb\r\n", b"a\tb\r\n", b"a b \r\n",
                                  b"a b" * 100 + b"\r\n", b"QUJD\r\n\r\n\r\n", b"a b c\r\n \r\n"])
def test_the_shortcut_for_bodies_without_runs_of_whitespace_changes_nothing(body):
    from mailmag.delivery.dkim import _LINE_END_WSP, _WSP

    relaxed = _LINE_END_WSP.sub(b"\r\n", _WSP.sub(b" ", body)).rstrip(b"\r\n") + b"\r\n"
    assert dkim._relaxed_body(body) == relaxed


def test_the_shortcut_for_bodies_relaxing_cannot_change_agrees_with_the_rfc_on_every_short_body():
    """Relaxed body canonicalization skips bodies it cannot change; for each body of up to five
    pieces it must give what RFC 6376 §3.4.4's rules give, or the body hash (bh=) is wrong."""
    import itertools
    import re

    def by_the_rules(body: bytes) -> bytes:
        if not body:
            return b""
        body = body if body.endswith(b"\r\n") else body + b"\r\n"
        body = re.sub(rb"[ \t]+\r\n", b"\r\n", re.sub(rb"[ \t]+", b" ", body)).rstrip(b"\r\n")
        return body + b"\r\n" if body else b""

    pieces = [b"a", b" ", b"\t", b"\r\n", b"\r", b"\n", b"."]
    bodies = [b"".join(p) for k in range(6) for p in itertools.product(pieces, repeat=k)]
    assert [dkim._relaxed_body(b) for b in bodies] == [by_the_rules(b) for b in bodies]


def test_a_header_that_occurs_twice_is_signed_from_the_bottom_up(key, dns):
    """h= names a field once per occurrence, the last first (RFC 6376 §5.4.2): a receiver checks
    them in that order, so swapping the two, or adding a third, breaks the signature."""
    message = MESSAGE.replace(b"MIME-Version", b"Comments: first\r\nComments: second\r\nMIME-Version")
    data = signed(message, key, (b"from", b"comments", b"comments", b"comments"))
    assert dkimpy.verify(data, dnsfunc=dns)
    assert not dkimpy.verify(data.replace(b"first", b"FIRST").replace(b"second", b"first")
                             .replace(b"FIRST", b"second"), dnsfunc=dns)
    third = data.replace(b"\r\nMIME-Version", b"\r\nComments: third\r\nMIME-Version")
    assert not dkimpy.verify(third, dnsfunc=dns)


def test_the_header_shortcut_agrees_with_the_rule_on_every_short_value():
    """Relaxed header canonicalization skips its regular expression for values without a tab or
    a run of spaces; for every value of up to four pieces it must give what §3.4.2's rule gives."""
    import itertools

    pieces = [b"a", b" ", b"  ", b"\t", b"\r\n ", b"\r\n\t", b" \r\n "]
    for n in range(5):
        for parts in itertools.product(pieces, repeat=n):
            raw = b"".join(parts)
            rule = dkim._WSP.sub(b" ", raw.replace(b"\r\n", b"")).strip(b" ")
            assert dkim._relaxed(b"Subject ", raw) == b"subject:" + rule, raw
