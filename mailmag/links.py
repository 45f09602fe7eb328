"""The URLs mailmag puts in mail and hands out; the web app's routes answer exactly these."""

from __future__ import annotations

from mailmag.delivery import tokens

# The subscriber id in the links of an `issues test` mail: no subscriber has it, and the web
# app answers such a link with a page saying it is a test link.
TEST_SUBSCRIBER_ID = 0


def _join(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def unsubscribe_url(base_url: str, secret: str, subscriber_id: int) -> str:
    """GET shows a page with one button; POST (form or RFC 8058 one-click) unsubscribes."""
    return _join(base_url, f"/u/{tokens.make(secret, 'unsubscribe', {'s': subscriber_id})}")


def preferences_url(base_url: str, secret: str, subscriber_id: int) -> str:
    return _join(base_url, f"/p/{tokens.make(secret, 'preferences', {'s': subscriber_id})}")


def confirm_url(base_url: str, secret: str, subscriber_id: int) -> str:
    return _join(base_url, f"/confirm/{tokens.make(secret, 'confirm', {'s': subscriber_id})}")


def submit_url(base_url: str, secret: str, org_id: int, token_version: int) -> str:
    token = tokens.make(secret, "org-submit", {"o": org_id, "v": token_version})
    return _join(base_url, f"/submit/{token}")


def archive_url(base_url: str, number: int | None = None) -> str:
    return _join(base_url, "/archive/" if number is None else f"/archive/{number}")


def subscribe_url(base_url: str) -> str:
    return _join(base_url, "/subscribe")
