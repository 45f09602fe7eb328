"""Subscribers (owners only): search, one with its consent history, unsubscribe, forget, import, export."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for

from mailmag.audience import exports, imports, lookup, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.errors import InvalidInput
from mailmag.web import security, state
from mailmag.web.admin import act, needs, viewer

bp: Blueprint = Blueprint("people", __name__, url_prefix="/subscribers")
# A CSV of this size holds tens of thousands of rows; larger lists go through `subscribers import`.
UPLOAD_LIMIT = 8 * 1024 * 1024
# An export's encoding (exports.ENCODINGS) as the Content-Type names it: a browser that shows
# the file, and a program that reads the header, decode it as written.
CHARSETS = {"utf-8-sig": "utf-8", "cp932": "Shift_JIS"}


def _consent(what: str) -> Consent:
    return Consent("console", f"{what} by {viewer().name} in the console", security.client_ip(),
                   security.user_agent())


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


@bp.post("/<int:subscriber_id>/unsubscribe")
@needs("manage")
def unsubscribe(subscriber_id: int) -> Any:
    with state().services.session() as db:
        subscriber = lookup.by_id(db, subscriber_id)
        subscribers.unsubscribe(db, subscriber, _consent("unsubscribed"))
        act(db, "subscriber.unsubscribe", f"subscriber {subscriber_id}")
    return redirect(url_for(".show", subscriber_id=subscriber_id), 303)


@bp.post("/<int:subscriber_id>/forget")
@needs("manage")
def forget(subscriber_id: int) -> Any:
    with state().services.session() as db:
        subscribers.forget(db, lookup.by_id(db, subscriber_id), _consent("erased"))
        act(db, "subscriber.forget", f"subscriber {subscriber_id}")  # no address: it is erased
    return redirect(url_for(".index"), 303)


@bp.get("/export.csv")
@needs("manage")
def export() -> Any:
    encoding = request.args.get("encoding", "utf-8-sig")
    encoding = encoding if encoding in exports.ENCODINGS else "utf-8-sig"
    with state().services.session() as db:
        data, count = exports.export_bytes(db, encoding=encoding, zone=state().config.zone)
        act(db, "subscribers.export", f"{count} subscribers")
    return Response(data, content_type=f"text/csv; charset={CHARSETS[encoding]}", headers={
        "Content-Disposition": 'attachment; filename="subscribers.csv"'})


@bp.get("/import")
@needs("manage")
def import_form() -> Any:
    return render_template("admin/import.html.j2", preview=None, payload="", encoding="auto")


def _uploaded() -> tuple[bytes, str]:
    """The CSV of the first step (a file) or of the confirmation (carried back as base64)."""
    encoding = request.form.get("encoding", "auto")
    if encoding not in imports.ENCODINGS:
        raise InvalidInput(f"unknown encoding {encoding!r}",
                           ja=f"文字コード「{encoding}」には対応していません")
    if "file" in request.files and request.files["file"].filename:
        return request.files["file"].read(UPLOAD_LIMIT + 1), encoding
    try:
        return base64.b64decode(request.form.get("payload", ""), validate=True), encoding
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("the file of the preview did not come back whole: choose it again",
                           ja="確認用に読み込んだファイルが正しく戻ってきませんでした。"
                              "もう一度ファイルを選んでください") from exc


@bp.post("/import")
@needs("manage")
def import_csv() -> Any:
    """Step one (preview, nothing kept) and step two (confirm: the same rows are stored)."""
    data, encoding = _uploaded()
    if not data or len(data) > UPLOAD_LIMIT:
        raise InvalidInput("choose a CSV file (at most 8 MB; larger lists: mailmag subscribers import)",
                           ja="CSV ファイルを選んでください（8 MB まで。"
                              "それより大きい一覧はサーバーで mailmag subscribers import を使います）")
    store = request.form.get("confirm") == "1"
    services = state().services
    # The preview writes nothing, so it reads in a read session: it holds up no worker or save.
    with services.session() if store else services.read_session() as session:
        preview = lookup.preview_import(session, data, _consent("imported"), topics=state().topics,
                                        encoding=encoding, write=store)
        if store:
            act(session, "subscribers.import", preview.report.summary())
    return render_template("admin/import.html.j2", preview=preview, stored=store, encoding=encoding,
                           payload="" if store else base64.b64encode(data).decode("ascii"))
