"""A secretariat's morning in the console, in a real headless Chromium at phone width (375 px):
log in with a one-time code, review, compose, reorder, preview, test-send, schedule, cancel,
send, and watch the delivery status reach `sent` without reloading the page."""

from __future__ import annotations

import datetime as dt
import threading

import pyotp
import pytest
from admin_support import PASSWORD, add_admin, seed_items
from conftest import SECRET, SENDER
from test_web_browser import PHONE, chromium, served  # noqa: F401 - the fixture is used

from mailmag.audience import subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import AdminConfig, Config, DatabaseConfig, GeneralConfig
from mailmag.delivery.transports import make_transport
from mailmag.models import Issue, Item, utcnow
from mailmag.scheduling.sending import make_dispatcher

pytestmark = pytest.mark.browser


@pytest.fixture
def console_site(tmp_path, smtp_server):  # type: ignore[no-untyped-def]
    with served(lambda url: Config(
        mailmag=GeneralConfig(base_url=url), smtp=smtp_server.smtp_config(rate_per_second=0.0),
        secret_key=SECRET, database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'm.db'}"),
        admin=AdminConfig(enabled=True, require_totp=True), sender=SENDER,
    )) as site:
        yield site


def press(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """Activate a button from the keyboard, as many office users do.

    On pages with a sandboxed preview iframe, a mouse click synthesized right after the
    frame loads is sometimes not delivered at all by headless Chromium (the frame's hit-test
    data lags the scroll-into-view); focus + Enter takes no coordinates and never misses.
    """
    button = page.get_by_role("button", name=name, exact=True)
    button.focus()
    page.keyboard.press("Enter")


def _states(services, model, ids):  # type: ignore[no-untyped-def]
    with services.session() as session:
        return [session.get(model, i).status for i in ids]


def test_a_secretariats_morning(chromium, console_site, smtp_server, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    services = console_site.services
    ids = seed_items(services, ["秋の交流会の報告", "産学連携セミナーのご案内", "日付未定の催し"])
    with services.session() as session:
        for n in range(2):
            subscribers.add(session, subscribers.parse_address(f"member{n}@example.jp"), Consent("cli", "t"))
    secret = add_admin(services, "jimukyoku", "sender", totp=True, email="office@example.jp")
    page = chromium.new_page(**PHONE)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
    base = console_site.url

    page.goto(f"{base}/admin/")
    page.get_by_label("アカウント名").fill("jimukyoku")
    page.get_by_label("パスワード").fill(PASSWORD)
    page.get_by_label("ワンタイムコード（設定している場合）").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="ログイン").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("ダッシュボード")
    expect(page.locator("#waiting")).to_have_text("3 件")

    for item_id in ids[:2]:
        page.goto(f"{base}/admin/items/{item_id}")
        press(page, "承認する")
        expect(page.get_by_role("heading", level=1)).to_have_text("記事の確認")
    page.goto(f"{base}/admin/items/{ids[2]}")
    page.get_by_label("却下の理由（団体に伝わります）").fill("開催日が決まってから改めてお送りください")
    press(page, "却下する")
    expect(page.get_by_role("heading", level=1)).to_have_text("記事の確認")
    assert _states(services, Item, ids) == ["approved", "approved", "rejected"]

    page.get_by_role("link", name="号").first.click()
    press(page, "下書きを作る")
    entries = page.locator("ol.entries .entry-title")
    expect(entries).to_have_count(2)
    expect(entries.first).to_contain_text("秋の交流会の報告")
    press(page, f"下へ #{ids[0]}")
    expect(page.locator("ol.entries .entry-title").first).to_contain_text("産学連携セミナーのご案内")
    issue_id = int(page.url.rsplit("/", 1)[1])
    preview = page.frame_locator("iframe.preview.phone").first
    expect(preview.locator("body")).to_contain_text("秋の交流会の報告")
    page.screenshot(path=tmp_path / "console-issue-375.png", full_page=True)

    press(page, "テスト送信（office@example.jp へ）")
    expect(page.locator(".notice")).to_contain_text("office@example.jp")
    assert [m.recipients for m in smtp_server.messages] == [("office@example.jp",)]

    later = (utcnow() + dt.timedelta(days=1)).astimezone(services.config.zone).strftime("%Y-%m-%d %H:%M")
    page.get_by_label("予約日時（YYYY-MM-DD HH:MM）").fill(later)
    press(page, "予約する…")
    expect(page.locator("#confirm-text")).to_contain_text("2 人")
    press(page, "予約する")
    expect(page.locator("#issue-status")).to_have_text("送信予約済み")
    press(page, "取り消す")
    expect(page.locator("#issue-status")).to_have_text("下書き")

    press(page, "今すぐ送信…")
    expect(page.locator("#confirm-text")).to_contain_text("2 人")
    press(page, "送信する")
    expect(page.locator("#issue-status")).to_have_text("送信中")
    worker = threading.Thread(target=lambda: make_dispatcher(services, make_transport(services.config),
                                                        concurrency=1).run(once=True))
    worker.start()
    # The page's small script polls the progress: no reload here.
    expect(page.locator('[data-key="status_word"]')).to_have_text("送信済み", timeout=30_000)
    expect(page.locator('[data-key="sent"]')).to_have_text("2")
    worker.join(timeout=30)
    assert _states(services, Issue, [issue_id]) == ["sent"]
    assert sorted(r for m in smtp_server.messages[1:] for r in m.recipients) == [
        "member0@example.jp", "member1@example.jp"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert problems == []
