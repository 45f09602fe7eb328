"""`mailmag doctor`: a good installation passes; each broken part is one line naming its fix; nothing sent."""

from __future__ import annotations

import json
import re
import socket
import types
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailmag import addresses, db, doctor
from mailmag.access import accounts
from mailmag.cli import cli
from mailmag.config import load_config
from mailmag.delivery import messages
from mailmag.delivery.dkim import load_dkim
from mailmag.services import Services

SECRET = "doctor-test-secret-0123456789-abcdefghij"
PASSWORD = "s3cret"


@pytest.fixture(scope="module")
def dkim_pem() -> bytes:
    """A 2048-bit key as `openssl genrsa` (OpenSSL 3) writes it: PKCS#8 PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Installation:
    """A configured mailmag in a folder: mailmag.toml, an initialised SQLite file, a DKIM key, a relay."""

    def __init__(self, folder: Path, server, dkim_pem: bytes) -> None:  # type: ignore[no-untyped-def]
        self.folder, self.server = folder, server
        self.env = {"MAILMAG_SECRET_KEY": SECRET, "MAILMAG_SMTP_PASSWORD": PASSWORD, "MAILMAG_CONFIG": None}
        (folder / "dkim.pem").write_bytes(dkim_pem)
        self.sections = {
            "mailmag": {"base_url": "https://news.example.jp"},
            "database": {"url": "sqlite:///mailmag.db"},
            "sender": {"from": "magazine@example.jp", "contact": "jimukyoku@example.jp",
                       "postal_address": "〒730-0000 広島県広島市中区サンプル町1-2-3"},
            "smtp": {"transport": "smtp", "host": "127.0.0.1", "port": server.port, "security": "starttls",
                     "ca_file": str(server.tls_files.ca), "username": "news", "timeout_seconds": 5.0},
            "dkim": {"selector": "mm2026", "private_key_file": "dkim.pem"},
        }
        self.write()
        services = Services(load_config(self.path, env={}))
        try:
            db.init_db(services.engine)
        finally:
            services.close()

    @property
    def path(self) -> Path:
        return self.folder / "mailmag.toml"

    def write(self) -> None:
        text = ""
        for name, keys in self.sections.items():
            text += f"[{name}]\n"
            text += "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in keys.items())
        self.path.write_text(text, encoding="utf-8")

    def doctor(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(self.path), "doctor", *args], env=self.env,
                                  catch_exceptions=False)


@pytest.fixture
def installation(tmp_path, make_smtp_server, dkim_pem) -> Installation:
    return Installation(tmp_path, make_smtp_server(tls="starttls", users={"news": PASSWORD}), dkim_pem)


def _lines(result: Result) -> dict[str, str]:
    """check name → 'status message' for each finding line."""
    found = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(ok|warning|problem) +([a-z ]+): (.*)$", line)
        if match:
            found[match.group(2)] = f"{match.group(1)} {match.group(3)}"
    return found


def _problems(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("problem")]


def test_a_good_installation_has_no_problems_and_nothing_is_sent(installation, monkeypatch):
    monkeypatch.setattr(doctor, "DISK_WARNING_BYTES", 0)  # whatever this machine's disk holds
    result = installation.doctor()
    assert result.exit_code == 0, result.output
    lines = _lines(result)
    assert set(lines) == {"configuration", "sender", "links", "secret key", "database", "disk", "topics",
                          "templates", "smtp relay", "helo", "dkim", "send window", "web"}
    assert all(v.startswith("ok ") for v in lines.values()), lines
    port = installation.server.port
    assert lines["smtp relay"] == (f"ok 127.0.0.1:{port} answers: EHLO, STARTTLS with a verified "
                                   "certificate, AUTH as news (nothing sent)")
    assert lines["dkim"] == "ok signing as d=example.jp s=mm2026 with a 2048-bit RSA key"
    assert lines["web"] == "ok requests up to 1048576 bytes (an item's form takes up to 679936)"
    assert installation.server.messages == [] and "MAIL" not in installation.server.commands
    assert 'example.jp. IN TXT "v=spf1 mx -all"' in result.stdout
    assert 'mm2026._domainkey.example.jp. IN TXT "v=DKIM1; k=rsa; p=MII' in result.stdout
    assert '_dmarc.example.jp. IN TXT "v=DMARC1; p=none; rua=mailto:jimukyoku@example.jp"' in result.stdout
    assert result.stderr == "\nno problems\n"


def test_the_printed_dkim_record_verifies_what_mailmag_signs(installation):
    report = json.loads(installation.doctor("--json").stdout)
    [record] = [r for r in report["dns"] if r["name"] == "mm2026._domainkey.example.jp."]
    # A DNS server joins the 255-byte strings of a TXT record into one value.
    value = "".join(re.findall(r'"([^"]*)"', record["value"])).encode()
    assert len(re.findall(r'"[^"]*"', record["value"])) == 2  # a 2048-bit key needs two strings

    config = load_config(installation.path, env={"MAILMAG_SECRET_KEY": SECRET})
    rendering = types.SimpleNamespace(subject="【第1号】テスト", html="<p>本文</p>", text="本文\n")
    skeleton = messages.prepare(rendering, 1, config, dkim=load_dkim(config))
    recipient = messages.Recipient(1, 1, "yamada@example.jp", "山田 太郎", addresses.make_message_id(config))
    _, data = messages.personalize(skeleton, recipient, SECRET)
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return value if name == b"mm2026._domainkey.example.jp." else None

    assert dkim.verify(data, dnsfunc=lookup)


def test_json_lists_every_finding_and_the_records(installation):
    installation.env["MAILMAG_SECRET_KEY"] = None
    result = installation.doctor("--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [f["check"] for f in report["findings"] if f["status"] == "problem"] == ["secret key"]
    assert {r["name"] for r in report["dns"]} == {
        "example.jp.", "mm2026._domainkey.example.jp.", "_dmarc.example.jp."}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _no_secret(i: Installation) -> None:
    i.env["MAILMAG_SECRET_KEY"] = None


def _short_secret(i: Installation) -> None:
    i.env["MAILMAG_SECRET_KEY"] = "geheim"


def _relay_down(i: Installation) -> None:
    i.sections["smtp"]["port"] = _free_port()


def _bad_dkim_key(i: Installation) -> None:
    (i.folder / "dkim.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")


def _wrong_password(i: Installation) -> None:
    i.env["MAILMAG_SMTP_PASSWORD"] = "wrong"


def _placeholder_address(i: Installation) -> None:
    del i.sections["sender"]["postal_address"]


def _local_links(i: Installation) -> None:
    i.sections["mailmag"]["base_url"] = "http://127.0.0.1:8025"


def _template_without_footer(i: Installation) -> None:
    (i.folder / "templates").mkdir()
    for name in ("issue.html.j2", "issue.txt.j2"):
        (i.folder / "templates" / name).write_text("{{ issue.title }}\n", encoding="utf-8")
    i.sections["mailmag"]["templates_dir"] = "templates"


@pytest.mark.parametrize(("breakage", "check", "fix"), [
    (_no_secret, "secret key", "MAILMAG_SECRET_KEY is not set: export a long random value, e.g. `export"),
    (_short_secret, "secret key", "MAILMAG_SECRET_KEY has only 6 characters, so links could be forged"),
    (_relay_down, "smtp relay", "cannot connect to the relay 127.0.0.1:"),
    (_bad_dkim_key, "dkim", "is not a PEM RSA private key (make one with dknewkey)"),
    (_wrong_password, "smtp relay", "rejected the login of news: 535"),
    (_placeholder_address, "sender", "[sender] postal_address still holds the example value"),
    (_local_links, "links", "base_url is http://127.0.0.1:8025: subscribers cannot open the unsubscribe"),
    (_template_without_footer, "templates", "does not show the sender's name, the sender's postal address,"),
])
def test_each_broken_part_is_one_line_naming_its_fix(installation, breakage, check, fix):
    breakage(installation)
    installation.write()
    result = installation.doctor()
    assert result.exit_code == 1
    [problem] = _problems(result)
    assert problem.startswith(f"problem  {check}: ") and fix in problem
    others = {name: line for name, line in _lines(result).items() if name != check}
    assert all(line.startswith("ok ") for line in others.values()), others
    assert installation.server.messages == [] and "MAIL" not in installation.server.commands
    assert result.stderr == "\n1 problem\n"


def test_an_untrusted_relay_certificate_is_named(tmp_path, make_smtp_server, dkim_pem):
    installation = Installation(tmp_path, make_smtp_server(tls="starttls", trusted=False,
                                                           users={"news": PASSWORD}), dkim_pem)
    result = installation.doctor()
    assert result.exit_code == 1
    [problem] = _problems(result)
    assert problem.startswith("problem  smtp relay: the certificate of the relay 127.0.0.1:")
    assert problem.endswith("set [smtp] host to the name in its certificate, or [smtp] ca_file to the CA "
                            "that signed it")
    assert "AUTH" not in installation.server.commands  # the password never went out


def test_an_uninitialised_database_is_named_and_left_alone(tmp_path, make_smtp_server, dkim_pem, db_url):
    site = tmp_path / "site"  # db_url's SQLite file is tmp_path/mailmag.db
    site.mkdir()
    installation = Installation(site, make_smtp_server(tls="starttls", users={"news": PASSWORD}), dkim_pem)
    installation.sections["database"]["url"] = db_url  # a fresh, empty database
    installation.write()
    result = installation.doctor()
    assert result.exit_code == 1
    [problem] = _problems(result)
    assert problem.startswith("problem  database: ") and "run `mailmag init`" in problem
    if db_url.startswith("sqlite"):
        assert not Path(db_url.removeprefix("sqlite:///")).exists()  # doctor does not create it
    else:
        services = Services(load_config(installation.path, env={}))
        try:
            assert db.current_revision(services.engine) is None
        finally:
            services.close()


def test_a_disk_too_full_for_the_database_to_write_is_named(installation, monkeypatch):
    """helper-85: on a full disk sending paused ('database or disk is full') and doctor said
    'no problems'. The limits are raised past this machine's free space, as a full disk would."""
    monkeypatch.setattr(doctor, "DISK_PROBLEM_BYTES", 2**62)
    result = installation.doctor()
    assert result.exit_code == 1
    said = _lines(result)["disk"]
    assert re.fullmatch(r"problem [\d,]+ MB free on the disk of .*mailmag\.db: sending pauses when the "
                        r"database cannot write; free some space \(old backups, logs\)", said), said
    monkeypatch.setattr(doctor, "DISK_PROBLEM_BYTES", 0)
    monkeypatch.setattr(doctor, "DISK_WARNING_BYTES", 2**62)
    assert _lines(installation.doctor())["disk"].startswith("warning ")


