"""What the console tests share: accounts, logging in, seeded items (fixtures: admin_fixtures.py)."""

from __future__ import annotations

import dataclasses
import html
import re
from urllib.parse import quote_plus

import pyotp
from web_support import Client, Reply

from mailmag.access import accounts
from mailmag.content import items, orgs
from mailmag.services import Services

PASSWORD = "correct horse battery"
COOKIE = "mailmag_admin"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def add_admin(services: Services, name: str, role: str, *, totp: bool = False,
              email: str | None = None) -> str | None:
    with services.session() as session:
        accounts.add(session, name, email or f"{name}@example.jp", role, PASSWORD)
        return accounts.set_totp(session, name) if totp else None


def csrf_of(reply: Reply) -> str:
    match = CSRF.search(reply.text)
    assert match, "no CSRF token on the page"
    return match.group(1)


def login(client: Client, name: str, password: str = PASSWORD, code: str = "") -> Reply:
    token = csrf_of(client.get("/admin/login"))
    return client.post("/admin/login", {"csrf_token": token, "name": name, "password": password,
                                        "code": code})


def logged_in(base_url: str, services: Services, name: str, role: str, **kwargs: object) -> Client:
    secret = add_admin(services, name, role, **kwargs)  # type: ignore[arg-type]
    client = Client(base_url)
    reply = login(client, name, code=pyotp.TOTP(secret).now() if secret else "")
    assert reply.status == 303 and reply.headers["Location"] == "/admin/", reply.text
    return client


@dataclasses.dataclass
class Seeded:
    item_ids: list[int]


def seed_items(services: Services, titles: list[str], org_name: str = "広島大学") -> list[int]:
    with services.session() as session:
        org = orgs.add(session, "hiroshima-u", org_name)
        made = [items.submit(session, org, "news", {"title": t, "body": f"{t} の本文です。"}) for t in titles]
        session.flush()
        return [item.id for item in made]


FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', re.S)
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def hidden_fields(reply: Reply, action: str) -> dict[str, str]:
    """The hidden fields of the page's form that posts to `action`, as a browser sends them:
    its CSRF token, and the version of what the page showed."""
    for target, body in FORM.findall(reply.text):
        if html.unescape(target) == action:
            return {name: html.unescape(value) for name, value in HIDDEN.findall(body)}
    raise AssertionError(f"no form posts to {action}")


def post_form(client: Client, page: str, action: str, **typed: str) -> Reply:
    """Open `page` and send its form for `action`, with `typed` filled in (a browser's submit)."""
    return client.post(action, {**hidden_fields(client.get(page), action), **typed})


def send_from_console(client: Client, issue_path: str, at: str = "") -> Reply:
    """「今すぐ送信…」 or 「予約する…」, then the confirmation page's button."""
    page = f"{issue_path}/send" + (f"?at={quote_plus(at)}" if at else "")
    return post_form(client, page, f"{issue_path}/send")
