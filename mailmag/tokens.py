"""Every signed token mailmag makes: links in mail, org submission links, VERP addresses.

Tokens are itsdangerous HMAC-SHA256 signatures over IDs only, with one salt per purpose so
a token made for one purpose is foreign to every other. Unsubscribe tokens never expire
(a link in a years-old mail must still work); confirmation tokens do.

A subscriber's id alone is no identity: SQLite hands a deleted row's id to the next row.
So every link made for a subscriber also carries that row's random `link_key`, and a link
acts only on the row whose key it carries (`PersonLink.fits`). `make_person` is the one
place such a token is made, `read_person` the one place it is read.

Unsubscribe and preferences links, which never expire, use a compact form,
`<id>.<key digest>.<signature>` (31 characters for a 7-digit id): the https URL must fit the 78-column
List-Unsubscribe line, or re-serializers such as Python's email.policy.default re-encode it
and break the link and the DKIM signature. Links mailed in itsdangerous form keep working.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from mailmag.errors import TokenError

# Where a token is read: the signing key, or it and the keys it replaced (MAILMAG_PREVIOUS_SECRET_KEYS),
# so that links mailed before the key was changed keep working. Tokens are only ever made with one.
Keys = str | Sequence[str]
_T = TypeVar("_T")

PURPOSES = ("unsubscribe", "preferences", "confirm", "org-submit")
COMPACT = ("unsubscribe", "preferences")  # never expire, so they carry no timestamp
_COMPACT = re.compile(r"(\d{1,18})\.([A-Za-z0-9_-]{8})\.([A-Za-z0-9_-]{14})")


def _serializer(secret: str, purpose: str) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeTimedSerializer(
        secret, salt=f"mailmag/{purpose}", signer_kwargs={"digest_method": hashlib.sha256}
    )


def make(secret: str, purpose: str, payload: Any) -> str:
    """A URL-safe signed token carrying `payload` (IDs only: never an address or a name)."""
    return _serializer(secret, purpose).dumps(payload)


class _Expired(TokenError):
    """Signed with this key, but too old: no other key is tried."""


def _keys(keys: Keys) -> tuple[str, ...]:
    return (keys,) if isinstance(keys, str) else tuple(keys)


def _with_any_key(keys: Keys, read_one: Callable[[str], _T]) -> _T:
    """`read_one` under each key in turn, the current one first: what the first that fits reads."""
    error: TokenError | None = None
    for key in _keys(keys):
        try:
            return read_one(key)
        except _Expired:
            raise
        except TokenError as exc:
            error = error or exc
    raise error or TokenError("this link is not valid", ja="このリンクは正しくありません")


def read(secret: Keys, purpose: str, token: str, max_age: int | None = None) -> Any:
    """The payload of a token made for `purpose`; TokenError if tampered, foreign or expired."""
    return _with_any_key(secret, lambda key: _read(key, purpose, token, max_age))


def _read(secret: str, purpose: str, token: str, max_age: int | None) -> Any:
    try:
        return _serializer(secret, purpose).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise _Expired("this link has expired", ja="このリンクは有効期限が切れています") from exc
    except BadSignature as exc:
        raise TokenError("this link is not valid", ja="このリンクは正しくありません") from exc


@dataclasses.dataclass(frozen=True)
class PersonLink:
    """What a subscriber's link says: whose row it was made for, and when it was signed."""

    subscriber_id: int
    key: str | None  # None: made before links carried keys (migration 0003)
    signed_at: dt.datetime
    extra: dict[str, Any]
    key_digest: str | None = None  # compact links: the digest of the row's key instead of the key

    def fits(self, link_key: str, created_at: dt.datetime) -> bool:
        """Whether this link was made for the row with this key and creation time.

        A link with a key fits only its row. A link from before keys fits only a row that
        already existed when it was signed: a row that took over a deleted row's id was
        created later than any link made for the deleted one. itsdangerous signs whole
        seconds, so "later" means a later second than the row's creation; a keyless link
        signed within that very second (a confirmation mail) is refused to be safe."""
        if self.key_digest is not None:
            return hmac.compare_digest(self.key_digest, _key_digest(link_key))
        if self.key is not None:
            return hmac.compare_digest(self.key, link_key)
        return self.signed_at > created_at

    @property
    def opt_outs(self) -> int:
        """A confirmation link's count of the subscriber's opt-outs when it was mailed (make_confirm)."""
        return int(self.extra.get("o", 0))


