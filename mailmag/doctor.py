"""`mailmag doctor`: every check an installation needs before it sends, one finding each, plus DNS records.

Findings are "ok", "warning" (works, but look at it) or "problem" (sending would fail or break
特定電子メール法); a problem's message names the fix. Nothing is sent and nothing is
written: the relay gets EHLO, STARTTLS and AUTH, then QUIT; an SQLite file that does not exist
is not created. The DNS records are computed from the configuration, never looked up.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from mailmag import addresses, clock, db, topics
from mailmag.access import accounts
from mailmag.config import ENV_PREVIOUS_SECRET_KEYS, ENV_SECRET_KEY, Config, describe_search, load_config
from mailmag.content import items, render
from mailmag.delivery import messages, window
from mailmag.delivery.dkim import load_dkim
from mailmag.delivery.smtp import helo_name, is_loopback
from mailmag.delivery.transports import check_relay
from mailmag.errors import ConfigError, DatabaseError, MailmagError
from mailmag.models import Item, Org, utcnow
from mailmag.scheduling import jobs
from mailmag.services import MAKE_SECRET, MIN_SECRET_LENGTH, Services

OK, WARNING, PROBLEM = "ok", "warning", "problem"
MAKE_DKIM_KEY = "openssl genrsa -out dkim.pem 2048"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One check's outcome; `message` is one line (for a problem: what is wrong and the fix)."""

    check: str
    status: str
    message: str


@dataclasses.dataclass(frozen=True)
class DnsRecord:
    name: str
    type: str
    value: str
    note: str


@dataclasses.dataclass
class Report:
    findings: list[Finding]
    dns: list[DnsRecord]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.status == PROBLEM]


