"""Orgs and their submission links, automatic issues (schedules), and bounces and suppressions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for

from mailmag.audience import lookup
from mailmag.content import orgs
from mailmag.errors import InvalidInput
from mailmag.models import utcnow
from mailmag.scheduling import jobs
from mailmag.web import state
from mailmag.web.admin import act, needs

bp: Blueprint = Blueprint("council", __name__)


@bp.get("/orgs/")
@needs("manage")
def orgs_index() -> Any:
    with state().services.read_session() as db:
        return render_template("admin/orgs.html.j2", orgs=orgs.listing(db), counts=orgs.item_counts(db))


@bp.post("/orgs/")
@needs("manage")
def orgs_add() -> Any:
    form = request.form
    with state().services.session() as db:
        org = orgs.add(db, form.get("code", ""), form.get("name", ""), form.get("short_name", ""),
                       form.get("contact", ""))
        act(db, "org.add", f"{org.code} {org.name}")
        code = org.code
    return redirect(url_for(".org_show", code=code), 303)


@bp.get("/orgs/<code>")
@needs("manage")
def org_show(code: str) -> Any:
    with state().services.read_session() as db:
        org = orgs.get(db, code)
        link = orgs.submission_link(state().config.mailmag.base_url, state().secret, org)
        return render_template("admin/org.html.j2", org=org, link=link)


@bp.post("/orgs/<code>/rotate")
@needs("manage")
def org_rotate(code: str) -> Any:
    with state().services.session() as db:
        orgs.rotate_token(db, orgs.get(db, code))
        act(db, "org.rotate-link", code)
    return redirect(url_for(".org_show", code=code), 303)


@bp.get("/schedules/")
@needs("compose")
def schedules() -> Any:
    now = utcnow()
    with state().services.read_session() as db:
        return render_template("admin/schedules.html.j2", now=now, topics=state().topics,
                               autos=jobs.list_auto(db, state().config, now))


@bp.post("/schedules/")
@needs("send")
def schedules_add() -> Any:
    cron = request.form.get("cron", "")
    if not cron.strip():
        raise InvalidInput("give the times as a crontab line, e.g. 0 9 1,15 * *",
                           ja="送信する日時を crontab の行で入力してください（例：0 9 1,15 * *）")
    with state().services.session() as db:
        added = jobs.add_auto(db, cron, request.form.get("name"), state().config,
                              topic=request.form.get("topic") or None)  # (checked there, as the CLI's)
        act(db, "schedule.add", f"{added.id} {added.cron} {added.name} {added.topic or ''}".rstrip())
    return redirect(url_for(".schedules"), 303)


@bp.post("/schedules/<int:schedule_id>/remove")
@needs("send")
def schedules_remove(schedule_id: int) -> Any:
    with state().services.session() as db:
        name = jobs.remove_auto(db, schedule_id)
        act(db, "schedule.remove", f"{schedule_id} {name}")
    return redirect(url_for(".schedules"), 303)


@bp.get("/bounces/")
@needs("manage")
def bounces() -> Any:
    with state().services.read_session() as db:
        return render_template("admin/bounces.html.j2", bounces=lookup.recent_bounces(db),
                               suppressions=lookup.suppressions(db))
