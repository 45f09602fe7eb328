"""What the console tests share: accounts, logging in, seeded items (fixtures: admin_fixtures.py)."""

from __future__ import annotations

import dataclasses
import re

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