def diagnose(config_path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Report:
    """Load the configuration the CLI would load, then run every check on it."""
    try:
        config = load_config(config_path, env)
    except ConfigError as exc:
        return Report([Finding("configuration", PROBLEM, str(exc))], [])
    return check(config)


def check(config: Config) -> Report:
    """Every check on a loaded configuration; one failing check never hides the others."""
    findings = [_configuration(config)]
    for name, step in _CHECKS:
        try:
            findings.extend(step(config))
        except MailmagError as exc:
            findings.append(Finding(name, PROBLEM, str(exc)))
    return Report(findings, dns_records(config))


# --- the checks -----------------------------------------------------------------------------


def _configuration(config: Config) -> Finding:
    where = f"loaded from {config.source}" if config.source else describe_search()
    if config.mailmag.demo:
        return Finding("configuration", WARNING, f"{where}; demo = true signs links with a public key: "
                       "set demo = false (and MAILMAG_SECRET_KEY) before real subscribers get mail")
    return Finding("configuration", OK, where)


def _sender(config: Config) -> list[Finding]:
    domain = addresses.sender_domain(config)
    messages.reply_to(config)
    render.check_sender(config)
    render.check_real_sender(config)
    return [Finding("sender", OK, f"{config.sender.name} <{config.sender.from_}>, domain {domain}")]


def _links(config: Config) -> list[Finding]:
    """Links in mail (unsubscribe above all) must reach `mailmag serve` from the subscribers' side."""
    reach = _reach(config)
    note = messages.one_click_note(config)
    if note is None or any(f.status == PROBLEM for f in reach):  # one fix at a time
        return reach
    return [*reach, Finding("one click", WARNING, note)]


def _reach(config: Config) -> list[Finding]:
    base = config.mailmag.base_url
    if config.smtp.transport != "smtp":
        return [Finding("links", OK, f"links in mail start with {base}")]
    if is_loopback(urlsplit(base).hostname or ""):
        return [Finding("links", PROBLEM, f"[mailmag] base_url is {base}: subscribers cannot open the "
                        "unsubscribe links in mail; set it to the public address of `mailmag serve`, "
                        "e.g. https://news.example.jp")]
    if base.startswith("http://"):
        return [Finding("links", WARNING, f"[mailmag] base_url {base} is not https: put `mailmag serve` "
                        "behind a reverse proxy with a certificate and use https://")]
    return [Finding("links", OK, f"links in mail start with {base}")]


def _secret_key(config: Config) -> list[Finding]:
    services = Services(config)  # builds no engine: only the keys are read here
    key = services.secret_key  # ConfigError naming the fix when it is missing outside demo mode
    if not config.secret_key:
        return [Finding("secret key", WARNING, f"{ENV_SECRET_KEY} is not set; demo mode uses a public key")]
    if len(key) < MIN_SECRET_LENGTH:
        return [Finding("secret key", PROBLEM, f"{ENV_SECRET_KEY} has only {len(key)} characters, so links "
                        f"could be forged: use {MIN_SECRET_LENGTH} or more, e.g. {MAKE_SECRET}")]
    if key in config.previous_secret_keys:  # helper-86: counted as a previous key, changing nothing
        return [Finding("secret key", WARNING, f"{ENV_PREVIOUS_SECRET_KEYS} holds {ENV_SECRET_KEY} itself: "
                        "the key was not changed; put the new key in MAILMAG_SECRET_KEY")]
    previous = len(services.verify_keys) - 1  # ConfigError for a short one
    keys = "1 previous key" if previous == 1 else f"{previous} previous keys"
    also = f"; links signed with {keys} are still read" if previous else ""
    return [Finding("secret key", OK, f"{ENV_SECRET_KEY} is set ({len(key)} characters){also}")]


def _database(config: Config) -> list[Finding]:
    url = make_url(config.database.url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not Path(url.database).exists():
        return [Finding("database", PROBLEM, f"the database file {url.database} does not exist: "
                        "run `mailmag init` (or fix [database] url)")]
    services = Services(config)
    try:
        db.check_schema(services.engine)
        revision = db.current_revision(services.engine)
        with services.read_session() as session:
            unknown = topics.unknown_in_use(session, config.topics)
            asks_code = config.admin.enabled and config.admin.require_totp
            no_code = accounts.without_needed_code(session, asks_code)
            now = utcnow()
            late = jobs.overdue_work(session, config, now)
    except DatabaseError as exc:
        # a SQLite file has no server: on a full disk it says "disk I/O error" (helper-86)
        where = "the disk it is on" if url.get_backend_name() == "sqlite" else "that the server runs"
        fix = "" if "mailmag init" in str(exc) else f"; check [database] url and {where}"
        return [Finding("database", PROBLEM, f"{exc}{fix}")]
    finally:
        services.close()
    return [Finding("database", OK, f"{shown} at revision {revision} (current)"),
            *_topic_findings(config, unknown), *_console_findings(no_code),
            *_schedule_findings(config, late, now)]


def _schedule_findings(config: Config, late: list[tuple[str, jobs.Overdue]],
                       now: dt.datetime) -> list[Finding]:
    if not late:
        return []
    (first, overdue), more = late[0], len(late) - 1
    also = f" (and {more} more: `mailmag issues list`, `mailmag schedule list`)" if more else ""
    return [Finding("schedule", PROBLEM, f"{first} is {overdue.describe(now, config)}{also}")]


def _console_findings(no_code: list[str]) -> list[Finding]:
    """Accounts [admin] require_totp keeps out: the login page says only that something is wrong."""
    if not no_code:
        return []
    have = "they have" if len(no_code) > 1 else "it has"
    return [Finding("console accounts", WARNING, f"{', '.join(no_code)} cannot log in to the console: "
                    "[admin] require_totp asks owners and senders for a one-time code, and "
                    f"{have} none yet; run mailmag admins totp NAME")]


def _topic_findings(config: Config, unknown: dict[str, int]) -> list[Finding]:
    """Stored topic codes [web] topics does not offer: those subscribers get only issues for everyone."""
    known = topics.known(config.topics)
    if not unknown:
        return [Finding("topics", OK, f"subscribers and issues use only the configured topics ({known})")]
    listed = ", ".join(f"{code!r} ({count} subscriber{'s' if count != 1 else ''})"
                       for code, count in sorted(unknown.items()))
    return [Finding("topics", PROBLEM, f"the database holds topic codes [web] topics does not offer: "
                    f"{listed}; add them to [web] topics, or change them to {known} (mailmag "
                    "subscribers import with a corrected topic column updates them)")]


def _templates(config: Config) -> list[Finding]:
    """Render a sample issue: compose would refuse the same templates for the same reasons."""
    sample = Item(org=Org(code="sample", name="サンプル機関"), kind="news", status="approved",
                  **items.clean("news", {"title": "サンプル記事", "body": "本文です。"}))
    spec = render.IssueSpec(0, None, clock.today(config.zone), [sample])
    env = render.make_environment(config.templates_path)
    editions = render.render_issue(env, config, spec)
    langs = ", ".join(e.lang for e in editions)
    return [Finding("templates", OK, f"{config.templates_path} ({langs}) show the sender's name, postal "
                    "address, contact and the unsubscribe link")]


def _relay(config: Config) -> list[Finding]:
    transport, folder = config.smtp.transport, Path(config.smtp.file_dir)
    # check_relay probes the file transport's folder by making it; a missing one is only checked.
    problems = _creatable(folder) if transport == "file" and not folder.exists() else check_relay(config)
    if problems:
        return [Finding("smtp relay", PROBLEM, line) for line in problems]
    if transport == "file":
        return [Finding("smtp relay", WARNING, f"[smtp] transport is \"file\": messages are written into "
                        f"{folder}, nobody receives them; set transport = \"smtp\" and host")]
    if transport == "memory":
        return [Finding("smtp relay", WARNING, "[smtp] transport is \"memory\" (for tests): nothing is sent")]
    smtp = config.smtp
    steps = {"starttls": "STARTTLS with a verified certificate", "tls": "TLS with a verified certificate",
             "none": "no TLS"}[smtp.security]
    auth = f", AUTH as {smtp.username}" if smtp.username else ", no AUTH"
    return [Finding("smtp relay", OK, f"{smtp.host}:{smtp.port} answers: EHLO, {steps}{auth} (nothing sent)")]


def _helo(config: Config) -> list[Finding]:
    """The EHLO name receivers see where the relay's hop is not authenticated."""
    if config.smtp.transport != "smtp":
        return []
    name = helo_name(config.smtp, config.sender.from_)
    source = "[smtp] helo_name" if config.smtp.helo_name else "derived (set [smtp] helo_name to choose)"
    if "." not in name:
        return [Finding("helo", WARNING, f"EHLO name {name!r} has no dot, which receivers score as spam "
                        "(SpamAssassin FSL_HELO_NON_FQDN_1); set [smtp] helo_name to this machine's "
                        "public host name, e.g. mail.example.jp")]
    return [Finding("helo", OK, f"EHLO as {name}, {source}")]


def _creatable(folder: Path) -> list[str]:
    """The file transport makes its folder on the first message: can it?"""
    parent = next((p for p in folder.absolute().parents if p.exists()), Path("/"))
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return []
    return [f"[smtp] file_dir {folder} cannot be created ({parent} is not writable): "
            "point file_dir at a writable folder"]


def _dkim(config: Config) -> list[Finding]:
    key = load_dkim(config)
    if key is None and config.smtp.transport != "smtp":
        return [Finding("dkim", OK, "not configured (needed once mail goes through a relay)")]
    if key is None:
        return [Finding("dkim", WARNING, f"messages are not DKIM-signed, and many receivers file unsigned "
                        f"bulk mail as spam: make a key ({MAKE_DKIM_KEY}), set [dkim] selector and "
                        "private_key_file, and publish the record doctor then prints")]
    bits = _public_key(key.private_key)[1]
    if bits < 1024:
        return [Finding("dkim", PROBLEM, f"[dkim] private_key_file holds a {bits}-bit key, which receivers "
                        f"ignore: make a 2048-bit one ({MAKE_DKIM_KEY})")]
    selector = key.selector.decode()
    return [Finding("dkim", OK, f"signing as d={key.domain.decode()} s={selector} with a {bits}-bit RSA key")]


def _send_window(config: Config) -> list[Finding]:
    """When mail may leave: queued messages wait, unexplained, while the window is closed."""
    return [Finding("send window", OK, window.summary(utcnow(), config))]


def _web_limits(config: Config) -> list[Finding]:
    """A request limit under what an item's form can be: a long item is refused as "too large"."""
    needed = items.largest_form_bytes(config.compose.item_size_limit_kb)
    have = config.web.max_request_body_size
    if have < needed:
        return [Finding("web", WARNING, f"[web] max_request_body_size = {have} is smaller than an item's "
                        f"form can be ({needed} bytes: [compose] item_size_limit_kb of Japanese text as "
                        f"a browser sends it): a long item is refused as too large; set it to at least "
                        f"{needed}")]
    return [Finding("web", OK, f"requests up to {have} bytes (an item's form takes up to {needed})")]


# Free space under these, on the disk of a SQLite database: a problem, a warning. SQLite cannot
# write a result on a full disk, so sending pauses; doctor said "no problems" (helper-85).
DISK_PROBLEM_BYTES, DISK_WARNING_BYTES = 64 * 2**20, 512 * 2**20


def _disk(config: Config) -> list[Finding]:
    """The free space beside a SQLite database (PostgreSQL's disk is its server's to watch)."""
    file = db.sqlite_file(config.database.url)
    if file is None or not file.parent.exists():
        return []
    free = shutil.disk_usage(file.parent).free
    used = sum(f.stat().st_size for f in file.parent.glob(file.name + "*") if f.is_file())
    shown = f"{free / 2**20:,.0f} MB free on the disk of {file}"
    if free < max(DISK_PROBLEM_BYTES, used):  # a checkpoint or an upgrade may need as much again
        return [Finding("disk", PROBLEM, f"{shown}: sending pauses when the database cannot write; "
                        "free some space (old backups, logs)")]
    if free < DISK_WARNING_BYTES:
        return [Finding("disk", WARNING, f"{shown}: under {DISK_WARNING_BYTES // 2**20} MB, the database "
                        "soon cannot write; free some space (old backups, logs)")]
    return [Finding("disk", OK, shown)]


_CHECKS: list[tuple[str, Callable[[Config], list[Finding]]]] = [
    ("sender", _sender), ("links", _links), ("secret key", _secret_key), ("database", _database),
    ("disk", _disk),
    ("templates", _templates), ("smtp relay", _relay), ("helo", _helo), ("dkim", _dkim),
    ("send window", _send_window), ("web", _web_limits),
]


# --- DNS --------------------------------------------------------------------------------------


def dns_records(config: Config) -> list[DnsRecord]:
    """SPF, DKIM and DMARC records for the sender's domain, from the configuration alone."""
    try:
        domain = addresses.sender_domain(config)
        envelope_domain = addresses.bounce_address(config).rpartition("@")[2].lower()
    except ConfigError:
        return []
    return [_spf(config, envelope_domain), *_dkim_record(config, domain), _dmarc(config, domain)]


def _spf(config: Config, domain: str) -> DnsRecord:
    host = config.smtp.host
    if config.smtp.transport != "smtp" or is_loopback(host):
        mechanism, note = "mx", "list every server that sends your mail (your relay's ip4: or include:)"
    else:
        mechanism, note = _spf_mechanism(host), "add your relay provider's include: if it documents one"
    return DnsRecord(f"{domain}.", "TXT", f'"v=spf1 {mechanism} -all"',
                     f"SPF for the envelope sender's domain; {note}; one SPF record per domain (merge)")


def _spf_mechanism(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"a:{host}"
    return f"ip{address.version}:{address}"


def _dkim_record(config: Config, domain: str) -> list[DnsRecord]:
    try:
        key = load_dkim(config)
    except ConfigError:
        return []
    if key is None:
        return []
    public = base64.b64encode(_public_key(key.private_key)[0]).decode()
    value = f"v=DKIM1; k=rsa; p={public}"
    # A TXT string holds 255 bytes at most: a 2048-bit key is published as several strings.
    chunks = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return [DnsRecord(f"{key.selector.decode()}._domainkey.{domain}.", "TXT", chunks,
                      "DKIM public key of [dkim] private_key_file")]


def _dmarc(config: Config, domain: str) -> DnsRecord:
    contact = config.sender.contact.strip()
    reports = contact if contact.lower().endswith(f"@{domain}") else f"dmarc@{domain}"
    return DnsRecord(f"_dmarc.{domain}.", "TXT", f'"v=DMARC1; p=none; rua=mailto:{reports}"',
                     "start with p=none; move to p=quarantine once the reports show only your servers")


def _public_key(pem: bytes) -> tuple[bytes, int]:
    """The DER SubjectPublicKeyInfo DKIM publishes (p=), and the key's size in bits."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("[dkim] private_key_file is not an unencrypted PEM RSA private key: "
                          f"make one with {MAKE_DKIM_KEY}") from exc
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ConfigError("[dkim] private_key_file holds a key that is not RSA (DKIM here signs rsa-sha256): "
                          f"make one with {MAKE_DKIM_KEY}")
    public = private.public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der, public.key_size