def make_person(secret: str, purpose: str, subscriber_id: int, link_key: str, **extra: int) -> str:
    """A signed link token for one subscriber row (its id and key, plus small integers)."""
    if purpose in COMPACT and not extra:
        body = f"{subscriber_id}.{_key_digest(link_key)}"
        return f"{body}.{_compact_signature(secret, purpose, body)}"
    return make(secret, purpose, {"s": subscriber_id, "k": link_key, **extra})


def make_confirm(secret: str, subscriber_id: int, link_key: str, opt_outs: int) -> str:
    """A confirmation link's token: it carries the opt-out count, so a later opt-out voids it."""
    return make_person(secret, "confirm", subscriber_id, link_key, o=opt_outs)


def make_submit(secret: str, org_id: int, token_version: int) -> str:
    """An org's submission link token; rotating the org's token_version voids every older one."""
    return make(secret, "org-submit", {"o": org_id, "v": token_version})


def read_submit(secret: Keys, token: str) -> tuple[int, int]:
    """(org id, token version) of a submission link; TokenError if forged, foreign or malformed."""
    payload = read(secret, "org-submit", token)
    if not isinstance(payload, dict) or not all(isinstance(payload.get(k), int) for k in ("o", "v")):
        raise TokenError("this link is not valid", ja="このリンクは正しくありません")
    return payload["o"], payload["v"]


def _hmac(secret: str, message: str) -> hmac.HMAC:
    """HMAC-SHA256 of `message` under `secret`: the one MAC of every compact link, tag and VERP address."""
    mac = _keyed(secret).copy()
    mac.update(message.encode())
    return mac


@functools.lru_cache(maxsize=8)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC keyed with `secret` and fed nothing, only ever copied (never updated): the key
    setup is a third of the cost of a MAC, and a message makes four (two links, mailto tag, VERP).
    Cached by secret, so a changed secret_key gets its own."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _key_digest(link_key: str) -> str:
    """48 bits of the row's key: tells a row from one that took over its id (a 2^-48 chance)."""
    return base64.urlsafe_b64encode(hashlib.sha256(link_key.encode()).digest()[:6]).decode()


def _compact_signature(secret: str, purpose: str, body: str) -> str:
    """80 bits of HMAC-SHA256 over purpose and body: what makes the link unforgeable (each
    guess costs a request; 80 rather than 96 bits keep a 7-digit id's URL within 57 characters)."""
    mac = _hmac(secret, f"mailmag/{purpose}:{body}").digest()
    return base64.urlsafe_b64encode(mac[:10]).decode().rstrip("=")


def _read_compact(secret: str, purpose: str, token: str) -> PersonLink | None:
    """The compact form's subscriber, None if the token is not in that form; TokenError if forged."""
    match = _COMPACT.fullmatch(token)
    if match is None or purpose not in COMPACT:
        return None
    body = f"{match.group(1)}.{match.group(2)}"
    if not hmac.compare_digest(match.group(3), _compact_signature(secret, purpose, body)):
        raise TokenError("this link is not valid", ja="このリンクは正しくありません")
    return PersonLink(int(match.group(1)), None, dt.datetime.min.replace(tzinfo=dt.UTC), {},
                      key_digest=match.group(2))


def read_person(secret: Keys, purpose: str, token: str, max_age: int | None = None) -> PersonLink:
    """The subscriber a link names; TokenError if tampered, foreign, expired or malformed."""
    return _with_any_key(secret, lambda key: _read_person(key, purpose, token, max_age))


