"""DKIM signatures (RFC 6376): rsa-sha256, relaxed/relaxed canonicalization, over-signing.

dkimpy signs in pure Python (its RSA is Python integer arithmetic, ~7.6 ms a message with a
2048-bit key: a worker could sign barely 130 messages a second). Here OpenSSL does the RSA
through `cryptography`, and the rest is a few byte operations. dkimpy remains the verifier in
the tests, so the two implementations check each other.

Relaxed body canonicalization survives what relays do to bodies (trailing spaces dropped,
runs of spaces collapsed); mailmag's bodies are base64, so it costs nothing in strength.
Signing is the last step of building a message: nothing may touch the bytes afterwards.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from mailmag import clock
from mailmag.addresses import sender_domain
from mailmag.config import Config
from mailmag.errors import ConfigError

_WSP = re.compile(rb"[ \t]+")
_FOLD_AT = 76  # the signature header is folded so no line passes RFC 5322's 78
_PKCS1, _PREHASHED = padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())  # stateless: made once


class InvalidKey(ValueError):
    """The PEM text is not an unencrypted RSA private key."""


@dataclasses.dataclass(frozen=True)
class DkimKey:
    """[dkim]'s key, read and parsed once (load_dkim), used for every message."""

    selector: bytes
    domain: bytes
    private_key: bytes  # the PEM text, as read
    rsa: RSAPrivateKey = dataclasses.field(compare=False, repr=False)  # parsed once, used for every message


def load_dkim(config: Config) -> DkimKey | None:
    """The DKIM key, read once; None when [dkim] is empty, ConfigError when it is half set or bad."""
    selector, path = config.dkim.selector, config.dkim.private_key_file
    where = f"[dkim] private_key_file {path}"
    if not selector and not path:
        return None
    if not selector or not path:
        raise ConfigError("[dkim] needs both selector and private_key_file (or neither, to not sign)")
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", selector):
        raise ConfigError(f"[dkim] selector {selector!r} must be a DNS label such as mailmag2026")
    try:
        pem = Path(path).read_bytes().replace(b"\r\n", b"\n")  # a PEM saved on Windows loads too
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from exc
    try:
        key = load_private_key(pem)
    except InvalidKey as exc:
        raise ConfigError(f"{where} is not a PEM RSA private key (make one with dknewkey)") from exc
    return DkimKey(selector.encode(), sender_domain(config).encode(), pem, key)


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (PKCS#1 "RSA PRIVATE KEY" or PKCS#8); InvalidKey otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidKey(str(exc)) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidKey("not an RSA key")
    return key


def sign(
    message: bytes | bytearray | memoryview, selector: bytes, domain: bytes, key: rsa.RSAPrivateKey,
    include_headers: Sequence[bytes], *, timestamp: int | None = None,
) -> bytes:
    """The DKIM-Signature header line (folded, CRLF-terminated) to put in front of `message`.

    `message` has CRLF line ends. `include_headers` are lower-case names in the order they are
    signed; a name listed more often than the header occurs is over-signed (RFC 6376 §5.4.2):
    a relay that adds one more such header breaks the signature.
    """
    # Header fields are remembered by value (_relaxed), so they must be hashable: a bytearray or
    # a memoryview is copied to bytes once (bytes(b) of a bytes object is that object, no copy).
    message = bytes(message)
    head, separator, body = message.partition(b"\r\n\r\n")
    if not separator:
        head, body = message.removesuffix(b"\r\n"), b""
    body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest())
    include_headers = tuple(include_headers)
    fixed, folded = _fixed_tags(domain, selector, include_headers)
    tail = b"t=%d; bh=%s; b=" % (timestamp if timestamp is not None else clock.timestamp(), body_hash)
    digest = hashlib.sha256()
    for name, raw in _select(_fields(head), include_headers):
        digest.update(_relaxed(name, raw) + b"\r\n")
    digest.update(_relaxed(b"DKIM-Signature", fixed + b"; " + tail))  # itself last, b= empty, no CRLF
    signature = base64.b64encode(key.sign(digest.digest(), _PKCS1, _PREHASHED))
    # The tail starts a line of its own (CRLF before the space after the fixed tags' ';', which
    # relaxed canonicalization undoes), so only the signature is folded per message.
    room = _FOLD_AT - 1 - len(tail)
    lines = [folded + b";", b" " + tail + signature[:room]]
    lines += [b" " + signature[i : i + _FOLD_AT - 1] for i in range(room, len(signature), _FOLD_AT - 1)]
    return b"\r\n".join(lines) + b"\r\n"


