"""Login and logout of the console (the only console pages reachable without a session)."""

from __future__ import annotations

from typing import Any

from flask import g, make_response, redirect, render_template, request, url_for

from mailmag.access import audit, logins
from mailmag.errors import AccessDenied
from mailmag.web import security, state
from mailmag.web.admin import COOKIE, act, bp, fixes


def _next_page() -> str:
    """Where to go after login: a console path only (never another site)."""
    wanted = request.values.get("next", "")
    if (wanted.startswith("/admin/") and not wanted.startswith("//") and "\\" not in wanted
            and wanted.isprintable()):  # a CR or LF would make the redirect itself fail
        return wanted
    return url_for("admin.dashboard.index")


def _form(error: str = "", status: int = 200) -> Any:
    return render_template("admin/login.html.j2", error=error, next=_next_page(),
                           name=request.form.get("name", "")), status


@bp.get("/login")
def login() -> Any:
    return _form()


@bp.post("/login")
def login_post() -> Any:
    """Check the credentials; on success a new session (a planted or old one ends) and its cookie."""
    security.check_csrf()
    services, config = state().services, state().config
    ip = security.client_ip()
    try:
        with services.session() as db:
            admin = logins.authenticate(db, config.admin, request.form.get("name", ""),
                                        request.form.get("password", ""), request.form.get("code", ""), ip)
            started = logins.start(db, admin, ip, security.user_agent(), request.cookies.get(COOKIE))
            audit.record(db, admin.name, "login", "", ip)
    except AccessDenied as exc:
        if not isinstance(exc, logins.LockedOut):
            with services.session() as db:  # the failed attempt is kept for the throttles
                logins.record_failure(db, request.form.get("name", ""), ip)
        return _form(fixes.said(exc), 401)
    response = make_response(redirect(_next_page(), 303))
    response.set_cookie(COOKIE, started.token, path="/admin/", httponly=True, samesite="Strict",
                        secure=config.mailmag.base_url.startswith("https://"))
    return response


@bp.post("/logout")
def logout() -> Any:
    with state().services.session() as db:
        logins.end(db, request.cookies.get(COOKIE, ""))
        act(db, "logout")
    g.pop("admin", None)
    response = make_response(redirect(url_for("admin.login"), 303))
    response.delete_cookie(COOKIE, path="/admin/")
    return response
