"""The secretariat's console under /admin/: a front over the same domain functions as the CLI.

Every request passes `_guard` first: outside `[admin] allowed_networks` the console does not
exist (404); without a live session every URL answers with the login page (never data); a
POST without the session's CSRF token is refused with 400 before anything is read. Views
then check the role's permission (`needs`), call one domain function in one unit of work,
and write one audit entry in that same unit of work (`act`).
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, abort, g, redirect, render_template, request, session, url_for
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mailmag.access import accounts, audit, logins
from mailmag.db import locked
from mailmag.errors import AccessDenied, MailmagError, NotFound, StateError, in_lang
from mailmag.models import EVENT_KIND_WORDS, STATUS_JA, AdminSession, utcnow
from mailmag.scheduling.when import shown
from mailmag.web import _, page_lang, security, state
from mailmag.web.admin import fixes
from mailmag.web.i18n import pick_lang

COOKIE = "mailmag_admin"
FIELD = security.FIELD
# The console's pages: the public pages' policy, plus its one script file and the preview frames.
ADMIN_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# An issue shown inside the console's sandboxed iframe: the issue's own inline styles, no script.
FRAME_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'self'; sandbox"
)
OPEN_ENDPOINTS = ("admin.login", "admin.login_post")
# Requests larger than the app's form limit: a CSV upload (and its base64 copy in the confirmation).
LARGE_BODIES = {"admin.people.import_csv": 12 * 1024 * 1024}

bp: Blueprint = Blueprint("admin", __name__, url_prefix="/admin")


@dataclasses.dataclass(frozen=True)
class Viewer:
    """The logged-in admin, copied out of the unit of work that found the session."""

    id: int
    name: str
    email: str
    role: str
    csrf: str

    def can(self, permission: str) -> bool:
        return accounts.allows(self.role, permission)


def viewer() -> Viewer:
    return g.admin


def act(session: Session, action: str, detail: str = "") -> None:
    """The audit entry of a state-changing action, in the action's own unit of work."""
    audit.record(session, viewer().name, action, detail, security.client_ip())


