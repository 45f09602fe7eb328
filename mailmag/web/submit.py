"""Member organizations' private submission forms: items land as `submitted` for review.

The link (from `mailmag orgs token`) is the credential: a wrong, foreign or rotated token
answers 404 and says nothing about the org. The pages are in Japanese (members are).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, g, redirect, render_template, request, url_for
from sqlalchemy.orm import Session

from mailmag.content import items, orgs
from mailmag.errors import InvalidInput, LimitExceeded
from mailmag.models import ITEM_KINDS, Item, Org
from mailmag.web import security, state

bp = Blueprint("submit", __name__)

# Model attribute → (label, input type, hint). The form's field names are items.FIELD_NAMES.
FIELDS = {
    "title": ("タイトル", "text", ""),
    "event_name": ("出展先のイベント名", "text", ""),
    "date": ("日付（開催日）", "date", ""),
    "end_date": ("終了日（複数日の場合）", "date", ""),
    "time_text": ("時間", "text", "例: 13:30〜17:00"),
    "venue": ("会場", "text", "例: 広島国際会議場 ダリア"),
    "deadline": ("締切日", "date", ""),
    "fee": ("参加費", "text", "例: 無料"),
    "url": ("URL", "url", "https:// で始まる詳細ページ"),
    "how_to_apply": ("申込方法", "textarea", ""),
    "body": ("本文", "textarea", "Markdown で書けます（空行で段落、- で箇条書き）"),
}


def _org(session: Session, token: str) -> Org:
    g.lang = "ja"
    return orgs.from_submission_token(session, state().keys, token)  # NotFound → 404


# A field that a kind calls otherwise (a call for exhibitors' fee is the exhibitor's).
KIND_FIELDS = {("exhibitors", "fee"): ("出展料", "text", "例: 1小間 30,000円（税込）")}


def _fields(kind: str) -> list[dict[str, Any]]:
    required = set(items.required_fields(kind))
    allowed = set(items.allowed_fields(kind))
    return [
        {"attr": attr, "name": items.FIELD_NAMES[attr], "label": label, "type": kind_,
         "hint": hint, "required": attr in required}
        for attr, field in FIELDS.items() if attr in allowed
        for label, kind_, hint in [KIND_FIELDS.get((kind, attr), field)]
    ]


def _form(org: Org, token: str, kind: str, status: int = 200, **context: Any) -> Any:
    g.lang = "ja"
    return render_template(
        "submit.html.j2", org=org, token=token, kind=kind, kinds=items.KIND_LABELS,
        fields=_fields(kind) if kind else [], **{"values": {}, "missing": [], "error": "", **context},
    ), status


@bp.get("/submit/<token>")
def form(token: str) -> Any:
    """The kinds to choose from, or the form of the chosen kind (?kind=event)."""
    kind = request.args.get("kind", "")
    with state().services.session() as session:
        return _form(_org(session, token), token, kind if kind in ITEM_KINDS else "")


@bp.post("/submit/<token>")
def submit(token: str) -> Any:
    """Store the item as submitted (one unit of work); the form comes back with what was wrong."""
    with state().services.session() as session:
        org = _org(session, token)
        security.check_csrf()
        kind = request.form.get("kind", "")
        if kind not in ITEM_KINDS:
            abort(400)
        given = {f["name"]: request.form.get(f["name"], "") for f in _fields(kind)}
        missing = [f["label"] for f in _fields(kind) if f["required"] and not given[f["name"]].strip()]
        if missing:
            return _form(org, token, kind, 400, values=given, missing=missing)
        web, limit_kb = state().config.web, state().services.config.compose.item_size_limit_kb
        try:
            item = items.recent_twin(session, org, kind, given, limit_kb=limit_kb)
            if item is None:
                items.check_link_limits(session, org, given, per_hour=web.submit_items_per_hour,
                                        bytes_per_day=web.submit_bytes_per_day)
                item = items.submit(session, org, kind, given, channel="web", limit_kb=limit_kb)
        except LimitExceeded as exc:  # the form is in Japanese (_form), and so is what was wrong
            return _form(org, token, kind, 429, values=given, error=exc.text("ja"))
        except InvalidInput as exc:
            session.rollback()
            return _form(org, token, kind, 400, values=given, error=exc.text("ja"))
        item_id = item.id
    # Post/Redirect/Get: reloading the page that says "received" sends nothing again
    return redirect(url_for(".submitted", token=token, item_id=item_id), 303)


@bp.get("/submit/<token>/done/<int:item_id>")
def submitted(token: str, item_id: int) -> Any:
    with state().services.read_session() as session:
        org = _org(session, token)
        item = session.get(Item, item_id)
        if item is None or item.org_id != org.id:
            abort(404)
        return render_template("submitted.html.j2", org=org, token=token, item=item,
                               kind_label=items.KIND_LABELS[item.kind])
