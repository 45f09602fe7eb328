"""The web app subscribers and member organizations use; `create_app` builds it, `mailmag serve` runs it.

Blueprints: subscription (unsubscribe, one-click, preferences, subscribe, confirm), archive
(issues, Atom, iCalendar) and submit (org forms). Views parse, call one domain function in
one unit of work, and render a template from templates/web/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from flask import Flask, current_app, g, render_template, request
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter, ValidationError

from mailmag import db, pg_answers, text_ja
from mailmag.audience import consent
from mailmag.config import PACKAGE_TEMPLATES, Config, load_config
from mailmag.errors import ConfigError, NotFound
from mailmag.models import ID_LIMIT
from mailmag.services import Services
from mailmag.web import security
from mailmag.web.cache import PageCache
from mailmag.web.i18n import Catalog, pick_lang
from mailmag.web.mailer import Mailer

log = logging.getLogger(__name__)
HEALTH_SECONDS = 5.0  # /healthz says 503 when the database has not answered by then


@dataclasses.dataclass
class WebState:
    """What the views share, built once by create_app (app.extensions["mailmag"])."""

    services: Services
    secret: str  # signs
    keys: tuple[str, ...]  # read links: secret, then the keys it replaced
    catalog: Catalog
    topics: list[consent.Topic]
    wording: dict[str, str]  # lang → the consent wording of the configured version
    mailer: Mailer
    pages: PageCache = dataclasses.field(default_factory=PageCache)  # the listings' bodies, by tag
    # One console test send at a time in a process: each waits in a web thread for the relay's
    # answer ([smtp] timeout_seconds for each command), and nine at once to a relay that answered nothing held
    # every thread, the public pages and /healthz with them, for a minute (helper-100).
    test_sends: threading.Semaphore = dataclasses.field(default_factory=lambda: threading.BoundedSemaphore(1))

    @property
    def config(self) -> Config:
        return self.services.config

    def wording_source(self, lang: str) -> str:
        """What the consent log keeps about the wording shown: version, language, digest."""
        digest = hashlib.sha256(self.wording[lang].encode("utf-8")).hexdigest()[:16]
        return f"subscribe form, wording {self.config.web.consent_wording_version} ({lang}) sha256:{digest}"


def state() -> WebState:
    return current_app.extensions["mailmag"]


def page_lang() -> str:
    return g.get("lang") or state().config.mailmag.language


def _(text_: str, **values: object) -> str:
    """The page text in the page's language (templates call it)."""
    return state().catalog.translate(page_lang(), text_, **values)


def _first(dirs: list[Path], name: str) -> Path:
    """The operator's version of a file or folder if they made one, else the shipped one."""
    return next((d / name for d in dirs if (d / name).exists()), PACKAGE_TEMPLATES / "web" / name)


