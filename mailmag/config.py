"""Configuration: one TOML file, environment overrides, secrets from the environment only.

Every setting is declared once below, as a dataclass field with its default; the loader,
the environment overrides and the test that keeps `config.example.toml` complete all read
these declarations. Relative paths in a file are resolved against that file's directory
(so cron and systemd may start mailmag from anywhere); built-in defaults against the
current directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailmag import topics as topics_mod
from mailmag.errors import ConfigError

ENV_CONFIG = "MAILMAG_CONFIG"
ENV_SECRET_KEY = "MAILMAG_SECRET_KEY"
ENV_SMTP_PASSWORD = "MAILMAG_SMTP_PASSWORD"
# Keys MAILMAG_SECRET_KEY replaced, separated by spaces or commas: links, tags and VERP addresses
# they signed are still read; nothing new is signed with them (README, "Changing the secret key").
ENV_PREVIOUS_SECRET_KEYS = "MAILMAG_PREVIOUS_SECRET_KEYS"
DEFAULT_FILE = "mailmag.toml"
# The templates shipped with mailmag: inside an installed package (the build copies them there),
# else the repository's templates/ folder beside it (a clone, an editable install).
_INSTALLED_TEMPLATES = Path(__file__).resolve().parent / "templates"
PACKAGE_TEMPLATES = (_INSTALLED_TEMPLATES if _INSTALLED_TEMPLATES.is_dir()
                     else Path(__file__).resolve().parent.parent / "templates")


def _key(name: str) -> dict[str, Any]:
    """Field metadata for a TOML key that is not a valid Python name (``from``)."""
    return {"key": name}


# The allowed values of a setting, declared beside its type and default as field metadata;
# load_config refuses anything else as one `FILE:LINE:` error.
def at_least(low: float, high: float | None = None) -> dict[str, Any]:
    return {"min": low, "max": high}


def more_than(low: float) -> dict[str, Any]:
    return {"above": low}


def one_of(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed}


def broken_rule(value: Any, rule: Mapping[str, Any]) -> str | None:
    """What `value` fails of its field's rule ("must be at least 1"), or None if it is allowed."""
    if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison below
        return "must be a finite number"
    if "choices" in rule and value not in rule["choices"]:
        return f"must be one of {', '.join(rule['choices'])}"
    if "above" in rule and not value > rule["above"]:
        return f"must be more than {rule['above']}"
    if "or_zero_from" in rule and 0 < value < rule["or_zero_from"]:
        return f"must be 0 or at least {rule['or_zero_from']}"
    low, high = rule.get("min"), rule.get("max")
    if low is not None and high is not None and not low <= value <= high:
        return f"must be from {low} to {high}"
    if low is not None and value < low:
        return f"must be at least {low}"
    return None


@dataclass(frozen=True)
class GeneralConfig:
    base_url: str = "http://127.0.0.1:8025"
    timezone: str = "Asia/Tokyo"
    language: str = field(default="ja", metadata=one_of("ja", "en"))
    templates_dir: str = ""
    demo: bool = False


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///mailmag.db"
    busy_timeout_seconds: float = field(default=30.0, metadata=more_than(0))
    connect_timeout_seconds: float = field(default=10.0, metadata=more_than(0))
    answer_timeout_seconds: float = field(default=60.0, metadata=more_than(0))


@dataclass(frozen=True)
class SenderConfig:
    from_: str = field(default="news@example.jp", metadata=_key("from"))
    name: str = "中国地域産学官コラボレーション会議 事務局"
    postal_address: str = "〒730-0000 広島県広島市中区（住所を設定してください）"
    contact: str = "office@example.jp"
    list_id: str = "news.example.jp"
    list_name: str = "中国地域産学官コラボレーション会議 メールマガジン"
    unsubscribe_mailto: str = ""
    bounce_address: str = ""
    feedback_id: str = ""
    reply_to: str = ""

    def placeholders(self) -> list[str]:
        """The keys still holding the example values shipped in config.example.toml (and the
        built-in defaults): an issue must not go out with them (特定電子メール法)."""
        shipped = SenderConfig()
        found = [key for key, attr in (("from", "from_"), ("contact", "contact"))
                 if getattr(self, attr).strip().lower() == getattr(shipped, attr)]
        if PLACEHOLDER_ADDRESS_MARK in self.postal_address:
            found.insert(1, "postal_address")
        return found