def needs(permission: str) -> Callable:
    """A view the admin's role must allow (else 403, nothing done)."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not viewer().can(permission):
                raise AccessDenied(f"the {viewer().role} role may not do this",
                                   ja=f"「{viewer().role}」の権限では、この操作はできません")
            return view(*args, **kwargs)

        return wrapped

    return decorate


def _network_allowed(networks: list[str]) -> bool:
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(security.client_ip())
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


@bp.before_request
def _guard() -> Any:
    config = state().config
    if not _network_allowed(config.admin.allowed_networks):
        abort(404)
    g.lang = pick_lang(request.args.get("lang"), session.get("admin_lang"), default=config.mailmag.language)
    if request.args.get("lang") in ("ja", "en"):
        session["admin_lang"] = g.lang
    g.csp = ADMIN_CSP
    if request.method == "POST" and security.from_another_site(config.mailmag.base_url):
        abort(403)  # a form posted from another site's page (helper-82), the login's included
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    cookie = request.cookies.get(COOKIE)
    # Most pages have nothing to write here: read so, they take no write lock and on SQLite wait for
    # no import or worker commit (helper-100: every page took it); a touch or an expiry writes.
    now = utcnow()
    with state().services.read_session() as db:
        row, due = logins.look(db, config.admin, cookie, now)
        seen = _viewer_of(row) if row is not None and not logins.expired(config.admin, row, now) else None
    if due:  # a minute since it was last touched, or expired
        seen = _resumed(cookie, seen)
    if seen is None:
        wanted = request.full_path if request.method == "GET" else url_for("admin.dashboard.index")
        return redirect(url_for("admin.login", next=wanted.rstrip("?")), 303)
    g.admin = seen
    if request.method == "POST":
        if request.endpoint in LARGE_BODIES:  # web.server tells waitress the largest of these
            request.max_content_length = request.max_form_memory_size = LARGE_BODIES[request.endpoint]
        given = request.form.get(FIELD, "")
        if not hmac.compare_digest(viewer().csrf, given):
            abort(400, description="csrf")
    return None


def _resumed(cookie: str | None, seen: Viewer | None) -> Viewer | None:
    """The touch or the expiry `logins.look` found due, written if no other writer holds the
    database: while an import or a send holds SQLite's write lock, the page is served as read
    (helper-102: it waited for the lock, up to a 503) and a later page touches the session."""
    try:
        with state().services.session(wait=False) as db:
            row = logins.resume(db, state().config.admin, cookie)
            return _viewer_of(row) if row is not None else None
    except OperationalError as exc:
        if not locked(exc):
            raise
        return seen  # (an expired session is refused all the same: `seen` is None then)


def _viewer_of(row: AdminSession) -> Viewer:
    return Viewer(row.admin.id, row.admin.name, row.admin.email, row.admin.role, row.csrf)


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    # Not the public pages' no-referrer: under it a browser posts the console's own forms with
    # "Origin: null", which _guard refuses as it does another site's; the console's addresses
    # hold no secrets, and other sites still get no Referer.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _mailmag_error(error: MailmagError) -> Any:
    """A domain error on a console page: its one sentence, and nothing changed."""
    status = {AccessDenied: 403, NotFound: 404, StateError: 409}.get(type(error), 400)
    return render_template("admin/error.html.j2", status=status, message=fixes.said(error)), status


def error_page(status: int, reason: str = "") -> tuple[str, int]:
    """An HTTP error under /admin/ (an unknown page, an expired form, a body too large, the
    database away, a bug): the console's page, with its way back, in the console's language."""
    if reason == "csrf":
        message = _("フォームの有効期限が切れました。ページを開き直してから、もう一度送信してください。")
    elif reason == "encoding":
        message = _("送信された文字を読み取れませんでした（文字コードが UTF-8 ではありません）。何も保存していません。")  # noqa: E501
    elif status == 404:
        message = _("ページが見つかりません。")
    elif status == 413:
        kb = f"{(request.max_content_length or 0) // 1024:,}"
        shorter = _("文章を短くするか、全文をウェブページに載せて、そのURLを入れてから、もう一度送信してください。")  # noqa: E501
        message = _("送った内容が大きすぎます（{kb} KB まで）。", kb=kb) + " " + shorter
    elif status == 503:
        message = _("データベースに接続できません。しばらくしてから、もう一度お試しください。")
    elif status >= 500:
        message = _("エラーが発生しました。しばらくしてから、もう一度お試しください。")
    else:
        message = _("リクエストを処理できませんでした。ページを開き直して、もう一度お試しください。")
    return render_template("admin/error.html.j2", status=status, message=message), status


def status_word(status: str) -> str:
    """An issue's, item's or subscriber's status as the page's language says it."""
    return in_lang(page_lang(), status, STATUS_JA.get(status, ""))


def event_kind_word(kind: str) -> str:
    """A bounce or unsubscribe event's kind as the page's language says it."""
    english, ja = EVENT_KIND_WORDS.get(kind, (kind, ""))
    return in_lang(page_lang(), english, ja)


def admin_csrf() -> str:
    return viewer().csrf if "admin" in g else security.csrf_token()


def init_app(app: Flask) -> None:
    """Mount the console (only called when [admin] enabled = true)."""
    zone = app.extensions["mailmag"].config.zone
    app.register_blueprint(bp)
    app.jinja_env.globals.update(admin_csrf=admin_csrf, viewer=lambda: g.get("admin"),
                                 status_word=status_word, event_kind_word=event_kind_word,
                                 local=lambda value: "-" if value is None else shown(value, zone))


bp.register_error_handler(MailmagError, _mailmag_error)

# The views: login and logout on bp itself, the rest as child blueprints (each module one).
from mailmag.web.admin import (  # noqa: E402
    auth,
    council_views,
    dashboard,
    issues_views,
    items_views,
    people_views,
)

for _child in (dashboard.bp, items_views.bp, issues_views.bp, people_views.bp, council_views.bp):
    bp.register_blueprint(_child)
del auth
