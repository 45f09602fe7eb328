"""The URLs mailmag puts in mail and hands out; the web app's routes answer exactly these."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import idna

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


# What RFC 3986 allows as it stands in each part (and "%", for escapes already made).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


def as_uri(url: str) -> str:
    """An item's link as every mail client links it. Pasted from a browser's address bar it can
    hold Japanese (https://例え.jp/イベント/申込): a text mail program links such a URL up to its
    first non-ASCII character, and an .ics URL must be a URI. The host goes to IDNA, anything
    else outside ASCII (or not allowed where it stands) to UTF-8 %-escapes; escapes stay."""
    # Browsers read a backslash in an http(s) URL as '/'; urlsplit does not, and would take
    # 'https://a.jp' + backslash + '@b.com/' to b.com. items.parse_url refuses such a link now;
    # an item stored before may hold one.
    parts = urlsplit(url.replace("\\", "/"))
    netloc = parts.netloc if parts.netloc.isascii() else _ascii_netloc(parts.netloc)
    return urlunsplit((parts.scheme, netloc, quote(parts.path, safe=_PATH_SAFE),
                       quote(parts.query, safe=_QUERY_SAFE), quote(parts.fragment, safe=_QUERY_SAFE)))


def _ascii_netloc(netloc: str) -> str:
    user, at, host_port = netloc.rpartition("@")
    host, colon, port = host_port.rpartition(":")
    if not (colon and (port.isdigit() or not port)):  # (an empty port is the scheme's own)
        host, colon, port = host_port, "", ""
    try:
        host = idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:  # not a name IDNA takes: escaped, as the rest
        host = quote(host, safe="")
    return quote(user, safe=":%!$&'()*+,;=-._~") + at + host + colon + port