# In the shipped postal_address: a real address never says "set the address".
PLACEHOLDER_ADDRESS_MARK = "住所を設定してください"


@dataclass(frozen=True)
class ComposeConfig:
    title_template: str = "{list_name} 第{number}号"
    subject_template: str = "【第{number}号】{headline}"
    title_template_en: str = "{list_name} No. {number}"
    subject_template_en: str = "[No. {number}] {headline}"
    kind_order: list[str] = field(default_factory=lambda: ["meeting", "event", "exhibitors", "news"])
    wrap_width: int = field(default=70, metadata=at_least(20, 998))
    html_size_limit_kb: int = field(default=102, metadata=at_least(1))
    item_size_limit_kb: int = field(default=100, metadata=at_least(1))


@dataclass(frozen=True)
class SmtpConfig:
    transport: str = field(default="file", metadata=one_of("smtp", "file", "memory"))
    host: str = "127.0.0.1"
    port: int = field(default=587, metadata=at_least(1, 65535))
    security: str = field(default="starttls", metadata=one_of("none", "starttls", "tls"))
    ca_file: str = ""
    username: str = ""
    timeout_seconds: float = field(default=30.0, metadata=more_than(0))
    max_connections: int = field(default=4, metadata=at_least(1))
    # the limiter keeps a timestamp per message a window holds: the ranges bound its memory
    # (below 0.001, a message every 17 min, the hourly limit is the one to set)
    rate_per_second: float = field(default=10.0, metadata={**at_least(0, 10_000), "or_zero_from": 0.001})
    rate_per_hour: int = field(default=0, metadata=at_least(0, 1_000_000))
    messages_per_connection: int = field(default=1000, metadata=at_least(1))
    file_dir: str = "outbox"
    helo_name: str = ""
    throttle_seconds: float = field(default=30.0, metadata=at_least(0))
    retry_relay_seconds: float = field(default=60.0, metadata=more_than(0))


@dataclass(frozen=True)
class RetryConfig:
    backoff_seconds: int = field(default=300, metadata=at_least(1))
    max_backoff_seconds: int = field(default=4000, metadata=at_least(1))
    lifetime_seconds: int = field(default=5 * 24 * 3600, metadata=at_least(60))
    # Each attempt that ends in a drop after the final dot may have delivered a copy: past this
    # many attempts such a message is given up, so a relay that keeps dropping one message
    # cannot send a subscriber a copy at every retry for five days.
    ambiguous_max_attempts: int = field(default=5, metadata=at_least(1))


@dataclass(frozen=True)
class DispatchConfig:
    lease_seconds: int = field(default=300, metadata=at_least(1))
    batch_size: int = field(default=200, metadata=at_least(1))
    max_lease_expiries: int = field(default=3, metadata=at_least(1))
    refusals_to_stop: int = field(default=5, metadata=at_least(1))
    database_retry_seconds: float = field(default=1.0, metadata=more_than(0))
    database_max_retry_seconds: float = field(default=30.0, metadata=more_than(0))


@dataclass(frozen=True)
class DkimConfig:
    selector: str = ""
    private_key_file: str = ""


