"""The web app under waitress with the [web] limits: one place, for `mailmag serve` and the tests.

waitress refuses a body larger than it was told before reading it, with a bare English 413 of
its own. It is therefore told the largest body any route takes (the console's subscriber import)
and MARGIN more, and each route's own limit (security.init_app, admin.LARGE_BODIES) is the
app's: a body somewhat over it is refused with the app's page in the page's language (what was
typed is still in the browser's form); only a far larger one gets waitress's, unread.
"""

from __future__ import annotations

from typing import Any

import waitress.server
from flask import Flask

MARGIN = 1024 * 1024


def make_server(app: Flask, host: str, port: int, threads: int | None = None) -> Any:
    """A waitress server for `app` (from web.create_app) on host:port; `run()` serves it."""
    web = app.extensions["mailmag"].services.config.web
    proxy = {"trusted_proxy": web.trusted_proxy, "trusted_proxy_count": 1,
             "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"}} if web.trusted_proxy else {}
    return waitress.server.create_server(
        app, host=host, port=port, threads=threads or web.threads, ident="mailmag",
        max_request_body_size=largest_body(app) + MARGIN, connection_limit=web.connection_limit,
        channel_timeout=web.channel_timeout, **proxy)


def largest_body(app: Flask) -> int:
    """The largest request body a route of `app` takes."""
    limits = [int(app.config["MAX_CONTENT_LENGTH"])]
    if "admin" in app.blueprints:
        from mailmag.web import admin

        limits.extend(admin.LARGE_BODIES.values())
    return max(limits)
