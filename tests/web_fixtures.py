"""Fixtures of the web tests (a pytest plugin: test modules say pytest_plugins = ["web_fixtures"])."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from web_support import LiveServer, make_services

from mailmag.config import Config
from mailmag.services import Services
from mailmag.web import create_app


@pytest.fixture
def web_services(config: Config) -> Iterator[Services]:
    """Services on the test database, the file transport (mail is not looked at)."""
    services = make_services(config)
    yield services
    services.close()


@pytest.fixture
def app(web_services: Services) -> Iterator[Flask]:
    app = create_app(web_services)
    yield app
    app.extensions["mailmag"].mailer.close()


@pytest.fixture
def live(app: Flask) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.close()


@pytest.fixture
def mail_services(config: Config, smtp_server) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    """Services that send through the aiosmtpd `smtp_server`."""
    services = make_services(smtp_server.configure(config))
    yield services
    services.close()


@pytest.fixture
def mail_app(mail_services: Services) -> Iterator[Flask]:
    app = create_app(mail_services)
    yield app
    app.extensions["mailmag"].mailer.close()


@pytest.fixture
def mail_live(mail_app: Flask) -> Iterator[LiveServer]:
    server = LiveServer(mail_app)
    yield server
    server.close()