@dataclass(frozen=True)
class WebConfig:
    consent_wording_version: str = "1"
    confirm_hours: int = field(default=72, metadata=at_least(1))
    confirm_per_address_per_day: int = field(default=1, metadata=at_least(1))
    subscribe_per_ip_per_hour: int = field(default=10, metadata=at_least(1))
    purge_pending_after_hours: int = field(default=168, metadata=at_least(1))
    topics: list[str] = field(default_factory=lambda: ["events|イベント案内|Events", "news|お知らせ|News"])
    trusted_proxy: str = ""
    undo_minutes: int = field(default=10, metadata=at_least(0, 1440))
    subscribe_min_answer_ms: int = field(default=100, metadata=at_least(0, 10_000))
    submit_items_per_hour: int = field(default=10, metadata=at_least(1))
    submit_bytes_per_day: int = field(default=2_000_000, metadata=at_least(1))
    feed_entries: int = field(default=20, metadata=at_least(1, 1000))
    calendar_past_days: int = field(default=90, metadata=at_least(0))
    calendar_max_events: int = field(default=500, metadata=at_least(1, 100_000))
    max_request_body_size: int = field(default=1_048_576, metadata=at_least(1024))
    connection_limit: int = field(default=100, metadata=at_least(1))
    channel_timeout: int = field(default=30, metadata=at_least(1))
    threads: int = field(default=8, metadata=at_least(1, 256))


@dataclass(frozen=True)
class ScheduleConfig:
    poll_seconds: float = field(default=30.0, metadata=more_than(0))
    grace_seconds: int = field(default=3600, metadata=at_least(0))
    min_items: int = field(default=1, metadata=at_least(1))  # an issue of no items is no issue
    send_window_enabled: bool = False
    send_window_days: list[str] = field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"])
    send_window_start: str = "09:00"
    send_window_end: str = "18:00"
    skip_holidays: bool = True
    year_end_break: list[str] = field(default_factory=lambda: ["12-29", "01-03"])


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class SendWindow:
    """The [schedule] send-window settings, parsed and checked once."""

    weekdays: frozenset[int]
    start: dt.time
    end: dt.time
    skip_holidays: bool
    year_end_break: tuple[tuple[int, int], tuple[int, int]] | None


def send_window(settings: ScheduleConfig) -> SendWindow:
    """Parse the window settings; ConfigError naming the key when one is wrong (load_config
    calls it, so that a mistake stops every command, not the worker at the window's opening)."""
    days = [day.strip().lower()[:3] for day in settings.send_window_days]
    if not days or any(day not in DAYS for day in days):
        raise ConfigError(
            f"[schedule] send_window_days must list days such as \"mon\", \"tue\" … \"sun\", "
            f"not {settings.send_window_days!r}"
        )
    start = _window_time(settings.send_window_start, "send_window_start")
    end = _window_time(settings.send_window_end, "send_window_end")
    if start >= end:
        raise ConfigError("[schedule] send_window_start must be earlier than send_window_end")
    return SendWindow(
        weekdays=frozenset(DAYS.index(day) for day in days),
        start=start,
        end=end,
        skip_holidays=settings.skip_holidays,
        year_end_break=_year_end_break(settings.year_end_break),
    )


def _window_time(value: str, key: str) -> dt.time:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())
    if not match or int(match[1]) > 24 or int(match[2]) > 59 or (int(match[1]) == 24 and int(match[2])):
        raise ConfigError(f"[schedule] {key} must be a time such as \"09:00\", not {value!r}")
    hour, minute = int(match[1]), int(match[2])
    # "24:00" closes the window at midnight.
    return dt.time.max if hour == 24 else dt.time(hour, minute)


