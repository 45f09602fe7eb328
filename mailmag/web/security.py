"""CSRF tokens, security headers (a strict CSP: the pages need no script), the client's address.

CSRF: a random value kept in the signed session cookie (SameSite=Lax, HttpOnly) and echoed in
every state-changing form; a POST without the pair is refused with 400 before anything is
read or stored. The RFC 8058 one-click POST is the one exception (mail providers send it
without cookies); the secret unsubscribe token in its URL is what authorizes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flask import Flask, Request, Response, abort, g, request, session
from werkzeug.formparser import FormDataParser

SESSION_KEY = "csrf"
FIELD = "csrf_token"

# The pages need no script and no inline style; forms post to this site only.
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# The archive's web version is the issue's own HTML, whose CSS premailer inlined into style
# attributes: those are allowed there, script still is not, images may come from https.
ISSUE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# Pages reached through a secret link: never cached, never passed on in a Referer.
PRIVATE_PREFIXES = ("/u/", "/p/", "/confirm/", "/submit/")


def session_key(secret: str) -> str:
    """Flask's cookie-signing key, derived so it is never the key that signs links."""
    return hmac.new(secret.encode(), b"mailmag/web-session", hashlib.sha256).hexdigest()


def csrf_token() -> str:
    """The form token of this browser session (made on first use)."""
    if SESSION_KEY not in session:
        session[SESSION_KEY] = secrets.token_urlsafe(32)
    return session[SESSION_KEY]


def check_csrf() -> None:
    """Abort with 400 unless the form carries this session's token."""
    expected = session.get(SESSION_KEY)
    given = request.form.get(FIELD, "")
    if not expected or not hmac.compare_digest(str(expected), given):
        abort(400, description="csrf")


def from_another_site(base_url: str) -> bool:
    """Whether the browser says this request comes from another site's page: its Origin (or,
    without one, its Referer) is neither base_url's origin nor the host asked for (by http or
    https: behind a proxy that ends TLS without [web] trusted_proxy, an https page's request
    reaches us as http). Beside the form's token, not instead of it: a browser that sends
    neither header passes. An http page of base_url's own host is another site (helper-84)."""
    source = (request.headers.get("Origin") or request.headers.get("Referer") or "").strip()
    if not source:
        return False
    parts = urlsplit(source)  # "null" (a sandboxed frame, a data: page) has neither part
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    base = urlsplit(base_url)
    host = request.host.lower()
    return origin not in {f"{base.scheme}://{base.netloc}".lower(), f"{request.scheme}://{host}",
                          f"https://{host}"}


UNDO_KEY = "unsubscribed"


def remember_unsubscribe(subscriber_id: int, at: dt.datetime) -> None:
    """Note in this browser's signed session cookie who it unsubscribed and when (for undo)."""
    session[UNDO_KEY] = {"s": subscriber_id, "at": at.timestamp()}


def unsubscribed_at(subscriber_id: int) -> dt.datetime | None:
    """When this browser session unsubscribed `subscriber_id`, or None if it did not."""
    noted = session.get(UNDO_KEY)
    if not isinstance(noted, dict) or noted.get("s") != subscriber_id:
        return None
    at = noted.get("at")
    return dt.datetime.fromtimestamp(at, dt.UTC) if isinstance(at, int | float) else None


def forget_unsubscribe() -> None:
    session.pop(UNDO_KEY, None)


def client_ip() -> str:
    """The client's address (behind a proxy, waitress's trusted_proxy has already rewritten it)."""
    return (request.remote_addr or "")[:64]


def user_agent() -> str:
    return request.headers.get("User-Agent", "")[:500]


def use_issue_csp() -> None:
    g.csp = ISSUE_CSP


def _headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", g.get("csp", PAGE_CSP))
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.path.startswith(PRIVATE_PREFIXES) or request.method == "POST":
        headers["Cache-Control"] = "no-store"
    return response


class _Utf8FormParser(FormDataParser):
    """Werkzeug keeps a form's %-escaped bytes that are no UTF-8 as the text "%FF%FE" (and drops
    a whole form of raw ones without a word), and a multipart field's as U+FFFD: Shift_JIS or
    broken bytes landed in the review queue and the subscriber list as %93%FA%96… (helper-82,
    helper-84). Such a form is refused with a 400 that says so; a browser sends UTF-8 from a
    UTF-8 page, so only a broken client meets it. Uploaded files are bytes, read by their views."""

    def parse(self, stream: Any, mimetype: str, content_length: int | None,
              options: dict[str, str] | None = None) -> Any:
        if mimetype != "application/x-www-form-urlencoded":
            parsed = super().parse(stream, mimetype, content_length, options)
            # multipart: Werkzeug decodes each text field with errors="replace"; a U+FFFD there is
            # a byte that was no UTF-8 (helper-84: Shift_JIS stored as ���]�̂�), never typed
            if any("\ufffd" in value for _, value in parsed[1].items(multi=True)):
                abort(400, description="encoding")
            return parsed
        try:  # the stream is limited to max_content_length already, as for Werkzeug's own parse
            items = parse_qsl(stream.read().decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            abort(400, description="encoding")
        return stream, self.cls(items), self.cls()


class _Request(Request):
    form_data_parser_class = _Utf8FormParser


def init_app(app: Flask, secret: str, secure_cookie: bool, max_body: int) -> None:
    app.config.update(
        SECRET_KEY=session_key(secret),
        SESSION_COOKIE_NAME="mailmag_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookie,
        # [web] max_request_body_size, for the whole body and for a form's fields together
        # (Werkzeug's own form limit, 500 KB, would refuse a long Japanese item under it)
        MAX_CONTENT_LENGTH=max_body,
        MAX_FORM_MEMORY_SIZE=max_body,
    )
    app.request_class = _Request
    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
