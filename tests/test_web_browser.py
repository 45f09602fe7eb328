"""End to end in a real headless Chromium (Debian's; never a downloaded one): subscribe, confirm
from the mail aiosmtpd caught, unsubscribe by clicking, on a phone-sized screen."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import waitress.server
from conftest import SECRET
from web_support import LiveServer, link_in, make_services

from mailmag import links
from mailmag.audience import subscribers
from mailmag.config import Config, DatabaseConfig, GeneralConfig
from mailmag.web import create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
PHONE = {"viewport": {"width": 375, "height": 812}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True, "locale": "ja-JP"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


class _Site(LiveServer):
    """A live server whose app is made after the port is known (links in mail must point at it)."""

    def __init__(self) -> None:
        self.app = None
        self.server = waitress.server.create_server(lambda e, r: self.app(e, r), host="127.0.0.1", port=0,
                                                    threads=4)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"

    def start(self, app) -> None:  # type: ignore[no-untyped-def]
        import threading

        self.app = app
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()


@pytest.fixture
def chromium() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing, and CI must run the browser test (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def served(make_config: Callable[[str], Config]) -> Iterator[_Site]:
    """The web app on a loopback port, with the configuration made for that port's URL."""
    site = _Site()
    services = make_services(make_config(site.url))
    app = create_app(services)
    site.start(app)
    site.services = services
    try:
        yield site
    finally:
        site.close()
        app.extensions["mailmag"].mailer.close()
        services.close()


@pytest.fixture
def site(tmp_path, smtp_server):  # type: ignore[no-untyped-def]
    with served(lambda url: Config(
        mailmag=GeneralConfig(base_url=url), smtp=smtp_server.smtp_config(), secret_key=SECRET,
        database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'm.db'}"),
    )) as site:
        yield site


def _status(services, email: str) -> str:  # type: ignore[no-untyped-def]
    with services.session() as session:
        return subscribers.get(session, email).status


def test_subscribe_confirm_and_unsubscribe_in_a_real_browser(chromium, site, smtp_server, tmp_path):
    from playwright.sync_api import expect

    page = chromium.new_page(**PHONE)
    problems: list[str] = []  # a CSP violation or a failed asset shows up here
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    # (a request the next navigation cancels, net::ERR_ABORTED, is no problem)
    page.on("requestfailed", lambda r: problems.append(f"{r.failure}: {r.url}")
            if "ERR_ABORTED" not in (r.failure or "") else None)
    page.on("response", lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)

    page.goto(f"{site.url}/subscribe")
    page.get_by_label("メールアドレス").fill("browser@example.jp")
    page.get_by_label("お名前").fill("ブラウザ 太郎")
    page.get_by_label("イベント案内").check()
    page.get_by_label("上記に同意して申し込みます").check()
    page.screenshot(path=tmp_path / "subscribe-375.png", full_page=True)
    page.get_by_role("button", name="確認メールを受け取る").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("お申し込みを受け付けました")
    assert _status(site.services, "browser@example.jp") == "pending"

    site.app.extensions["mailmag"].mailer.wait()
    [mail] = smtp_server.messages
    page.goto(link_in(mail.data, "confirm"))
    assert _status(site.services, "browser@example.jp") == "pending"  # opening the link is not enough
    page.get_by_role("button", name="登録を完了する").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("登録が完了しました")
    assert _status(site.services, "browser@example.jp") == "active"

    with site.services.session() as session:
        subscriber = subscribers.get(session, "browser@example.jp")
        subscriber_id, key = subscriber.id, subscriber.link_key
    page.goto(links.unsubscribe_url(site.url, SECRET, subscriber_id, key))
    expect(page.locator(".address")).to_have_text("browser@example.jp")
    page.get_by_role("button", name="配信を停止する").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("配信を停止しました")
    assert _status(site.services, "browser@example.jp") == "unsubscribed"

    shot = tmp_path / "unsubscribed-375.png"
    page.screenshot(path=shot, full_page=True)
    # The page fits the phone: nothing wider than the screen, text at a readable size.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 16
    assert problems == []
    if os.environ.get("MAILMAG_SCREENSHOTS"):  # to look at them: MAILMAG_SCREENSHOTS=/some/dir
        for png in tmp_path.glob("*-375.png"):
            shutil.copy(png, Path(os.environ["MAILMAG_SCREENSHOTS"]) / png.name)