def _year_end_break(value: list[str]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    if not value:
        return None
    problem = ConfigError(
        f"[schedule] year_end_break must be two \"MM-DD\" days such as [\"12-29\", \"01-03\"], not {value!r}"
    )
    if len(value) != 2:
        raise problem
    days = []
    for text in value:
        match = re.fullmatch(r"(\d{1,2})-(\d{1,2})", text.strip())
        if not match:
            raise problem
        try:
            dt.date(2024, int(match[1]), int(match[2]))  # a leap year: 02-29 is a real day
        except ValueError as exc:
            raise problem from exc
        days.append((int(match[1]), int(match[2])))
    return days[0], days[1]


@dataclass(frozen=True)
class BouncesConfig:
    soft_threshold: int = field(default=3, metadata=at_least(1))
    soft_window_days: int = field(default=30, metadata=at_least(1))


@dataclass(frozen=True)
class AdminConfig:
    enabled: bool = False
    require_totp: bool = False
    allowed_networks: list[str] = field(default_factory=list)
    session_idle_minutes: int = field(default=30, metadata=at_least(1))
    session_max_hours: int = field(default=12, metadata=at_least(1))
    max_failed_logins: int = field(default=10, metadata=at_least(1))
    max_failed_logins_per_ip: int = field(default=30, metadata=at_least(1))
    lockout_minutes: int = field(default=15, metadata=at_least(1))


@dataclass(frozen=True)
class Config:
    """The whole configuration; `source` is the file it came from, if any."""

    mailmag: GeneralConfig = field(default_factory=GeneralConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    sender: SenderConfig = field(default_factory=SenderConfig)
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    web: WebConfig = field(default_factory=WebConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    secret_key: str = field(default="", repr=False, metadata={"secret": True})
    smtp_password: str = field(default="", repr=False, metadata={"secret": True})
    previous_secret_keys: tuple[str, ...] = field(default=(), repr=False, metadata={"secret": True})
    source: Path | None = field(default=None, metadata={"secret": True})

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.mailmag.timezone)

    @property
    def topics(self) -> list[topics_mod.Topic]:
        """The topics of [web] topics (checked when the configuration is loaded)."""
        return topics_mod.parse_setting(self.web.topics)

    @property
    def templates_path(self) -> Path:
        return Path(self.mailmag.templates_dir or PACKAGE_TEMPLATES)

    @property
    def web_template_dirs(self) -> list[Path]:
        """The web app's and its mails' templates: the operator's templates_dir/web first (if
        set), then the shipped templates/web."""
        dirs = [self.templates_path / "web", PACKAGE_TEMPLATES / "web"]
        return list(dict.fromkeys(d for d in dirs if d.is_dir()))

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections or secrets replaced (tests and `demo` use it)."""
        return dataclasses.replace(self, **sections)


_PATH_KEYS = {
    ("mailmag", "templates_dir"), ("smtp", "file_dir"), ("smtp", "ca_file"), ("dkim", "private_key_file"),
}


def sections() -> dict[str, type]:
    """Section name → its dataclass, in declaration order."""
    return {
        f.name: typing.get_type_hints(Config)[f.name]
        for f in dataclasses.fields(Config)
        if not f.metadata.get("secret")
    }


def section_keys(section_cls: type) -> dict[str, dataclasses.Field]:
    """TOML key → dataclass field of one section."""
    return {f.metadata.get("key", f.name): f for f in dataclasses.fields(section_cls)}


def find_config_file(explicit: str | os.PathLike | None, env: dict[str, str]) -> Path | None:
    """--config, else $MAILMAG_CONFIG, else ./mailmag.toml if present, else None."""
    if explicit:
        return Path(explicit)
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    default = Path(DEFAULT_FILE)
    return default if default.exists() else None


def describe_search(env: dict[str, str] | None = None) -> str:
    """What was looked for when no configuration file was found, and what is used instead."""
    env = dict(os.environ) if env is None else env
    state = "empty" if ENV_CONFIG in env else "not set"
    looked = f"${ENV_CONFIG} ({state}) and {Path(DEFAULT_FILE).absolute()}"
    return (f"no configuration file (looked for --config, {looked}): using the built-in defaults "
            f"(database {DatabaseConfig().url}, file transport into ./{SmtpConfig().file_dir}/)")


def load_config(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the configuration the CLI contract describes; raise ConfigError naming the fix."""
    env = dict(os.environ) if env is None else env
    _check_env_names(env)
    file = find_config_file(path, env)
    data: dict[str, Any] = {}
    text = ""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    base_dir = file.resolve().parent if file is not None else None
    built = {
        name: _build_section(name, cls, data.pop(name, {}), env, file, text, base_dir)
        for name, cls in sections().items()
    }
    if data:
        unknown = next(iter(data))
        raise ConfigError(
            f"{_where(file, text, unknown, None)}unknown section [{unknown}]; "
            f"known sections are {', '.join(sections())}"
        )
    config = Config(
        **built,
        secret_key=env.get(ENV_SECRET_KEY, ""),
        smtp_password=env.get(ENV_SMTP_PASSWORD, ""),
        previous_secret_keys=tuple(env.get(ENV_PREVIOUS_SECRET_KEYS, "").replace(",", " ").split()),
        source=file,
    )
    _check(config, file, text, env)
    return config


def _check_env_names(env: Mapping[str, str]) -> None:
    """A misspelled override (MAILMAG_SMTP_PROT) is an error, not a setting silently left alone."""
    known = {ENV_CONFIG, ENV_SECRET_KEY, ENV_SMTP_PASSWORD, ENV_PREVIOUS_SECRET_KEYS} | {
        f"MAILMAG_{name}_{key}".upper() for name, cls in sections().items() for key in section_keys(cls)
    }
    for name in sorted(env):
        if not name.startswith("MAILMAG_") or name in known:
            continue
        section = name.removeprefix("MAILMAG_").split("_", 1)[0].lower()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if section in sections() or close:
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"environment variable {name} is not a setting: {hint}fix its name or unset it "
                              "(overrides are MAILMAG_SECTION_KEY for the keys in config.example.toml)")


def _build_section(
    name: str,
    cls: type,
    values: Any,
    env: dict[str, str],
    file: Path | None,
    text: str,
    base_dir: Path | None,
) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{_where(file, text, name, None)}[{name}] must be a table")
    keys = section_keys(cls)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in keys:
            hint = " (secrets come from the environment only)" if "password" in key else ""
            raise ConfigError(
                f"{_where(file, text, name, key)}unknown key '{key}' in [{name}]{hint}; "
                f"known keys are {', '.join(keys)}"
            )
        f = keys[key]
        where = f"{_where(file, text, name, key)}[{name}] {key}"
        value = _coerce(value, hints[f.name], where)
        _check_rule(value, f, where)
        if (name, key) in _PATH_KEYS and value and base_dir is not None:
            value = str((base_dir / value).resolve()) if not Path(value).is_absolute() else value
        kwargs[f.name] = value
    for key, f in keys.items():
        env_name = f"MAILMAG_{name}_{key}".upper()
        if env_name in env:
            kwargs[f.name] = _coerce_env(env[env_name], hints[f.name], env_name)
            _check_rule(kwargs[f.name], f, f"environment variable {env_name}")
    if base_dir is not None:  # defaults too: "relative to the file's folder", whatever the cwd
        for key, f in keys.items():
            default = f.default if isinstance(f.default, str) else ""
            if (name, key) in _PATH_KEYS and f.name not in kwargs and default:
                kwargs[f.name] = str((base_dir / default).resolve())
        if name == "database":
            kwargs["url"] = _resolve_sqlite(kwargs.get("url", cls().url), base_dir)
    return cls(**kwargs)


def _check_rule(value: Any, f: dataclasses.Field, where: str) -> None:
    problem = broken_rule(value, f.metadata)
    if problem:
        raise ConfigError(f"{where} {problem}, not {value!r}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    expected = _base_type(hint)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{where} must be a list of strings")
    if type(value) is not expected:
        raise ConfigError(f"{where} must be {_type_name(expected)}, not {value!r}")
    return value


def _coerce_env(raw: str, hint: Any, env_name: str) -> Any:
    expected = _base_type(hint)
    try:
        if expected is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if expected is list:
            return _env_list(raw)
        return expected(raw)
    except ValueError as exc:
        raise ConfigError(
            f"environment variable {env_name} must be {_type_name(expected)}, not {raw!r}"
        ) from exc


def _env_list(raw: str) -> list[str]:
    """A list from the environment: as in the file (["mon", "tue"]), or comma-separated (mon,tue)."""
    if raw.lstrip().startswith("["):
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(raw) from exc
        if not all(isinstance(part, str) for part in value):
            raise ValueError(raw)
        return value
    return [part.strip() for part in raw.split(",") if part.strip()]


def _base_type(hint: Any) -> type:
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return list
    if origin in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _type_name(t: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        t, t.__name__
    )


def _resolve_sqlite(url: str, base_dir: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != prefix and not url[len(prefix) :].startswith("/"):
        rest = url[len(prefix) :]
        if not rest.startswith(":memory:"):
            return prefix + str(base_dir / rest)
    return url


def _where(file: Path | None, text: str, section: str, key: str | None) -> str:
    """'FILE:LINE: ' for a section or key, best effort (tomllib does not keep positions)."""
    if file is None:
        return ""
    line = _line_of(text, section, key)
    return f"{file}:{line}: " if line else f"{file}: "


def _line_of(text: str, section: str, key: str | None) -> int | None:
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            current = header.group(1)
            if key is None and current == section:
                return number
            continue
        if key is not None and current == section and re.match(rf"^\"?{re.escape(key)}\"?\s*=", stripped):
            return number
    return None


def _check(config: Config, file: Path | None, text: str, env: Mapping[str, str]) -> None:
    """The rules between keys, checked once every section is built; each error names its line."""
    try:
        config.zone  # noqa: B018 - validates the zone name
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise _located(file, text, env, f"[mailmag] timezone {config.mailmag.timezone!r} is not a known "
                       "time zone (use a name such as Asia/Tokyo)") from exc
    try:
        config.topics  # noqa: B018 - validates the topic codes
        send_window(config.schedule)
    except ConfigError as exc:
        raise _located(file, text, env, exc.message) from None
    if not config.mailmag.base_url.startswith(("http://", "https://")):
        raise _located(file, text, env, "[mailmag] base_url must start with http:// or https://")
    answer, busy = config.database.answer_timeout_seconds, config.database.busy_timeout_seconds
    if config.database.url.startswith("postgresql") and answer <= busy:
        # a statement may wait busy_timeout_seconds for a lock, and then hears why from the server
        raise _located(file, text, env, f"[database] answer_timeout_seconds ({answer:g}) must be "
                       f"longer than busy_timeout_seconds ({busy:g})")
    _check_header_values(config, file, text, env)


# The [sender] keys written into mail headers (From, Reply-To, List-Id, Feedback-ID, the envelope).
_HEADER_KEYS = ("from", "name", "reply_to", "list_id", "list_name", "feedback_id", "bounce_address",
                "unsubscribe_mailto")


def _check_header_values(config: Config, file: Path | None, text: str, env: Mapping[str, str]) -> None:
    """A line break in a header value is refused when the configuration is read: found only when
    a mail is built (addresses.check, the builder's guard), `serve` started and every
    confirmation mail failed, and a send failed at once."""
    fields = section_keys(SenderConfig)
    for key in _HEADER_KEYS:
        value = getattr(config.sender, fields[key].name)
        if any(c in value for c in "\r\n\0"):
            raise _located(file, text, env, f"[sender] {key} goes into a mail header and must be one line: "
                           "remove its line break (or NUL character)")


def _located(file: Path | None, text: str, env: Mapping[str, str], message: str) -> ConfigError:
    """The error `message`, led by where its key was set: '[schedule] send_window_end must …'
    becomes 'FILE:LINE: [schedule] …', or 'environment variable NAME: [schedule] …'."""
    return ConfigError(f"{_where_named(file, text, env, message)}{message}")


def _where_named(file: Path | None, text: str, env: Mapping[str, str], message: str) -> str:
    """'FILE:LINE: ' of the key a message names first ('[schedule] send_window_end must …'), or
    'environment variable NAME: ' when that key was set there."""
    named = re.match(r"\[(\w+)\] (\w+)", message)
    if named is None:
        return f"{file}: " if file else ""
    section, key = named.groups()
    env_name = f"MAILMAG_{section}_{key}".upper()
    if env_name in env:
        return f"environment variable {env_name}: "
    return _where(file, text, section, key)
