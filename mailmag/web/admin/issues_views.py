"""Issues: compose a draft, reorder and remove items, title, preview, test, send or schedule, status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, get_flashed_messages, redirect, render_template, request, url_for

from mailmag.content import drafts, issues, transitions
from mailmag.delivery import dispatch, outbox
from mailmag.delivery.transports import make_transport
from mailmag.errors import AccessDenied, InvalidInput, StateError
from mailmag.models import ID_LIMIT, Issue, utcnow
from mailmag.scheduling import jobs
from mailmag.scheduling.when import parse_when
from mailmag.web import _, state
from mailmag.web.admin import FRAME_CSP, act, needs, viewer

bp: Blueprint = Blueprint("issues", __name__, url_prefix="/issues")


def _back(issue_id: int, notice: str = "") -> Any:
    """To the issue's page, saying `notice` there once (a flashed message in the signed session
    cookie: a notice in the URL could be any text, put in a link by anyone)."""
    if notice:
        flash(notice)
    return redirect(url_for(".show", issue_id=issue_id), 303)


@bp.get("/")
@needs("compose")
def index() -> Any:
    now, config = utcnow(), state().config
    with state().services.read_session() as db:
        listed = issues.listing(db)
        return render_template("admin/issues.html.j2", issues=listed,
                               dead=outbox.dead_by_issue(db), approved=drafts.approved_free(db),
                               not_made=jobs.sends_not_made(db),
                               overdue={i.id for i in listed if jobs.overdue_send(i, now, config)})


@bp.post("/new")
@needs("compose")
def new() -> Any:
    ids = [_int(v) for v in request.form.getlist("item")]
    if not ids:
        raise InvalidInput("choose at least one approved item for the issue",
                           ja="号に入れる承認済みの記事を1件以上選んでください")
    title = request.form.get("title", "").strip() or None
    with state().services.session() as db:
        composed = issues.compose(db, state().config, title=title, item_ids=ids)
        act(db, "issue.compose", f"{issues.label(composed.issue)} items {ids}")
        issue_id = composed.issue.id
    return _back(issue_id)


@bp.get("/<int:issue_id>")
@needs("compose")
def show(issue_id: int) -> Any:
    now = utcnow()
    with state().services.read_session() as db:
        issue = drafts.by_id(db, issue_id)
        return render_template(
            "admin/issue.html.j2", issue=issue, warnings=drafts.warnings(db, state().config, issue),
            counts=outbox.counts(db, issue.id), failures=outbox.failures(db, issue.id),
            held=outbox.held_refusals(db, issue.id), now=now,
            ambiguous=outbox.ambiguous_count(db, issue.id),
            maybe_sent=outbox.cancelled_maybe_sent(db, issue.id),
            audience=outbox.audience_count(db, issue),
            langs=_editions(issue, state().config.mailmag.language),
            notice=" ".join(str(m) for m in get_flashed_messages()), topics=state().topics,
            not_made=jobs.sends_not_made(db, issue.id).get(issue.id),
            overdue=jobs.overdue_send(issue, now, state().config),
            lease_expiries=state().config.dispatch.max_lease_expiries,
        )


@bp.get("/<int:issue_id>/frame/<lang>")
@needs("compose")
def frame(issue_id: int, lang: str) -> Any:
    """The stored rendering, for the sandboxed preview iframe."""
    with state().services.read_session() as db:
        issue = drafts.by_id(db, issue_id)
        shown = issues.preview(db, state().config, issue.id, "html", lang if lang in ("ja", "en") else None)
    return shown, 200, {"Content-Security-Policy": FRAME_CSP, "X-Frame-Options": "SAMEORIGIN",
                        "Content-Type": "text/html; charset=utf-8"}


@bp.post("/<int:issue_id>/move")
@needs("compose")
def move(issue_id: int) -> Any:
    item_id = _int(request.form.get("item", ""))
    delta = -1 if request.form.get("direction") == "up" else 1
    with state().services.session() as db:
        drafts.move(db, state().config, issue_id, item_id, delta)
        act(db, "issue.reorder", f"issue id {issue_id}: item {item_id} {'up' if delta < 0 else 'down'}")
    return _back(issue_id)


@bp.post("/<int:issue_id>/remove")
@needs("compose")
def remove(issue_id: int) -> Any:
    item_id = _int(request.form.get("item", ""))
    with state().services.session() as db:
        drafts.drop(db, state().config, issue_id, item_id)
        act(db, "issue.remove-item", f"issue id {issue_id}: item {item_id}")
    return _back(issue_id)


@bp.post("/<int:issue_id>/title")
@needs("compose")
def title(issue_id: int) -> Any:
    given = request.form.get("title", "")
    with state().services.session() as db:
        drafts.retitle(db, state().config, issue_id, given)
        act(db, "issue.title", f"issue id {issue_id}: {given}")
    return _back(issue_id)


@bp.post("/<int:issue_id>/render")
@needs("compose")
def render_again(issue_id: int) -> Any:
    """The issue rendered again from its items' current text: what the page's warning about an
    item changed after rendering asks for (as `issues render` does on the command line)."""
    with state().services.session() as db:
        if drafts.by_id(db, issue_id).status == "scheduled" and not viewer().can("send"):
            # what a scheduled issue sends is a sender's decision (its send time was one)
            raise AccessDenied(f"the {viewer().role} role may not change a scheduled issue",
                               ja=f"「{viewer().role}」の権限では、送信予約済みの号は変更できません")
        composed = issues.rerender(db, state().config, issue_id)
        act(db, "issue.render", issues.label(composed.issue))
    return _back(issue_id)


@bp.post("/<int:issue_id>/topic")
@needs("compose")
def topic(issue_id: int) -> Any:
    chosen = request.form.get("topic", "") or None
    with state().services.session() as db:
        drafts.set_topic(db, issue_id, chosen, [t.code for t in state().topics])
        act(db, "issue.topic", f"issue id {issue_id}: {chosen or 'everyone'}")
    return _back(issue_id)


@bp.post("/<int:issue_id>/test")
@needs("send")
def test_send(issue_id: int) -> Any:
    """The real message, now, to the logged-in admin's own address (not through the outbox)."""
    services = state().services
    lang = request.form.get("lang") if request.form.get("lang") in ("ja", "en") else None
    if not state().test_sends.acquire(blocking=False):
        raise StateError("another test send is waiting for the relay's answer: try again in a moment",
                         ja="別のテスト送信が中継サーバーの応答を待っています。少し待ってからもう一度お試しください")
    try:
        with services.session() as db:
            issue = drafts.by_id(db, issue_id)
            issue.renderings  # noqa: B018 - loaded now: no transaction stays open during SMTP
            act(db, "issue.test", f"issue id {issue_id} to {viewer().email}")
        results = dispatch.send_test(services, make_transport(services.config), issue, [viewer().email], lang)
    finally:
        state().test_sends.release()
    return _back(issue_id, notice=" ".join(
        _("テスト送信しました（{address}、中継サーバーの応答: {reply}）。", address=r.address, reply=r.reply)
        if r.sent else _("テスト送信できませんでした（{address}）: {reply}", address=r.address, reply=r.reply)
        for r in results))