def _read_person(secret: str, purpose: str, token: str, max_age: int | None) -> PersonLink:
    compact = _read_compact(secret, purpose, token)
    if compact is not None:
        return compact
    try:
        payload, signed = _serializer(secret, purpose).loads(token, max_age=max_age, return_timestamp=True)
    except SignatureExpired as exc:
        raise _Expired("this link has expired", ja="このリンクは有効期限が切れています") from exc
    except BadSignature as exc:
        raise TokenError("this link is not valid", ja="このリンクは正しくありません") from exc
    if not isinstance(payload, dict) or type(payload.get("s")) is not int:
        raise TokenError("this link is not valid", ja="このリンクは正しくありません")
    key = payload.get("k")
    if key is not None and not isinstance(key, str):
        raise TokenError("this link is not valid", ja="このリンクは正しくありません")
    extra = {k: v for k, v in payload.items() if k not in ("s", "k")}
    return PersonLink(payload["s"], key, signed, extra)


def _tag_mac(secret: str, subscriber_id: int, link_key: str) -> bytes:
    """64 bits of HMAC-SHA256 naming one subscriber row: both tag forms carry these bits."""
    return _hmac(secret, f"mailto:{subscriber_id}:{link_key}").digest()[:8]


def unsubscribe_tag(secret: str, subscriber_id: int, link_key: str) -> str:
    """'<id>-<13 base32>' for the mailto unsubscribe subject: names one subscriber row unforgeably.

    Lower-case base32, because mail clients and readers may change a subject's case; 13 rather
    than 16 hex characters, so the mailto line of List-Unsubscribe fits in 78 columns."""
    mac = base64.b32encode(_tag_mac(secret, subscriber_id, link_key)).decode().rstrip("=").lower()
    return f"{subscriber_id}-{mac}"


def unsubscribe_tag_id(tag: str) -> int | None:
    """The subscriber id a mailto tag claims (not yet checked: see `unsubscribe_tag_fits`)."""
    head, _, rest = tag.partition("-")
    ok = head.isdigit() and len(head) < 19 and _tag_bits(rest) is not None
    return int(head) if ok else None


def unsubscribe_tag_fits(secret: Keys, tag: str, subscriber_id: int, link_key: str) -> bool:
    """Whether a mailto tag was signed for this row: the current form, or '<id>-<16 hex>' in
    mail sent before it (the same 64 bits, in hex)."""
    head, _, rest = tag.partition("-")
    bits = _tag_bits(rest)
    return head == str(subscriber_id) and bits is not None and any(
        hmac.compare_digest(bits, _tag_mac(key, subscriber_id, link_key)) for key in _keys(secret))


def _tag_bits(mac: str) -> bytes | None:
    """The 64 bits a tag's mac part spells (13 base32 or, in old mail, 16 hex), None if neither."""
    mac = mac.lower()
    if re.fullmatch(r"[0-9a-f]{16}", mac):
        return bytes.fromhex(mac)
    if re.fullmatch(r"[a-z2-7]{12}[acegikmoqsuwy246]", mac):  # the 13th character carries 4 bits
        return base64.b32decode(mac.upper() + "===")
    return None


def verp_tag(secret: str, delivery_id: int) -> str:
    """'<id>-<hmac>' for the envelope sender, so a bounce names its delivery unforgeably."""
    return f"{delivery_id}-{_hmac(secret, f'verp:{delivery_id}').hexdigest()[:10]}"


def read_verp_tag(secret: Keys, tag: str) -> int | None:
    """The delivery id in a VERP tag, or None if it is malformed or forged."""
    head, _, _ = tag.partition("-")
    if not head.isdigit():
        return None
    fits = any(hmac.compare_digest(verp_tag(key, int(head)), tag) for key in _keys(secret))
    return int(head) if fits else None