@functools.lru_cache(maxsize=16)
def _fixed_tags(domain: bytes, selector: bytes, include_headers: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """The tags every message signed with this key and header list shares, as hashed and as folded
    (with no CRLF at the end): folded once per issue, not once per message (~20 µs each)."""
    value = b"; ".join((b"v=1", b"a=rsa-sha256", b"c=relaxed/relaxed", b"d=" + domain, b"q=dns/txt",
                        b"s=" + selector, b"h=" + b" : ".join(include_headers)))
    return value, _fold(b"DKIM-Signature: " + value, b"").removesuffix(b"\r\n")


_LINE_END_WSP = re.compile(rb"[ \t]+\r\n")


def _relaxed_body(body: bytes) -> bytes:
    """'relaxed' (§3.4.4): whitespace runs as one space, none at line ends, no empty lines at the end."""
    if not body:
        return b""
    body = body if body.endswith(b"\r\n") else body + b"\r\n"
    if _may_change(body):
        body = _LINE_END_WSP.sub(b"\r\n", _WSP.sub(b" ", body))
    elif len(body) > 2 and body[-3] not in b"\r\n":
        return body  # one CRLF at the end already (mailmag's own bodies): 63 KB not copied twice more
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def _may_change(body: bytes) -> bool:
    """False when relaxing cannot change `body`: no tab, and every space is followed by neither a
    space nor a line end. mailmag's bodies (base64, and the parts' headers with a few single spaces)
    are such; the two regular-expression passes over them cost ~1.5 ms on 63 KB, more than the RSA
    signature, while single-byte searches (memchr) take a few µs."""
    if b"\t" in body:
        return True
    at = body.find(b" ")
    for _ in range(64):  # more spaces than that: text, which the passes handle
        if at < 0:
            return False
        if body[at + 1 : at + 2] in (b" ", b"\r"):
            return True
        at = body.find(b" ", at + 1)
    return True


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, raw value with its folding) for each header field, in order."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + b"\r\n" + line)
        else:
            name, _, raw = line.partition(b":")
            fields.append((name, raw))
    return fields


def _select(fields: list[tuple[bytes, bytes]], include: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    """For each listed name, the last occurrence not yet used, searching upwards (§5.4.2)."""
    return [fields[i] for i in _selection(tuple([name for name, _raw in fields]), include)]


@functools.lru_cache(maxsize=64)
def _selection(names: tuple[bytes, ...], include: tuple[bytes, ...]) -> tuple[int, ...]:
    """_select's choice as positions in a header of these field names: every message of an issue
    has the same names in the same order, so the choice is made once, not once a message."""
    unused: dict[bytes, list[int]] = {}  # each name's fields, top to bottom: the last is used first
    for i, name in enumerate(names):
        unused.setdefault(name.rstrip().lower(), []).append(i)
    chosen = []
    for name in include:  # over-signed names (more than occur) find none: a dict miss, not a scan
        found = unused.get(name)
        if found:
            chosen.append(found.pop())
    return tuple(chosen)


@functools.lru_cache(maxsize=256)
def _relaxed(name: bytes, raw: bytes) -> bytes:
    """'relaxed' header canonicalization: name lower-cased, value unfolded, whitespace runs as one space.

    Remembered: an issue's constant fields (From, Subject, List-Id …) come back with every message.
    """
    value = raw.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:  # else no run to collapse (the usual case): no regex pass
        value = _WSP.sub(b" ", value)
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" ")


def _fold(header: bytes, signature: bytes) -> bytes:
    """Fold at the spaces between tags and inside b= (where whitespace is ignored) to short lines.

    Folding puts CRLF before an existing space, so relaxed canonicalization undoes it exactly.
    """
    lines: list[bytes] = []
    words: list[bytes] = []  # of the line being filled, which is `width` long joined
    width = 0
    for word in header.split(b" "):
        if width and width + 1 + len(word) > _FOLD_AT:
            lines.append(b" ".join(words))
            words, width = [b""], 0  # a continuation line starts with the space it folds at
        width += len(word) + (1 if words else 0)
        words.append(word)
    lines.append(b" ".join(words))
    room = max(_FOLD_AT - len(lines[-1]), 0)
    lines[-1] += signature[:room]
    lines += [b" " + signature[i : i + _FOLD_AT - 1] for i in range(room, len(signature), _FOLD_AT - 1)]
    return b"\r\n".join(lines) + b"\r\n"