def _wording(dirs: list[Path], version: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for lang in ("ja", "en"):
        for folder in dirs:
            path = folder / "consent" / f"{version}.{lang}.txt"
            if path.is_file():
                found[lang] = path.read_text(encoding="utf-8").strip()
                break
    if "ja" not in found:
        raise ConfigError(
            f"[web] consent_wording_version {version!r} has no wording file consent/{version}.ja.txt "
            "in the templates: add it (keep the files of earlier versions)"
        )
    found.setdefault("en", found["ja"])
    return found


class CanonicalInt(IntegerConverter):
    """A number in a URL as it is written once: ASCII digits, no leading zero. Werkzeug's `\\d+`
    also takes full-width digits and zeros in front, which made /archive/１ and /archive/01
    second addresses of issue 1 (for caches, search engines and links alike)."""

    regex = r"0|[1-9][0-9]*"

    def to_python(self, value: str) -> int:
        number = int(super().to_python(value))
        if number >= ID_LIMIT:  # no row has such an id: a 404
            raise ValidationError()
        return number


def create_app(services: Services | None = None, config: Config | None = None) -> Flask:
    """The Flask app for `services` (or for `config`, or the configuration file)."""
    services = services or Services(config or load_config())
    config = services.config
    secret = services.secret_key  # refuses to serve without MAILMAG_SECRET_KEY outside demo mode
    dirs = config.web_template_dirs
    loader = jinja2.FileSystemLoader([str(d) for d in dirs])
    app = Flask(__name__, static_folder=str(_first(dirs, "static")), template_folder=None)
    # Flask escapes only *.html; our page templates are *.html.j2.
    app.jinja_options = {**Flask.jinja_options, "autoescape": jinja2.select_autoescape(["html.j2"]),
                         "undefined": jinja2.StrictUndefined}
    app.jinja_loader = loader
    # Werkzeug answers /archive and //archive/ with a redirect to an absolute URL built from
    # the request's Host header (an open redirect for whoever sets it). Routes match with or
    # without the slash instead, and nothing is redirected.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    app.url_map.converters["int"] = CanonicalInt  # before the routes that use it are added
    app.extensions["mailmag"] = WebState(
        services=services, secret=secret, keys=services.verify_keys,
        catalog=Catalog.load(_first(dirs, "messages.en.toml")),
        topics=config.topics,
        wording=_wording(dirs, config.web.consent_wording_version),
        mailer=Mailer(services, secret),
    )
    security.init_app(app, secret, secure_cookie=config.mailmag.base_url.startswith("https://"),
                      max_body=config.web.max_request_body_size)
    app.jinja_env.globals.update(_=_, page_lang=page_lang, sender=config.sender,
                                 date_ja=text_ja.format_date_ja, date_en=text_ja.format_date_en)
    _register(app)
    if config.admin.enabled:
        from mailmag.web import admin

        admin.init_app(app)
    for endpoint, view in list(app.view_functions.items()):
        app.view_functions[endpoint] = _read_again_if_dropped(view)
    return app


def _read_again_if_dropped(view: Callable[..., Any]) -> Callable[..., Any]:
    """A GET or HEAD whose database connection died under it (a restart, a failover, an
    administrator's pg_terminate_backend) runs once more on a new connection: reading twice is
    harmless, and the visitor gets the page, not a 503. Other methods: subscription._repeatable
    for the consent POSTs that are safe twice, the 503 for the rest."""

    @functools.wraps(view)
    def read(*args: Any, **kwargs: Any) -> Any:
        if request.method not in ("GET", "HEAD"):
            return view(*args, **kwargs)
        return db.again_if_dropped(lambda: view(*args, **kwargs))
    return read


def _register(app: Flask) -> None:
    from mailmag.web import archive, submit, subscription

    for module in (subscription, archive, submit):
        app.register_blueprint(module.bp)
    app.add_url_rule("/healthz", "healthz", _healthz)
    app.add_url_rule("/", "home", _home)
    app.register_error_handler(NotFound, _not_found)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(OperationalError, _database_away)
    app.before_request(_wary_of_a_hung_database)
    app.teardown_request(_end_wariness)


def _database_away(error: OperationalError):
    """The database is down, restarting or locked too long: 503 with Retry-After (a mail
    provider's one-click or a load balancer may try again; a 500 says "broken"), nothing changed
    (the unit of work was rolled back)."""
    log.error("database unavailable for %s %s: %s", request.method, request.path, error.orig)
    page, status = _error_page(503)
    return page, status, {"Retry-After": "60"}


def _wary_of_a_hung_database() -> None:
    """While a database wait of this process has gone unanswered past HEALTH_SECONDS, a new
    request waits no longer than that: each page hung on a frozen server held its thread for
    [database] answer_timeout_seconds, until /healthz itself waited behind them (helper-65: 23 s).
    A long statement elsewhere costs only a quick request's patience, which it does not need."""
    if pg_answers.overdue(HEALTH_SECONDS):
        g.wary = contextlib.ExitStack()
        g.wary.enter_context(pg_answers.answer_within(HEALTH_SECONDS))


def _end_wariness(_error: BaseException | None) -> None:
    wary = g.pop("wary", None)
    if wary is not None:
        wary.close()


def _healthz() -> tuple[str, int, dict[str, str]]:
    """200 'ok' when the database answers within HEALTH_SECONDS; for load balancers and
    monitoring, whose own checks time out after a few seconds."""
    try:
        with pg_answers.answer_within(HEALTH_SECONDS), state().services.read_engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        return "database unavailable\n", 503, {"Content-Type": "text/plain; charset=utf-8"}
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8"}


def _home():
    from flask import redirect, url_for

    return redirect(url_for("archive.index"))


def _not_found(_error: NotFound):
    return _error_page(404)


def _http_error(error: HTTPException):
    reason = error.description if error.description in ("csrf", "encoding") else ""
    return _error_page(error.code or 500, reason)


def _error_page(status: int, reason: str = "") -> tuple[str, int]:
    """The error page in the page's language: the console's own under /admin/ (with its way
    back), the subscribers' elsewhere."""
    g.setdefault("lang", pick_lang(request.args.get("lang"), default=state().config.mailmag.language))
    if "admin" in current_app.blueprints and (request.path + "/").startswith("/admin/"):
        from mailmag.web import admin

        return admin.error_page(status, reason)
    return render_template("error.html.j2", status=status, reason=reason), status
