"""Every signed token mailmag makes: links in mail, org submission links, VERP addresses.

Tokens are itsdangerous HMAC-SHA256 signatures over IDs only, with one salt per purpose so
a token made for one purpose is foreign to every other. Unsubscribe tokens never expire
(a link in a years-old mail must still work); confirmation tokens do.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from mailmag.errors import TokenError

PURPOSES = ("unsubscribe", "preferences", "confirm", "org-submit")


def _serializer(secret: str, purpose: str) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeTimedSerializer(
        secret, salt=f"mailmag/{purpose}", signer_kwargs={"digest_method": hashlib.sha256}
    )


def make(secret: str, purpose: str, payload: Any) -> str:
    """A URL-safe signed token carrying `payload` (IDs only: never an address or a name)."""
    return _serializer(secret, purpose).dumps(payload)


def read(secret: str, purpose: str, token: str, max_age: int | None = None) -> Any:
    """The payload of a token made for `purpose`; TokenError if tampered, foreign or expired."""
    try:
        return _serializer(secret, purpose).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise TokenError("this link has expired") from exc
    except BadSignature as exc:
        raise TokenError("this link is not valid") from exc


def verp_tag(secret: str, delivery_id: int) -> str:
    """'<id>-<hmac>' for the envelope sender, so a bounce names its delivery unforgeably."""
    digest = hmac.new(secret.encode(), f"verp:{delivery_id}".encode(), hashlib.sha256)
    return f"{delivery_id}-{digest.hexdigest()[:10]}"


def read_verp_tag(secret: str, tag: str) -> int | None:
    """The delivery id in a VERP tag, or None if it is malformed or forged."""
    head, _, _ = tag.partition("-")
    if not head.isdigit():
        return None
    return int(head) if hmac.compare_digest(verp_tag(secret, int(head)), tag) else None