def test_a_sqlite_file_that_cannot_be_read_points_at_its_disk_not_a_server(installation, monkeypatch):
    """helper-86: on a full disk SQLite said 'disk I/O error', and doctor added 'check that the
    server runs': SQLite has none."""
    monkeypatch.setattr(doctor, "DISK_WARNING_BYTES", 0)
    (installation.folder / "mailmag.db").write_bytes(b"not a database, a damaged file" * 100)
    said = _lines(installation.doctor())["database"]
    assert said.startswith("problem cannot open the database") and said.endswith(
        "; check [database] url and the disk it is on"), said


def test_an_unreadable_configuration_is_one_problem(tmp_path):
    path = tmp_path / "mailmag.toml"
    path.write_text('[smtp]\nhots = "relay"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "doctor"], catch_exceptions=False)
    assert result.exit_code == 1
    [line] = result.stdout.splitlines()
    assert line.startswith(f"problem  configuration: {path}:2: unknown key 'hots' in [smtp]; known keys are ")


def test_a_demo_installation_passes_with_warnings(tmp_path):
    runner = CliRunner()
    env = {"MAILMAG_SECRET_KEY": None, "MAILMAG_CONFIG": None}
    assert runner.invoke(cli, ["demo", "--dir", str(tmp_path / "demo")], env=env).exit_code == 0
    result = runner.invoke(cli, ["--config", str(tmp_path / "demo" / "mailmag.toml"), "doctor"], env=env)
    assert result.exit_code == 0, result.output
    lines = _lines(result)
    assert lines["configuration"].startswith("warning ") and "set demo = false" in lines["configuration"]
    assert lines["secret key"] == "warning MAILMAG_SECRET_KEY is not set; demo mode uses a public key"
    assert lines["smtp relay"].startswith('warning [smtp] transport is "file"')


def test_an_ehlo_name_without_a_dot_is_a_warning_naming_the_setting(installation):
    installation.sections["smtp"]["helo_name"] = "mailhost"
    installation.write()
    result = installation.doctor()
    assert result.exit_code == 0, result.output
    assert _lines(result)["helo"] == (
        "warning EHLO name 'mailhost' has no dot, which receivers score as spam (SpamAssassin "
        "FSL_HELO_NON_FQDN_1); set [smtp] helo_name to this machine's public host name, e.g. mail.example.jp")
    installation.sections["smtp"]["helo_name"] = "mail.example.jp"
    installation.write()
    assert _lines(installation.doctor())["helo"] == "ok EHLO as mail.example.jp, [smtp] helo_name"


def test_an_http_base_url_says_mail_carries_no_one_click_header(installation):
    installation.sections["mailmag"]["base_url"] = "http://news.example.jp"
    installation.write()
    lines = _lines(installation.doctor())
    assert lines["one click"].startswith("warning [mailmag] base_url http://news.example.jp is not https, so "
                                         "the mail carries no one-click unsubscribe header (RFC 8058")


def test_a_bad_reply_to_is_a_sender_problem(installation):
    installation.sections["sender"]["reply_to"] = "office at example"
    installation.write()
    result = installation.doctor()
    assert result.exit_code == 1
    assert _lines(result)["sender"] == ("problem [sender] reply_to 'office at example' must be an address "
                                        "like office@example.jp")


def test_a_request_limit_under_an_items_form_is_a_warning_naming_the_size(installation):
    """The example configuration said 262144 for years: a long Japanese item was refused as "too large"."""
    installation.sections["web"] = {"max_request_body_size": 262144}
    installation.write()
    result = installation.doctor()
    assert result.exit_code == 0, result.output
    assert _lines(result)["web"] == (
        "warning [web] max_request_body_size = 262144 is smaller than an item's form can be (679936 bytes: "
        "[compose] item_size_limit_kb of Japanese text as a browser sends it): a long item is refused as "
        "too large; set it to at least 679936")


def test_an_account_require_totp_keeps_out_is_named(installation):
    """helper-70: with [admin] require_totp, an owner without a code is refused at login like a
    wrong password (so that the page tells a guesser nothing); doctor is where it is said."""
    installation.sections["admin"] = {"enabled": True, "require_totp": True}
    installation.write()
    services = Services(load_config(installation.path, env={"MAILMAG_SECRET_KEY": SECRET}))
    try:
        with services.session() as session:
            for name, role in [("sato", "owner"), ("suzuki", "editor"), ("tanaka", "sender")]:
                accounts.add(session, name, f"{name}@example.jp", role, "correct horse battery")
            accounts.set_totp(session, "tanaka")
    finally:
        services.close()
    result = installation.doctor()
    assert result.exit_code == 0, result.output
    assert _lines(result)["console accounts"] == (
        "warning sato cannot log in to the console: [admin] require_totp asks owners and senders for a "
        "one-time code, and it has none yet; run mailmag admins totp NAME")
