"""Unsubscribe (page + RFC 8058 one-click), preferences, the public subscribe form, confirmation.

A GET or HEAD never changes anything: mail scanners and link previewers fetch every link
in a mail (phpList mass-unsubscribed its users that way, their issue #1082). State changes
only on POST: a form with this session's CSRF token, or the one-click body.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, abort, g, redirect, render_template, request
from sqlalchemy.orm import Session

from mailmag import db, links, tokens
from mailmag.audience import consent, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.errors import InvalidEmail, InvalidInput, NotFound, TokenError
from mailmag.models import Subscriber, utcnow
from mailmag.scheduling import sending
from mailmag.web import security, state
from mailmag.web.i18n import pick_lang

bp = Blueprint("subscription", __name__)


def _repeatable(view: Callable[..., Any]) -> Callable[..., Any]:
    """A consent change that survives the database connection dying under it (run once more on
    a new one): an RFC 8058 one-click is sent once by the mail provider, and nobody sees a 500.
    Each is safe to run again: the run whose connection died committed nothing, so the change is
    recorded once, and mail goes out only after the commit. (A reader who presses one-click a
    second time is another request, and the log records it again: the latest word, helper-60.)"""

    @functools.wraps(view)
    def again(*args: Any, **kwargs: Any) -> Any:
        return db.again_if_dropped(lambda: view(*args, **kwargs))
    return again


class _TestLink(Exception):
    """The link is from an `issues test` mail: answered by a page saying so, nothing changes."""


def _link(purpose: str, token: str, max_age: int | None = None) -> tokens.PersonLink:
    """The subscriber row a link names; NotFound for a tampered, foreign or expired token."""
    try:
        link = tokens.read_person(state().keys, purpose, token, max_age=max_age)
    except TokenError:
        raise NotFound("this link is not valid",
                       ja="このリンクは正しくありません") from None
    if link.subscriber_id == links.TEST_SUBSCRIBER_ID:
        raise _TestLink(purpose)
    return link


@bp.errorhandler(_TestLink)
def _test_link(error: _TestLink) -> Any:
    """A test mail's unsubscribe or preferences link: a page, 200, and nothing changed."""
    if request.method == "POST" and request.form.get("List-Unsubscribe") == "One-Click":
        return Response("test link: nothing changed\n", 200, content_type="text/plain; charset=utf-8")
    return _page("test_link.html.j2", None, purpose=str(error))


def _consent(channel: str, source: str = "", wording: str | None = None) -> Consent:
    return Consent(channel, source, security.client_ip(), security.user_agent(), wording)


def _links(subscriber: Subscriber) -> dict[str, str]:
    base, secret = state().config.mailmag.base_url, state().secret
    preferences = links.preferences_url(base, secret, subscriber.id, subscriber.link_key)
    # the preferences form posts here whichever page shows it (the undo page is /u/…/undo)
    return {"unsubscribe_url": links.unsubscribe_url(base, secret, subscriber.id, subscriber.link_key),
            "preferences_url": preferences, "preferences_path": urllib.parse.urlsplit(preferences).path}


def _page(template: str, subscriber: Subscriber | None, status: int = 200, **context: Any) -> Any:
    g.lang = pick_lang(subscriber.lang if subscriber else None, default=state().config.mailmag.language)
    extra = _links(subscriber) if subscriber is not None else {}
    return render_template(template, subscriber=subscriber, topics=state().topics, **extra, **context), status


# --- unsubscribe ---------------------------------------------------------------------------


@bp.get("/u/<token>")
def unsubscribe_page(token: str) -> Any:
    """Who is unsubscribed from what, and one button. Changes nothing (GET and HEAD)."""
    link = _link("unsubscribe", token)
    with state().services.read_session() as session:
        subscriber = subscribers.by_link(session, link)  # None: forgotten, or the id is someone else's
        if subscriber is None or subscriber.status == "unsubscribed":
            undo = _can_undo(session, subscriber)
            return _page("unsubscribed.html.j2", subscriber, already=True, undo=undo)
        return _page("unsubscribe.html.j2", subscriber)


@bp.post("/u/<token>")
@_repeatable
def unsubscribe(token: str) -> Any:
    """RFC 8058 one-click (no page, cookie or redirect; repeatable) or the page's button."""
    link = _link("unsubscribe", token)
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    if not one_click:
        security.check_csrf()
    channel = "one-click" if one_click else "web"
    with state().services.session() as session:  # committed before the answer is sent
        subscriber = subscribers.by_link(session, link)
        changed = subscriber is not None and subscribers.unsubscribe(
            session, subscriber, _consent(channel, "unsubscribe link"))
    if one_click:
        return Response("unsubscribed\n", 200, content_type="text/plain; charset=utf-8")
    if changed and subscriber is not None:
        security.remember_unsubscribe(subscriber.id, utcnow())
    with state().services.read_session() as session:
        undo = _can_undo(session, subscriber)
    return _page("unsubscribed.html.j2", subscriber, already=not changed, undo=undo)


