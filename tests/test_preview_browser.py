"""The HTML preview of the reference issue in a real headless Chromium, at phone and desktop widths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SECRET, SENDER
from issue_fixtures import TODAY, add_reference_items

from mailmag import db, placeholders
from mailmag.config import Config, DatabaseConfig, GeneralConfig
from mailmag.content import issues
from mailmag.services import Services

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing, and CI must check the HTML in a browser")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(mailmag=GeneralConfig(base_url="https://news.example.jp"), sender=SENDER,
                  database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'mailmag.db'}"), secret_key=SECRET)


@pytest.fixture
def preview(config: Config, tmp_path: Path, reference_text: str) -> tuple[Path, list[str]]:
    """`issues preview 1 -o issue-1.html` of the reference issue; and its item titles."""
    services = Services(config)
    db.init_db(services.engine)
    try:
        with services.session() as session:
            titles = [item.title for item in add_reference_items(session, reference_text)]
            issues.compose(session, config, today=TODAY)
            page = issues.preview(session, config, 1, "html")
    finally:
        services.close()
    path = tmp_path / "issue-1.html"
    path.write_text(page, encoding="utf-8")
    return path, titles


def _open(browser, path: Path, width: int):  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(path.as_uri())
    page.screenshot(path=str(path.with_name(f"issue-1-{width}px.png")), full_page=True)
    return page


def test_phone_width_fits_without_horizontal_scrolling(browser, preview, config):
    path, titles = preview
    page = _open(browser, path, 375)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    heading = page.get_by_role("heading", name="第1号")
    assert heading.is_visible()
    # The @media rules survived premailer: the phone layout uses the smaller heading.
    assert heading.evaluate("h => getComputedStyle(h).fontSize") == "24px"
    toc = page.locator("#toc")
    assert toc.get_by_role("heading", name="今号の目次").is_visible()
    assert toc.get_by_role("link").all_inner_texts() == titles
    for title in titles:
        card_title = page.get_by_role("heading", name=title, exact=True)
        assert card_title.is_visible()
        box = card_title.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    page.close()


def test_footer_shows_the_sender_and_the_unsubscribe_link(browser, preview, config):
    path, _ = preview
    page = _open(browser, path, 375)
    footer = page.locator("td.footer")
    shown = footer.inner_text()
    sender = config.sender
    for fact in (sender.name, sender.postal_address, sender.contact, "配信停止（受信拒否）"):
        assert fact in shown, fact
    unsubscribe = footer.get_by_role("link", name="配信停止（受信拒否）の手続きはこちら")
    assert unsubscribe.is_visible()
    sample = placeholders.sample_values(config.mailmag.base_url)
    assert unsubscribe.get_attribute("href") == sample["unsubscribe_url"]
    preferences = footer.get_by_role("link", name="配信設定のページ")
    assert preferences.get_attribute("href") == sample["preferences_url"]
    page.close()


def test_desktop_width_centres_a_600px_column(browser, preview):
    path, _ = preview
    page = _open(browser, path, 800)
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    box = page.locator("table.container").bounding_box()
    assert box is not None and (box["x"], box["width"]) == (100, 600)
    heading = page.get_by_role("heading", name="第1号")
    assert heading.evaluate("h => getComputedStyle(h).fontSize") == "28px"
    web_version = page.get_by_role("link", name="Web版")
    assert web_version.is_visible() and web_version.get_attribute("href") == "https://news.example.jp/archive/1"
    assert web_version.bounding_box()["y"] < heading.bounding_box()["y"]  # the web version link is on top
    page.close()
