"""The console's access rules, over real HTTP: sessions, CSRF, roles, throttles, TOTP, escaping."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import urlencode, urlsplit

import pyotp
import pytest
from admin_support import (
    COOKIE,
    PASSWORD,
    add_admin,
    csrf_of,
    hidden_fields,
    logged_in,
    login,
    post_form,
    seed_items,
)
from conftest import one_database
from sqlalchemy import func, select, update
from web_support import Client, LiveServer

from mailmag.access import accounts
from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import AdminConfig
from mailmag.content import issues
from mailmag.models import AdminSession, AuditEntry, Delivery, Issue, Item, LoginAttempt, Subscriber, utcnow
from mailmag.services import Services
from mailmag.web import create_app

pytest_plugins = ["web_fixtures", "admin_fixtures"]


def _reader(session, consent: Consent, name: str = "") -> Subscriber:  # type: ignore[no-untyped-def]
    address = subscribers.parse_address("reader@example.jp")
    _outcome, sub = subscribers.add(session, address, consent, name=name)
    assert sub is not None
    session.flush()
    return sub


def _status(services: Services, item_id: int) -> str:
    with services.session() as session:
        return session.get(Item, item_id).status


def _audit_count(services: Services) -> int:
    with services.session() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


def _console_urls(console: LiveServer, ids: dict[str, int]) -> list[tuple[str, str]]:
    """Every console URL of the app (methods and paths), ids filled in with existing rows."""
    app = console.app  # type: ignore[attr-defined]
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint.startswith("admin.login"):
            continue
        def fill(m: re.Match) -> str:
            return str(ids.get(m.group(2), 1 if m.group(1) else "ja"))

        path = re.sub(r"<(int:)?(\w+)>", fill, rule.rule)
        found += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return found


def test_the_console_is_off_unless_enabled(live):
    assert Client(live.url).get("/admin/login").status == 404
    assert Client(live.url).get("/admin/").status == 404


def test_every_console_url_without_a_session_answers_with_the_login_page(console, console_services):
    item_id, in_issue = seed_items(console_services, ["非公開の記事タイトル", "号の記事"])
    with console_services.session() as session:
        session.get(Item, in_issue).status = "approved"
        issue = issues.compose(session, console_services.config, item_ids=[in_issue]).issue
        issue_id = issue.id
        sub = _reader(session, consent=Consent("cli", "test"), name="読者の名前")
        ids = {"item_id": item_id, "issue_id": issue_id, "subscriber_id": sub.id, "code": "hiroshima-u"}
    urls = _console_urls(console, ids)
    assert len(urls) >= 30
    visitor = Client(console.url)
    for method, path in urls:
        reply = visitor.request(method, path, b"csrf_token=x&item=1",
                                {"Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status == 303, (method, path)
        assert reply.headers["Location"].startswith("/admin/login"), (method, path)
        assert "非公開の記事タイトル" not in reply.text and "読者の名前" not in reply.text
    assert _status(console_services, item_id) == "submitted"
    with console_services.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue.status == "draft" and len(issue.entries) == 1
    assert _audit_count(console_services) == 0
    assert visitor.get("/admin/login").status == 200


def test_a_form_without_the_csrf_token_or_with_a_wrong_one_is_refused(console, console_services):
    [item_id] = seed_items(console_services, ["記事"])
    client = logged_in(console.url, console_services, "owner1", "owner")
    other = logged_in(console.url, console_services, "owner2", "owner")  # another session's token
    foreign = csrf_of(other.get(f"/admin/items/{item_id}"))
    before = _audit_count(console_services)
    assert client.post(f"/admin/items/{item_id}/approve").status == 400
    assert client.post(f"/admin/items/{item_id}/approve", {"csrf_token": "forged"}).status == 400
    assert client.post(f"/admin/items/{item_id}/approve", {"csrf_token": foreign}).status == 400
    assert _status(console_services, item_id) == "submitted"
    assert _audit_count(console_services) == before
    good = hidden_fields(client.get(f"/admin/items/{item_id}"), f"/admin/items/{item_id}/approve")
    assert client.post(f"/admin/items/{item_id}/approve", good).status == 303
    assert _status(console_services, item_id) == "approved"


def test_a_form_posted_from_another_sites_page_is_refused_with_its_token(console, console_services):
    """helper-82: the token and the SameSite cookie were the only guards; a POST that says it
    comes from another site (Origin, else Referer) is refused before it is looked at."""
    item_id, other_id = seed_items(console_services, ["記事", "別の記事"])
    client = logged_in(console.url, console_services, "owner1", "owner")
    good = hidden_fields(client.get(f"/admin/items/{item_id}"), f"/admin/items/{item_id}/approve")
    approve = f"/admin/items/{item_id}/approve"
    for header, value in (("Origin", "https://evil.example"), ("Origin", "null"),
                          ("Referer", "https://evil.example/news.example.jp/admin/"),
                          ("Origin", "http://news.example.jp"),  # base_url's host, but not https
                          ("Origin", f"ws://127.0.0.1:{urlsplit(console.url).port}")):
        assert client.post(approve, good, **{header: value}).status == 403, (header, value)
    assert _status(console_services, item_id) == "submitted"
    stranger = Client(console.url)
    token = stranger.get("/admin/login").csrf()
    add_admin(console_services, "alice", "owner")
    refused = stranger.post("/admin/login", {"csrf_token": token, "name": "alice", "password": PASSWORD},
                            Origin="https://evil.example")
    assert refused.status == 403 and COOKIE not in stranger.cookies
    # the site's own pages: the host asked for, or base_url's (behind nginx)
    assert client.post(approve, good, Origin="https://news.example.jp").status == 303
    other = hidden_fields(client.get(f"/admin/items/{other_id}"), f"/admin/items/{other_id}/approve")
    here = f"http://127.0.0.1:{urlsplit(console.url).port}/admin/items/{other_id}"
    assert client.post(f"/admin/items/{other_id}/approve", other, Referer=here).status == 303
    assert (_status(console_services, item_id), _status(console_services, other_id)) == ("approved",) * 2


def test_a_console_form_whose_bytes_are_no_utf8_is_refused_in_the_consoles_words(console, console_services):
    [item_id] = seed_items(console_services, ["記事"])
    client = logged_in(console.url, console_services, "owner1", "owner")
    good = hidden_fields(client.get(f"/admin/items/{item_id}"), f"/admin/items/{item_id}/approve")
    body = (urlencode(good) + "&note=%93%FA%96%7B").encode()  # 日本 in Shift_JIS
    reply = client.request("POST", f"/admin/items/{item_id}/approve", body,
                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 400 and "文字コードが UTF-8 ではありません" in reply.text
    assert "ログアウト" in reply.text  # the console's page, with its way back
    assert _status(console_services, item_id) == "submitted"


def test_the_login_form_itself_needs_its_csrf_token(console, console_services):
    add_admin(console_services, "alice", "owner")
    client = Client(console.url)
    reply = client.post("/admin/login", {"name": "alice", "password": PASSWORD})
    assert reply.status == 400 and COOKIE not in client.cookies


def test_a_role_changed_at_the_terminal_holds_from_the_next_page(console, console_services):
    [item_id] = seed_items(console_services, ["記事"])
    with console_services.session() as session:
        session.get(Item, item_id).status = "approved"
        issue_id = issues.compose(session, console_services.config, item_ids=[item_id]).issue.id
    sender = logged_in(console.url, console_services, "sato", "sender")
    assert sender.get(f"/admin/issues/{issue_id}/send").status == 200
    with console_services.session() as session:
        accounts.set_role(session, "sato", "editor")
    assert sender.get(f"/admin/issues/{issue_id}/send").status == 403
    assert sender.get("/admin/").status == 200  # still logged in, as an editor


def test_a_next_page_with_a_line_break_falls_back_to_the_dashboard(console, console_services):
    add_admin(console_services, "alice", "owner")
    client = Client(console.url)
    token = csrf_of(client.get("/admin/login"))
    reply = client.post("/admin/login", {"csrf_token": token, "name": "alice", "password": PASSWORD,
                                         "next": "/admin/\r\nX-Injected: 1"})
    assert reply.status == 303 and reply.headers["Location"] == "/admin/"
    assert "X-Injected" not in reply.headers


def test_an_editor_cannot_send_schedule_or_see_consent_history(console, console_services):
    [item_id] = seed_items(console_services, ["記事"])
    with console_services.session() as session:
        session.get(Item, item_id).status = "approved"
        issue_id = issues.compose(session, console_services.config, item_ids=[item_id]).issue.id
        sub = _reader(session, consent=Consent("cli", "秘密の経路"))
    editor = logged_in(console.url, console_services, "ed", "editor")
    token = csrf_of(editor.get(f"/admin/issues/{issue_id}"))
    assert "テスト送信" not in editor.get(f"/admin/issues/{issue_id}").text  # no send buttons shown
    later = (utcnow() + dt.timedelta(days=3)).astimezone(console_services.config.zone)
    base = f"/admin/issues/{issue_id}"
    for path, form in [(f"{base}/send", {}), (f"{base}/send", {"at": later.strftime("%Y-%m-%d %H:%M")}),
                       (f"{base}/test", {}), (f"{base}/cancel", {})]:
        assert editor.post(path, {"csrf_token": token, **form}).status == 403, path
    assert editor.get(f"/admin/issues/{issue_id}/send").status == 403
    history = editor.get(f"/admin/subscribers/{sub.id}")
    assert history.status == 403 and "秘密の経路" not in history.text
    assert editor.get("/admin/subscribers/").status == 403
    with console_services.session() as session:
        assert session.get(Issue, issue_id).status == "draft"
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
    owner = logged_in(console.url, console_services, "boss", "owner")
    assert "秘密の経路" in owner.get(f"/admin/subscribers/{sub.id}").text
    # The editor does what an editor does.
    retitled = editor.post(f"/admin/issues/{issue_id}/title", {"csrf_token": token, "title": "新しい題"})
    assert retitled.status == 303


@pytest.fixture
def admin_settings() -> AdminConfig:
    return AdminConfig(enabled=True, max_failed_logins=10, max_failed_logins_per_ip=30, lockout_minutes=15)


def test_ten_wrong_passwords_lock_the_account_for_a_while(console, console_services):
    add_admin(console_services, "alice", "owner")
    add_admin(console_services, "bob", "owner")
    client = Client(console.url)
    for _ in range(10):
        reply = login(client, "alice", "wrong password!")
        assert reply.status == 401 and COOKIE not in client.cookies
    locked = login(client, "alice")  # the right password, too late
    assert locked.status == 401 and COOKIE not in client.cookies
    assert "ログインの失敗が多すぎます" in locked.text
    assert login(Client(console.url), "bob").status == 303  # another account is not locked
    with console_services.session() as session:  # the lockout window passes
        for attempt in session.scalars(select(LoginAttempt)):
            attempt.at -= dt.timedelta(minutes=16)
    assert login(client, "alice").status == 303 and COOKIE in client.cookies


def _age_attempts(services, minutes: int) -> None:  # type: ignore[no-untyped-def]
    with services.session() as session:
        for attempt in session.scalars(select(LoginAttempt)):
            attempt.at -= dt.timedelta(minutes=minutes)


def test_a_locked_account_opens_when_its_window_passes_however_often_it_was_tried(console, console_services):
    """helper-82: each attempt refused by the lock was recorded as a failure, so someone who
    tried the right password every minute or so kept the lock for good."""
    add_admin(console_services, "alice", "owner")
    client = Client(console.url)
    for _ in range(10):
        assert login(client, "alice", "wrong password!").status == 401
    _age_attempts(console_services, 10)
    for _ in range(10):  # the right password, again and again within the lock
        assert "ログインの失敗が多すぎます" in login(client, "alice").text
    _age_attempts(console_services, 6)  # 16 minutes since the ten failures
    assert login(client, "alice").status == 303 and COOKIE in client.cookies


def test_a_lock_lasts_lockout_minutes_from_when_it_began(console, console_services):
    """helper-84: the window counted from the first failure, so a lock begun late in it (one
    failure, then nine ten minutes later) lasted five minutes of the fifteen."""
    add_admin(console_services, "alice", "owner")
    client = Client(console.url)
    assert login(client, "alice", "wrong password!").status == 401
    _age_attempts(console_services, 10)
    for _ in range(9):
        assert login(client, "alice", "wrong password!").status == 401
    _age_attempts(console_services, 6)  # the first is 16 minutes old, the lock 6 minutes
    assert "ログインの失敗が多すぎます" in login(client, "alice").text
    _age_attempts(console_services, 10)  # 16 minutes since the lock began
    assert login(client, "alice").status == 303 and COOKIE in client.cookies


def test_many_failures_from_one_address_block_it(console, console_services, monkeypatch):
    add_admin(console_services, "alice", "owner")
    for n in range(30):
        assert login(Client(console.url), f"guess{n}", "whatever-password").status == 401
    refused = login(Client(console.url), "alice")
    assert refused.status == 401 and "ログインの失敗が多すぎます" in refused.text


def test_a_stolen_cookie_is_useless_after_logout(console, console_services):
    client = logged_in(console.url, console_services, "alice", "owner")
    stolen = client.cookies[COOKIE]
    assert client.get("/admin/").status == 200
    token = csrf_of(client.get("/admin/"))
    assert client.post("/admin/logout", {"csrf_token": token}).status == 303
    thief = Client(console.url)
    thief.cookies[COOKIE] = stolen
    reply = thief.get("/admin/")
    assert reply.status == 303 and reply.headers["Location"].startswith("/admin/login")
    with console_services.session() as session:
        assert session.scalar(select(func.count()).select_from(AdminSession)) == 0


def test_a_session_id_planted_before_login_is_replaced_and_worthless(console, console_services):
    add_admin(console_services, "alice", "owner")
    victim = Client(console.url)
    victim.cookies[COOKIE] = "planted-by-the-attacker"
    assert login(victim, "alice").status == 303
    assert victim.cookies[COOKIE] != "planted-by-the-attacker"
    attacker = Client(console.url)
    attacker.cookies[COOKIE] = "planted-by-the-attacker"
    assert attacker.get("/admin/").status == 303
    # Logging in again rotates the id: the earlier one ends.
    first = victim.cookies[COOKIE]
    assert login(victim, "alice").status == 303 and victim.cookies[COOKIE] != first
    old = Client(console.url)
    old.cookies[COOKIE] = first
    assert old.get("/admin/").status == 303
    assert victim.get("/admin/").status == 200


def test_the_session_cookie_is_strict(console, console_services):
    add_admin(console_services, "alice", "owner")
    client = Client(console.url)
    reply = login(client, "alice")
    cookie = next(c for c in reply.headers.get_all("Set-Cookie") if c.startswith(COOKIE))
    for flag in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/admin/"):  # base_url is https
        assert flag in cookie


def test_sessions_end_after_idle_and_absolute_timeouts(console, console_services):
    client = logged_in(console.url, console_services, "alice", "owner")
    assert client.get("/admin/").status == 200
    with console_services.session() as session:
        session.execute(update(AdminSession).values(last_seen_at=utcnow() - dt.timedelta(minutes=31)))
    assert client.get("/admin/").status == 303
    client = logged_in(console.url, console_services, "bob", "owner")
    with console_services.session() as session:
        session.execute(update(AdminSession).values(created_at=utcnow() - dt.timedelta(hours=13)))
    assert client.get("/admin/").status == 303


def test_someone_at_work_stays_logged_in_under_a_one_minute_idle_limit(console_services):
    """helper-100: the session was touched once a minute, so with session_idle_minutes = 1 a page
    opened every 20 s was logged out at the 60th second (and what was typed in a form was lost)."""
    import dataclasses

    from mailmag.access import logins

    add_admin(console_services, "alice", "owner")
    policy = dataclasses.replace(console_services.config.admin, session_idle_minutes=1)
    start = utcnow()
    with console_services.session() as session:
        token = logins.start(session, accounts.get(session, "alice"), "127.0.0.1", "test", now=start).token
    for seconds in range(20, 201, 20):  # a page every 20 s for over three minutes
        with console_services.session() as session:
            at = start + dt.timedelta(seconds=seconds)
            assert logins.resume(session, policy, token, now=at) is not None, seconds
    with console_services.session() as session:  # and away for more than the minute: logged out
        assert logins.resume(session, policy, token, now=start + dt.timedelta(seconds=262)) is None


@one_database  # (PostgreSQL: a touch waits for no import)
def test_a_page_whose_session_is_due_a_touch_waits_for_no_import(console, console_services):
    """helper-102: a page whose session was due its minute's touch waited for SQLite's write lock
    while an import held it, and answered 503 after busy_timeout_seconds. It is served as read,
    and a later page touches the session; an expired one is refused all the same."""
    import sqlite3

    client = logged_in(console.url, console_services, "alice", "owner")
    gone = logged_in(console.url, console_services, "bob", "owner")
    a_while_ago = utcnow() - dt.timedelta(minutes=2)
    with console_services.session() as session:
        session.execute(update(AdminSession).values(last_seen_at=a_while_ago))
        session.execute(update(AdminSession).where(AdminSession.admin.has(name="bob")).values(
            last_seen_at=utcnow() - dt.timedelta(minutes=31)))
    path = console_services.config.database.url.removeprefix("sqlite:///")
    importer = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        importer.execute("BEGIN IMMEDIATE")
        assert client.get("/admin/").status == 200
        assert gone.get("/admin/").status == 303  # to the login
        importer.execute("ROLLBACK")
    finally:
        importer.close()
    with console_services.session() as session:
        assert session.scalar(select(AdminSession.last_seen_at).where(AdminSession.admin.has(name="alice"))
                              ) == a_while_ago  # not touched while the lock was held
    assert client.get("/admin/").status == 200
    with console_services.session() as session:
        assert session.scalar(select(AdminSession.last_seen_at).where(AdminSession.admin.has(name="alice"))
                              ) > a_while_ago


def test_a_password_reset_ends_every_session_of_the_account(console, console_services):
    client = logged_in(console.url, console_services, "alice", "owner")
    with console_services.session() as session:
        assert accounts.reset_password(session, "alice", "another long password") == 1
    assert client.get("/admin/").status == 303
    assert login(Client(console.url), "alice").status == 401
    assert login(Client(console.url), "alice", "another long password").status == 303


def test_a_replaced_or_removed_one_time_code_ends_every_session_of_the_account(console, console_services):
    """A code is replaced because a phone was lost or taken: whoever has it may be logged in."""
    client = logged_in(console.url, console_services, "alice", "owner", totp=True)
    assert client.get("/admin/").status == 200
    with console_services.session() as session:
        new_secret = accounts.set_totp(session, "alice")
    assert client.get("/admin/").status == 303  # to the login
    again = Client(console.url)
    assert login(again, "alice", code=pyotp.TOTP(new_secret).now()).status == 303
    with console_services.session() as session:
        accounts.clear_totp(session, "alice")
    assert again.get("/admin/").status == 303


def test_allowed_networks_hide_the_console_from_other_addresses(config):
    services = Services(config.replace(admin=AdminConfig(enabled=True, allowed_networks=["10.0.0.0/8"])))
    from mailmag import db

    db.init_db(services.engine)
    server = LiveServer(create_app(services))
    try:
        assert Client(server.url).get("/admin/login").status == 404
        assert Client(server.url).get("/archive").status in (200, 301, 302, 308)
    finally:
        server.close()
        services.close()


def test_console_pages_carry_the_strict_policy(console, console_services):
    client = logged_in(console.url, console_services, "alice", "owner")
    reply = client.get("/admin/")
    csp = reply.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("role", ["sender", "owner"])
def test_require_totp_refuses_senders_without_a_code(console_services, config, role):
    services = Services(config.replace(admin=AdminConfig(enabled=True, require_totp=True)))
    server = LiveServer(create_app(services))
    try:
        add_admin(services, "nocode", role)
        reply = login(Client(server.url), "nocode")
        assert reply.status == 401 and "mailmag admins totp アカウント名" in reply.text
        # helper-70: the answer to the right password was another than to a wrong one
        wrong = login(Client(server.url), "nocode", password="not-the-password")
        assert (wrong.status, _said(wrong)) == (401, _said(reply))
        add_admin(services, "editor1", "editor")  # editors are not asked for one
        assert login(Client(server.url), "editor1").status == 303
        secret = add_admin(services, "withcode", role, totp=True)
        assert login(Client(server.url), "withcode", code="000000" if pyotp.TOTP(secret).now() != "000000"
                     else "111111").status == 401
        code = pyotp.TOTP(secret).now()
        assert login(Client(server.url), "withcode", code=code).status == 303
        assert login(Client(server.url), "withcode", code=code).status == 401  # a code works once
    finally:
        server.close()
        services.close()


def _said(reply) -> str:  # type: ignore[no-untyped-def]
    """The login page's message, without the form's per-request token."""
    return re.sub(r'name="csrf_token" value="[^"]*"', "", reply.text)


XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_stored_markup_from_orgs_and_subscribers_is_shown_as_text_everywhere(console, console_services):
    ids = seed_items(console_services, [f"タイトル{XSS}", f"二つ目{XSS}"], org_name=f"団体{XSS}")
    with console_services.session() as session:
        for item_id in ids:
            session.get(Item, item_id).status = "approved"
        issue = issues.compose(session, console_services.config, item_ids=ids[:1]).issue
        sub = _reader(session, consent=Consent("cli", f"経路{XSS}"),
                              name=f"名前{XSS}"[:200])
        issue_id, sub_id = issue.id, sub.id
    client = logged_in(console.url, console_services, "alice", "owner")
    assert post_form(client, f"/admin/items/{ids[1]}", f"/admin/items/{ids[1]}/reject",
                     reason=f"理由{XSS}").status == 303
    pages = ["/admin/", "/admin/items/?status=approved", "/admin/items/?status=rejected",
             f"/admin/items/{ids[0]}", f"/admin/items/{ids[1]}", "/admin/issues/",
             f"/admin/issues/{issue_id}",
             f"/admin/issues/{issue_id}/send", "/admin/subscribers/", f"/admin/subscribers/{sub_id}",
             "/admin/audit", "/admin/orgs/", "/admin/orgs/hiroshima-u", "/admin/bounces/",
             "/admin/schedules/"]
    quiet = ("/admin/", "/admin/issues/", f"/admin/issues/{issue_id}/send", "/admin/bounces/",
             "/admin/schedules/")  # the pages that show none of the stored text
    for page in pages:
        reply = client.get(page)
        assert reply.status == 200, page
        assert "<script>alert" not in reply.text and "<img src=x" not in reply.text, page
        if page not in quiet:
            assert "&lt;script&gt;" in reply.text, page
    for frame in (f"/admin/items/{ids[0]}/frame", f"/admin/issues/{issue_id}/frame/ja"):
        reply = client.get(frame)
        assert "<script>alert" not in reply.text and "<img src=x" not in reply.text, frame
        assert "sandbox" in reply.headers["Content-Security-Policy"]


def test_the_console_speaks_english_when_asked_and_remembers_it(console, console_services):
    add_admin(console_services, "alice", "owner")
    client = Client(console.url)
    assert "ワンタイムコード" in client.get("/admin/login").text
    english = client.get("/admin/login?lang=en").text
    assert "Account name" in english and 'lang="en"' in english
    assert login(client, "alice").status == 303
    assert "Items waiting for review" in client.get("/admin/").text


def test_a_login_sweeps_old_attempts_and_expired_sessions(console, console_services):
    stale = utcnow() - dt.timedelta(days=3)
    with console_services.session() as session:
        admin = accounts.add(session, "alice", "a@example.jp", "owner", PASSWORD)
        session.add(LoginAttempt(name="someone", ip="192.0.2.1", ok=False, at=stale))
        session.add(AdminSession(token_hash="0" * 64, admin_id=admin.id, csrf="x", created_at=stale,
                                 last_seen_at=stale))
    assert login(Client(console.url), "alice").status == 303
    with console_services.session() as session:
        old = select(func.count()).select_from(LoginAttempt).where(LoginAttempt.name == "someone")
        assert session.scalar(old) == 0
        assert session.scalar(select(func.count()).select_from(AdminSession)) == 1  # the new one only


def test_removing_an_account_ends_its_sessions_and_keeps_its_audit_entries(console, console_services):
    client = logged_in(console.url, console_services, "ed", "editor")
    with console_services.session() as session:
        accounts.remove(session, "ed")
    assert client.get("/admin/items/").status == 303
    with console_services.session() as session:
        assert session.scalar(select(func.count()).select_from(AdminSession)) == 0
        assert session.scalar(select(AuditEntry.actor).where(AuditEntry.action == "login")) == "ed"