@bp.get("/<int:issue_id>/send")
@needs("send")
def confirm(issue_id: int) -> Any:
    """The confirmation: how many subscribers get it, now or at the time given."""
    at = request.args.get("at", "").strip()
    with state().services.read_session() as db:
        issue = drafts.by_id(db, issue_id)
        sendable = issue.status in transitions.SENDABLE  # (else its old `at` would read "in the past")
        when = parse_when(at, state().config.zone, utcnow()) if at and sendable else None
        # the issue page's warnings again: the last page before sending (helper-72: it named
        # a 第N号 another issue had taken)
        return render_template("admin/confirm.html.j2", issue=issue, when=when,
                               sendable=sendable,
                               audience=issues.audience(db, issue), version=drafts.version(db, issue),
                               warnings=drafts.warnings(db, state().config, issue))


@bp.post("/<int:issue_id>/send")
@needs("send")
def send(issue_id: int) -> Any:
    at = request.form.get("at", "").strip()
    config = state().config
    with state().services.session() as db:
        issue = drafts.by_id(db, issue_id)
        drafts.check_version(db, issue, request.form.get("version", ""))
        if at:
            when = parse_when(at, config.zone, utcnow())
            jobs.schedule_send(db, issue, when, config=config)
            act(db, "issue.schedule", f"{issues.label(issue)} at {when.isoformat()}")
        else:
            queued = issues.start_sending(db, config, issue)
            act(db, "issue.send", f"{issues.label(issue)}: {queued} messages queued")
    return _back(issue_id)


@bp.post("/<int:issue_id>/cancel")
@needs("send")
def cancel(issue_id: int) -> Any:
    with state().services.session() as db:
        issue = drafts.by_id(db, issue_id)
        done = issues.cancel(db, issue.id)
        # as `issues cancel` says it: a message a worker holds still goes (helper-100: the page and
        # the audit log said "532 stopped" where 530 were; the CLI said "up to", and why)
        up_to = "up to " if done.in_flight else ""
        act(db, "issue.cancel", f"{issues.label(issue)}"
            + (": a draft again" if done.unscheduled else
               f": {done.sent} sent, {up_to}{done.not_sent} queued messages stopped"
               + (f" ({done.in_flight} of them held by a worker: those already on their way to the relay "
                  "still go)"
                  if done.in_flight else "")))
    if done.unscheduled or not done.in_flight:
        return _back(issue_id)
    said = _("送信待ちの最大 {n} 通を止めました（うち {held} 通は処理中で、送信中のものは届きます）",
             n=done.not_sent, held=done.in_flight)
    return _back(issue_id, notice=said)


@bp.post("/<int:issue_id>/retry-dead")
@needs("send")
def retry_dead(issue_id: int) -> Any:
    """`issues retry N --dead`: the messages given up on go back to the queue."""
    with state().services.session() as db:
        issue = drafts.by_id(db, issue_id)
        requeued = transitions.retry_dead(db, issue, utcnow())
        act(db, "issue.retry_dead", f"{issues.label(issue)}: {requeued} dead messages queued again")
    return _back(issue_id, notice=_("送信を断念した {n} 通を送信待ちに戻しました", n=requeued))


def _editions(issue: Issue, first: str) -> list[str]:
    """The issue's editions, the installation's language first (日本語, then English)."""
    return sorted((r.lang for r in issue.renderings), key=lambda lang: (lang != first, lang))


def _int(raw: str) -> int:
    """An item id from a form; beyond what a row can hold is no id either."""
    try:
        number = int(raw)
    except ValueError:
        number = -1
    if not 0 < number < ID_LIMIT:
        raise InvalidInput(f"{raw!r} is not an item id", ja=f"「{raw}」は記事の ID ではありません")
    return number