def _can_undo(session: Session, subscriber: Subscriber | None) -> bool:
    """Whether this browser session made this person's latest unsubscribe, within [web]
    undo_minutes. Latest: the consent log has recorded nothing for them since (helper-59: a page
    left open, or a session cookie kept from before, overturned an unsubscribe made later by
    another browser or by the office, or a removal after the office re-added them)."""
    if subscriber is None or subscriber.status != "unsubscribed":
        return False
    at = security.unsubscribed_at(subscriber.id)
    window = dt.timedelta(minutes=state().config.web.undo_minutes)
    if at is None or not dt.timedelta(0) <= utcnow() - at <= window:
        return False
    last = consent.last_recorded(session, subscriber)
    return last is not None and last <= at


@bp.post("/u/<token>/undo")
def undo(token: str) -> Any:
    """Take back an accidental unsubscribe: only in the browser session that made it, only
    within minutes. Anything else needs a fresh confirmation mail (the preferences page)."""
    security.check_csrf()
    link = _link("unsubscribe", token)
    with state().services.session() as session:
        subscriber = subscribers.by_link(session, link)
        if subscriber is not None and subscriber.status == "active":  # undone already, or re-added
            return redirect(request.path.removesuffix("/undo"), 303)  # the page says they are subscribed
        if subscriber is None or not _can_undo(session, subscriber):
            abort(403)
        minutes = state().config.web.undo_minutes
        sending.take_back_unsubscribe(session, state().config, subscriber, _consent(
            "web", f"undo within {minutes} minutes, in the browser session that unsubscribed"))
        security.forget_unsubscribe()
        return _page("preferences.html.j2", subscriber, saved=True, resubscribed=True, mailed=False)


# --- preferences ---------------------------------------------------------------------------


@bp.get("/p/<token>")
def preferences_page(token: str) -> Any:
    with state().services.read_session() as session:
        return _page("preferences.html.j2", _known(session, "preferences", token), saved=False,
                     resubscribed=False, mailed=False)


@bp.post("/p/<token>")
@_repeatable
def preferences(token: str) -> Any:
    """Save language and topics. Receiving again is asked for here but never granted here:
    the link may sit in a forwarded mail, so a fresh confirmation mail goes to the address."""
    security.check_csrf()
    mail = None
    with state().services.session() as session:
        subscriber = _known(session, "preferences", token)
        try:
            topics = consent.choose_topics(request.form.getlist("topic"), state().topics)
        except InvalidInput:  # only a hand-made form sends one: say which topics there are
            return _page("preferences.html.j2", subscriber, 400, saved=False, resubscribed=False,
                         error="topic")
        try:
            lang = subscribers.parse_lang(request.form.get("lang"))
        except InvalidInput:
            abort(400)
        consent.update_preferences(session, subscriber, lang, topics, _consent("web", "preferences page"))
        asked = request.form.get("action") == "resubscribe" and subscriber.status != "active"
        if asked:  # over a limit no mail goes out, and the page says the same (no enumeration)
            mail = consent.request_resubscription(
                session, subscriber, _consent("web", "preferences page"), limits=_limits())
        page = _page("preferences.html.j2", subscriber, saved=True, resubscribed=False, mailed=asked)
    if mail is not None:
        state().mailer.submit(mail)  # after the commit, as for the subscribe form
    return page


def _known(session: Session, purpose: str, token: str, max_age: int | None = None) -> Subscriber:
    subscriber = subscribers.by_link(session, _link(purpose, token, max_age))
    if subscriber is None:  # purged or forgotten since the link was made: never another person
        raise NotFound("this link is no longer valid",
                       ja="このリンクはもう使えません")
    return subscriber


def _limits() -> consent.Limits:
    web = state().config.web
    return consent.Limits(web.confirm_per_address_per_day, web.subscribe_per_ip_per_hour)


# --- confirm (double opt-in) ---------------------------------------------------------------


def _confirm_age() -> int:
    return state().config.web.confirm_hours * 3600


