"""Subscribers (owners only): search, one subscriber with the consent history."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from mailmag.audience import lookup
from mailmag.web import state
from mailmag.web.admin import needs

bp = Blueprint("people", __name__, url_prefix="/subscribers")


@bp.get("/")
@needs("manage")
def index() -> Any:
    query = request.args.get("q", "")[:200]
    with state().services.read_session() as db:
        return render_template("admin/subscribers.html.j2", found=lookup.search(db, query), query=query)


@bp.get("/<int:subscriber_id>")
@needs("manage")
def show(subscriber_id: int) -> Any:
    with state().services.read_session() as db:
        return render_template("admin/subscriber.html.j2", subscriber=lookup.by_id(db, subscriber_id),
                               history=lookup.history(db, subscriber_id))
