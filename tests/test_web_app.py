"""The app as a whole: the secret key, security headers, templates, languages, `mailmag serve`."""

from __future__ import annotations

import datetime as dt
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import time_machine
from clocked import mailmag_command
from conftest import SECRET
from sqlalchemy import select
from web_support import Client, key_of, one_click

from mailmag import links
from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import PACKAGE_TEMPLATES, GeneralConfig, WebConfig, load_config
from mailmag.errors import ConfigError
from mailmag.models import SubscribeAttempt
from mailmag.services import Services
from mailmag.web import create_app
from mailmag.web.admin import fixes
from mailmag.web.i18n import Catalog

pytest_plugins = ["web_fixtures"]
WEB_TEMPLATES = PACKAGE_TEMPLATES / "web"


def test_without_a_secret_key_the_app_refuses_to_start(config, owned_services):
    with pytest.raises(ConfigError, match="MAILMAG_SECRET_KEY is not set: export"):
        create_app(owned_services(config.replace(secret_key="")))


def test_demo_mode_runs_without_a_secret_key(config, owned_services):
    demo = config.replace(secret_key="", mailmag=GeneralConfig(base_url="http://127.0.0.1:8025", demo=True))
    assert create_app(owned_services(demo)).test_client().get("/subscribe").status_code == 200


def test_a_missing_consent_wording_version_is_a_clear_error(config, owned_services):
    with pytest.raises(ConfigError, match=r"version '9' has no wording file consent/9\.ja\.txt"):
        create_app(owned_services(config.replace(web=WebConfig(consent_wording_version="9"))))


def test_a_bad_topic_setting_is_a_clear_error(config, owned_services):
    with pytest.raises(ConfigError, match=r"\[web\] topics entry 'イベント': the code must be"):
        create_app(owned_services(config.replace(web=WebConfig(topics=["イベント"]))))


def test_pages_carry_a_strict_csp_and_no_referrer(live, web_services):
    with web_services.session() as session:
        _, subscriber = subscribers.add(session, subscribers.parse_address("a@example.jp"), Consent("cli"))
    unsubscribe = links.unsubscribe_url("https://x", SECRET, subscriber.id, subscriber.link_key)
    for path in ("/subscribe", "/archive/", unsubscribe):
        reply = Client(live.url).get(path)
        csp = reply.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "style-src 'self'" in csp and "form-action 'self'" in csp
        assert "script-src" not in csp and "unsafe-inline" not in csp
        assert reply.headers["Referrer-Policy"] == "no-referrer"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["X-Frame-Options"] == "DENY"
    assert "no-store" in Client(live.url).get(unsubscribe).headers["Cache-Control"]


def test_the_session_cookie_is_httponly_and_samesite(live):
    cookie = Client(live.url).get("/subscribe").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie  # base_url is https


def test_templates_need_no_inline_script_or_style():
    for path in WEB_TEMPLATES.glob("**/*.html.j2"):
        text = path.read_text(encoding="utf-8")
        text = re.sub(r'<script src="[^"]+" defer></script>', "", text)  # the console's one script file
        assert "<script" not in text and "<style" not in text and "style=" not in text, path.name
        assert not re.search(r"\son[a-z]+=", text), path.name  # no onclick= handlers


def test_every_page_text_has_its_english():
    catalog = Catalog.load(WEB_TEMPLATES / "messages.en.toml")
    used = set()
    for path in WEB_TEMPLATES.glob("**/*.html.j2"):  # the console's admin/ pages too
        used |= set(re.findall(r'_\("([^"]+)"', path.read_text(encoding="utf-8")))
    # the views' own sentences (a notice after an action; where a step is done: web/admin/fixes.py)
    for path in Path(fixes.__file__).parents[1].glob("**/*.py"):
        # (?<!`): not a `_("…")` quoted in a docstring
        used |= set(re.findall(r'(?<!`)_\("([^"]+)"', path.read_text(encoding="utf-8")))
    used |= {where for _label, where in fixes.PLACES.values() if where}
    assert used - set(catalog.english) == set()
    assert set(catalog.english) - used == set()  # no stale entries either


def test_mail_templates_exist_in_both_languages():
    for kind in ("confirm", "known"):
        for lang in ("ja", "en"):
            assert (WEB_TEMPLATES / "mail" / f"{kind}.{lang}.txt.j2").is_file()


def test_an_english_subscriber_sees_english_pages(live, web_services):
    with web_services.session() as session:
        _, subscriber = subscribers.add(session, subscribers.parse_address("en@example.jp"), Consent("cli"),
                                        lang="en")
    page = Client(live.url).get(links.unsubscribe_url("https://x", SECRET, subscriber.id,
                                                      subscriber.link_key))
    assert '<html lang="en">' in page.text and "This stops" in page.text
    assert "Unsubscribe</button>" in page.text


def test_an_operator_template_overrides_the_shipped_one(config, tmp_path, owned_services):
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "check_mail.html.j2").write_text("custom {{ email }}", encoding="utf-8")
    general = GeneralConfig(base_url="https://news.example.jp", templates_dir=str(tmp_path))
    custom = config.replace(mailmag=general)
    app = create_app(owned_services(custom))
    assert app.jinja_env.get_template("check_mail.html.j2").render(email="x") == "custom x"
    assert app.jinja_env.get_template("subscribe.html.j2") is not None  # the rest is the shipped set


def test_healthz(live):
    reply = Client(live.url).get("/healthz")
    assert (reply.status, reply.text) == (200, "ok\n")


def test_unknown_pages_and_methods(live):
    assert Client(live.url).get("/nope").status == 404
    assert Client(live.url).request("PUT", "/subscribe").status == 405