def _confirmable(session: Session, token: str) -> tuple[Subscriber, str]:
    """The subscriber of a confirmation link and why the link may not confirm ("" if it may):
    "expired" past its time, "opted_out" after an opt-out since it was mailed (an unsubscribe
    is never undone by it)."""
    link = _link("confirm", token)
    subscriber = _known(session, "confirm", token)  # NotFound unless authentic and theirs
    try:
        tokens.read_person(state().keys, "confirm", token, max_age=_confirm_age())
    except TokenError:
        return subscriber, "expired"
    return subscriber, "" if consent.confirmation_current(session, subscriber, link.opt_outs) else "opted_out"


@bp.get("/confirm/<token>")
def confirm_page(token: str) -> Any:
    """A page with one button: only its POST confirms (link scanners fetch the GET)."""
    with state().services.read_session() as session:
        subscriber, refused = _confirmable(session, token)
        return _confirm_answer(subscriber, refused, "confirm.html.j2")


@bp.post("/confirm/<token>")
@_repeatable
def confirm(token: str) -> Any:
    security.check_csrf()
    with state().services.session() as session:
        subscriber, refused = _confirmable(session, token)
        if not refused and subscriber.status != "active":
            # what they were shown when they asked, not what the form shows today
            wording = consent.wording_agreed(session, subscriber)
            bare = request.form.get("details") == "drop"  # the log says which button (helper-97)
            source = "confirmation link, without the name and organization" if bare else "confirmation link"
            consent.confirm(session, subscriber, _consent("web", source, wording), without_details=bare)
        return _confirm_answer(subscriber, refused, "confirmed.html.j2")


def _confirm_answer(subscriber: Subscriber, refused: str, template: str) -> Any:
    if subscriber.status == "active":
        return _page("confirmed.html.j2", subscriber, already=template == "confirm.html.j2")
    if refused:  # the page says which: past its hours, or an opt-out since it was mailed
        return _page("expired.html.j2", subscriber, 410, hours=state().config.web.confirm_hours, why=refused,
                     subscribe_url=links.subscribe_url(state().config.mailmag.base_url))
    return _page(template, subscriber)


# --- subscribe -----------------------------------------------------------------------------


def _form_lang() -> str:
    return pick_lang(request.values.get("lang"), default=state().config.mailmag.language)


def _form(status: int = 200, error: str = "", why: str = "", **values: Any) -> Any:
    g.lang = lang = _form_lang()
    return render_template(
        "subscribe.html.j2", topics=state().topics, wording=state().wording[lang], error=error, why=why,
        values={"email": "", "name": "", "organization": "", "topics": [], **values},
    ), status


@bp.get("/subscribe")
def subscribe_page() -> Any:
    return _form()


@bp.post("/subscribe")
def subscribe() -> Any:
    """Double opt-in. The answer is the same whatever happens to the address (no enumeration),
    and takes at least [web] subscribe_min_answer_ms, so neither does its timing: a new
    address is written (a pending row) where a known one is only looked up."""
    started = time.monotonic()
    answer = _subscribe()
    floor = state().config.web.subscribe_min_answer_ms / 1000
    time.sleep(max(0.0, floor - (time.monotonic() - started)))
    return answer


def _subscribe() -> Any:
    security.check_csrf()
    form = request.form
    lang = _form_lang()
    # (cut to 200 for the page shown again; the address is read whole: cut, "a@x <b@y>" with
    # spaces between would have been a@x, where the CLI refuses it, helper-75)
    values: dict[str, Any] = {
        key: form.get(key, "").strip()[:200] for key in ("email", "name", "organization")}
    values["topics"] = form.getlist("topic")
    try:
        address = subscribers.parse_address(form.get("email", ""))
        topics = consent.choose_topics(values["topics"], state().topics)
    except InvalidEmail as exc:  # what is wrong with it, as the CLI and the console say it (helper-84)
        return _form(400, "email", why=exc.text(lang), **values)
    except InvalidInput:  # only a hand-made form sends a topic not offered: say which there are
        return _form(400, "topic", **{**values, "topics": []})
    if form.get("agree") != "yes":
        return _form(400, "agree", **values)
    web = state().config.web
    try:
        with state().services.session() as session:
            mail = consent.request_subscription(
                session, address, _consent("web", state().wording_source(lang), web.consent_wording_version),
                limits=_limits(),
                name=values["name"], organization=values["organization"], lang=lang, topics=topics,
                bot=bool(form.get("website")),  # the honeypot field people never see
            )
    except InvalidInput as exc:  # a control character in the name: the same answer for every address
        return _form(400, "text", why=exc.text(lang), **values)
    if mail is not None:
        state().mailer.submit(mail)  # after the commit: the mail's link must find the subscriber
    g.lang = lang
    return render_template("check_mail.html.j2", email=address.email, hours=web.confirm_hours)
