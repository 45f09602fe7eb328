"""Fixtures of the console tests (a pytest plugin: pytest_plugins = ["web_fixtures", "admin_fixtures"])."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web_support import LiveServer, make_services

from mailmag.config import AdminConfig, Config
from mailmag.services import Services
from mailmag.web import create_app


@pytest.fixture
def admin_settings() -> AdminConfig:
    """Overridden by tests that need other [admin] settings."""
    return AdminConfig(enabled=True)


@pytest.fixture
def console_services(config: Config, admin_settings: AdminConfig) -> Iterator[Services]:
    services = make_services(config.replace(admin=admin_settings))
    yield services
    services.close()


@pytest.fixture
def console(console_services: Services) -> Iterator[LiveServer]:
    app = create_app(console_services)
    server = LiveServer(app)
    server.app = app  # type: ignore[attr-defined]  # the tests read its URL map
    yield server
    server.close()
    app.extensions["mailmag"].mailer.close()


@pytest.fixture
def mail_console(config: Config, smtp_server,  # type: ignore[no-untyped-def]
                 admin_settings: AdminConfig) -> Iterator[LiveServer]:
    """The console of an app that sends through the aiosmtpd `smtp_server` (no rate limit)."""
    services = make_services(smtp_server.configure(config, rate_per_second=0.0).replace(admin=admin_settings))
    app = create_app(services)
    server = LiveServer(app)
    server.app = app  # type: ignore[attr-defined]
    server.services = services  # type: ignore[attr-defined]
    yield server
    server.close()
    app.extensions["mailmag"].mailer.close()
    services.close()