def test_serve_refuses_without_a_secret_key(mailmag):
    result = mailmag("serve", "--port", "0", env={"MAILMAG_SECRET_KEY": ""})
    assert result.exit_code == 1
    assert "MAILMAG_SECRET_KEY is not set" in result.stderr


def _serve(config_file: Path) -> tuple[subprocess.Popen, str, str]:
    """A real `mailmag serve` process (on this test's clock), its URL once it says it is
    serving, and what it said before."""
    process = subprocess.Popen(
        mailmag_command("--config", str(config_file), "serve", "--port", "0"),
        stderr=subprocess.PIPE, text=True, env={"MAILMAG_SECRET_KEY": SECRET, "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[1],
    )
    said = ""
    for line in process.stderr:
        match = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", line)
        if match:
            return process, match.group(1), said
        said += line
    process.kill()
    raise AssertionError(said)


@pytest.mark.slow  # a real `mailmag serve` process
def test_mailmag_serve_answers_one_click_over_http(mailmag, config_file, tmp_path):
    mailmag.ok("subscribers", "add", "serve@example.jp")
    process, url, _ = _serve(config_file)
    try:
        assert Client(url).get("/healthz").status == 200
        reply = one_click(url, links.unsubscribe_url("https://news.example.jp", SECRET, 1, _key(config_file)))
    finally:
        process.terminate()
        process.wait(timeout=10)
        log = process.stderr.read()
        process.stderr.close()
    assert reply.status == 200, log
    listed = mailmag.ok("subscribers", "list", "--json").output
    assert '"status": "unsubscribed"' in listed


@pytest.mark.slow  # three real `mailmag serve` processes, one killed
def test_a_confirmation_mail_lost_with_a_killed_server_can_be_asked_for_again(
        mailmag, config_file, db_url, smtp_server):
    """helper-94: the form's mails wait in the server's memory; killed while the relay was slow,
    the server lost them, and their attempts went on counting against the address's daily
    limit, so the person asking again the same day got nothing. helper-97: a second server
    starting meanwhile must not let a second mail through while the first may still send its
    own. A mail unsent a quarter of an hour after it was asked for stops counting."""
    base = config_file.read_text(encoding="utf-8").split("[smtp]")[0]

    def relay(port: int) -> None:
        config_file.write_text(base + f'[smtp]\ntransport = "smtp"\nport = {port}\nsecurity = "none"\n'
                               "timeout_seconds = 20\n", encoding="utf-8")

    def ask(url: str) -> None:
        assert Client(url).submit("/subscribe", {"email": "waiting@example.jp", "agree": "yes"}).status == 200

    def stop(process: subprocess.Popen, *, kill: bool = False) -> str:
        process.kill() if kill else process.terminate()
        process.wait(timeout=30)
        log = process.stderr.read()
        process.stderr.close()
        return log

    mailmag.ok("subscribers", "list")  # (the database, made)
    start = dt.datetime.now(dt.UTC)
    with socket.create_server(("127.0.0.1", 0)) as silent, time_machine.travel(start, tick=True):
        relay(silent.getsockname()[1])  # accepts, never greets
        slow, slow_url = _serve(config_file)[:2]
        try:
            ask(slow_url)
            relay(smtp_server.port)
            other, other_url = _serve(config_file)[:2]  # a second server, started while the first waits
            try:
                ask(other_url)
                time.sleep(1)
            finally:
                stop(other)
            assert smtp_server.messages == []  # the first server's mail may still go: no second one
        finally:
            stop(slow, kill=True)
    services = Services(load_config(config_file))

    def attempts() -> list[tuple[bool, bool]]:
        with services.session() as session:
            return [tuple(a) for a in session.execute(select(SubscribeAttempt.mailed, SubscribeAttempt.sent)
                                                      .order_by(SubscribeAttempt.id))]

    try:
        with time_machine.travel(start + dt.timedelta(minutes=20), tick=True):
            process, url = _serve(config_file)[:2]
            try:
                ask(url)
                deadline = time.monotonic() + 10  # (the mail arrives, then its attempt is marked sent)
                while attempts()[-1:] != [(True, True)] and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                log = stop(process)
        assert smtp_server.recipients() == ["waiting@example.jp"], log
        assert attempts() == [(True, False), (True, True)]  # the lost one, the one sent
    finally:
        services.close()


def _key(config_file: Path) -> str:
    services = Services(load_config(config_file))
    try:
        return key_of(services, 1)
    finally:
        services.close()


def test_purge_pending_command(mailmag):
    mailmag.ok("subscribers", "add", "wait@example.jp", "--pending")
    assert mailmag.ok("purge-pending").output.strip() == "purged 0 unconfirmed subscribers"


def test_pages_that_only_read_do_not_wait_for_a_writer(app, web_services, db_url):
    """A long write (a 100 000-row import) must not stall the archive or an unsubscribe page."""
    import sqlite3

    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL readers never wait for writers")
    with web_services.session() as session:
        subscriber = subscribers.add(session, subscribers.parse_address("r@example.jp"),
                                     subscribers.Consent("cli"))[1]
        subscriber_id, key = subscriber.id, subscriber.link_key
    writer = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=1)
    writer.execute("BEGIN IMMEDIATE")
    try:
        client = app.test_client()
        assert client.get("/archive/").status_code == 200
        assert client.get("/healthz").status_code == 200
        page = links.unsubscribe_url("http://localhost", web_services.secret_key, subscriber_id, key)
        assert client.get(page.removeprefix("http://localhost")).status_code == 200
    finally:
        writer.execute("ROLLBACK")
        writer.close()
