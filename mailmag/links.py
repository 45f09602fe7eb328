"""The URLs mailmag puts in mail and hands out; the web app's routes answer exactly these."""

from __future__ import annotations

from mailmag import tokens

# The subscriber id in the links of an `issues test` mail: no subscriber has it, and the web
# app answers such a link with a page saying it is a test link.
TEST_SUBSCRIBER_ID = 0


def _join(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def unsubscribe_url(base_url: str, secret: str, subscriber_id: int, link_key: str) -> str:
    """GET shows a page with one button; POST (form or RFC 8058 one-click) unsubscribes."""
    return _join(base_url, f"/u/{tokens.make_person(secret, 'unsubscribe', subscriber_id, link_key)}")


def preferences_url(base_url: str, secret: str, subscriber_id: int, link_key: str) -> str:
    return _join(base_url, f"/p/{tokens.make_person(secret, 'preferences', subscriber_id, link_key)}")


def confirm_url(base_url: str, secret: str, subscriber_id: int, link_key: str, opt_outs: int = 0) -> str:
    """`opt_outs`: the subscriber's opt-out count when the mail was made; an opt-out after it
    voids the link (a confirmation mailed before an unsubscribe must not undo it)."""
    return _join(base_url, f"/confirm/{tokens.make_confirm(secret, subscriber_id, link_key, opt_outs)}")


def submit_url(base_url: str, secret: str, org_id: int, token_version: int) -> str:
    return _join(base_url, f"/submit/{tokens.make_submit(secret, org_id, token_version)}")


def archive_url(base_url: str, number: int | None = None) -> str:
    return _join(base_url, "/archive/" if number is None else f"/archive/{number}")


def subscribe_url(base_url: str) -> str:
    return _join(base_url, "/subscribe")
