"""Reviewing items: the queue by org and kind, one item as subscribers see it, edit, approve, reject."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for

from mailmag.content import drafts, issues, items, orgs
from mailmag.errors import InvalidInput, StateError
from mailmag.models import ITEM_KINDS, ITEM_STATUSES
from mailmag.web import state
from mailmag.web.admin import act, fixes, needs
from mailmag.web.submit import FIELDS

bp: Blueprint = Blueprint("items", __name__, url_prefix="/items")


def _choice(name: str, allowed: tuple[str, ...] | list[str]) -> str | None:
    value = request.args.get(name, "")
    return value if value in allowed else None


@bp.get("/")
@needs("review")
def index() -> Any:
    with state().services.read_session() as db:
        codes = [o.code for o in orgs.listing(db)]
        status = request.args.get("status", "submitted")
        chosen = {"status": status if status in ITEM_STATUSES else None,
                  "org": _choice("org", codes), "kind": _choice("kind", ITEM_KINDS)}
        found = items.listing(db, **chosen)
        return render_template("admin/items.html.j2", items=found, codes=codes, chosen=chosen,
                               statuses=ITEM_STATUSES, kinds=items.KIND_LABELS)


def _fields(kind: str) -> list[dict[str, Any]]:
    allowed = set(items.allowed_fields(kind))
    return [{"attr": attr, "name": items.FIELD_NAMES[attr], "label": label, "type": type_}
            for attr, (label, type_, _hint) in FIELDS.items() if attr in allowed]


@bp.get("/<int:item_id>")
@needs("review")
def show(item_id: int) -> Any:
    with state().services.read_session() as db:
        item = items.get(db, item_id)
        return render_template("admin/item.html.j2", item=item, fields=_fields(item.kind),
                               kind_label=items.KIND_LABELS[item.kind], version=items.version(item),
                               waiting_in=issues.waiting_in(db, item))


@bp.get("/<int:item_id>/frame")
@needs("review")
def frame(item_id: int) -> Any:
    """The item rendered as in an issue, for the sandboxed iframe."""
    from mailmag.web.admin import FRAME_CSP

    with state().services.read_session() as db:
        shown = drafts.item_preview(state().config, items.get(db, item_id))
    return shown, 200, {"Content-Security-Policy": FRAME_CSP, "X-Frame-Options": "SAMEORIGIN",
                        "Content-Type": "text/html; charset=utf-8"}


@bp.post("/<int:item_id>/edit")
@needs("review")
def edit(item_id: int) -> Any:
    with state().services.session() as db:
        item = items.get(db, item_id)
        given = {f["name"]: request.form.get(f["name"], "") for f in _fields(item.kind)}
        try:
            items.check_version(item, request.form.get("version", ""))
            items.update(db, item, given)
        except (InvalidInput, StateError) as exc:  # the form again, with what was typed and why not
            db.rollback()
            # (after another's change, the page shows theirs and the form what was typed: sending
            # it again is then a choice made having seen both)
            return render_template("admin/item.html.j2", item=item, fields=_fields(item.kind),
                                   kind_label=items.KIND_LABELS[item.kind], typed=given,
                                   version=items.version(item), waiting_in=issues.waiting_in(db, item),
                                   error=fixes.said(exc)), (
                                       409 if isinstance(exc, StateError) else 400)
        act(db, "item.edit", f"item {item_id}")
    return redirect(url_for(".show", item_id=item_id), 303)


@bp.post("/<int:item_id>/approve")
@needs("review")
def approve(item_id: int) -> Any:
    with state().services.session() as db:
        items.check_version(items.get(db, item_id), request.form.get("version", ""))
        items.approve(db, [item_id])
        act(db, "item.approve", f"item {item_id}")
    return redirect(url_for(".index"), 303)


@bp.post("/<int:item_id>/reject")
@needs("review")
def reject(item_id: int) -> Any:
    reason = request.form.get("reason", "")
    with state().services.session() as db:
        items.check_version(items.get(db, item_id), request.form.get("version", ""))
        items.reject(db, item_id, reason)
        act(db, "item.reject", f"item {item_id}: {reason}")
    return redirect(url_for(".index"), 303)
