"""`mailmag demo`: the sample council, issue 1 in .eml files, offline, again and again."""

from __future__ import annotations

import csv
import io
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from clocked import mailmag_command

from mailmag import demo
from mailmag.cli import cli
from mailmag.content import items

# The demo must not depend on the developer's environment.
CLEAN_ENV = {"MAILMAG_SECRET_KEY": None, "MAILMAG_CONFIG": None, "MAILMAG_DATABASE_URL": None}
SUBJECT_JA = "【第1号】中国地域産学官コラボレーション会議『企画会議』の概要 ほか"
SUBJECT_EN = "[No. 1] 中国地域産学官コラボレーション会議『企画会議』の概要 and more"
TITLES = [items.parse_file(path)["title"] for path in sorted((demo.DATA / "demo_items").glob("*.md"))]
ADDRESSES = [row["メールアドレス"] for row in csv.DictReader(io.StringIO(demo.SUBSCRIBERS_CSV))]


def _demo(*args: str) -> Result:
    return CliRunner().invoke(cli, ["demo", *args], env=CLEAN_ENV, catch_exceptions=False)


def _mailmag(config: Path, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], env=CLEAN_ENV, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _header(message: Message, name: str) -> str:
    return str(make_header(decode_header(message[name])))


def _messages(folder: Path) -> list[Message]:
    files = sorted((folder / "outbox").glob("*.eml"))
    return [message_from_bytes(p.read_bytes(), policy=compat32) for p in files]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    folder = tmp_path_factory.mktemp("demo") / "council"
    return folder, _demo("--dir", str(folder))


def test_the_demo_builds_the_council_and_sends_issue_1(built):
    folder, result = built
    assert result.exit_code == 0, result.output
    assert "8 member organizations, 5 items approved, 20 subscribers" in result.stdout
    assert "20 sent, 0 failed" in result.stdout
    assert result.stderr == ""  # no warning: the issue is dated before every event and deadline
    for name in ("issue-1.html", "issue-1.txt", "outbox/", "subscribers.csv"):
        assert str(folder / name).rstrip("/") in result.stdout


def test_every_subscriber_gets_one_message_with_the_japanese_subject(built):
    folder, _ = built
    messages = _messages(folder)
    assert sorted(m["Delivered-To"] for m in messages) == sorted(ADDRESSES)
    assert all(re.fullmatch(r"[a-z.]+@example\.(ac\.)?jp", address) for address in ADDRESSES)
    subjects = [_header(m, "Subject") for m in messages]
    assert subjects.count(SUBJECT_JA) == 17 and subjects.count(SUBJECT_EN) == 3
    to = {_header(m, "To") for m in messages}
    assert "山本 健二 <yamamoto.kenji@example.jp>" in to and "Emily Carter <emily.carter@example.ac.jp>" in to
    assert all(m["List-Unsubscribe"].startswith("<http://127.0.0.1:8025/u/") for m in messages)


def test_the_previews_show_every_item_and_the_sender(built):
    folder, _ = built
    html = (folder / "issue-1.html").read_text(encoding="utf-8")
    text = (folder / "issue-1.txt").read_text(encoding="utf-8")
    assert len(TITLES) == 5
    for title in TITLES:
        assert title in html and title in " ".join(text.split())  # the text edition wraps long titles
    for shown in (html, text):
        assert "2026年12月1日（火）" in shown and "〒730-0000 広島県広島市中区サンプル町1-2-3" in shown
        assert "http://127.0.0.1:8025/u/SAMPLE-TOKEN" in shown


def test_the_commands_it_suggests_work(built):
    folder, result = built
    suggested = [shlex.split(line)[1:] for line in result.stdout.split("Try next:\n")[1].splitlines()
                 if line.startswith("  mailmag ")]
    assert [args[:2] for args in suggested] == [["--config", str(folder / "mailmag.toml")]] * 6
    assert suggested[-1][2:] == ["serve"]  # served in the process test below
    outputs = {" ".join(args[2:]): _mailmag(Path(args[1]), *args[2:]).stdout for args in suggested[:-1]}
    assert outputs["issues status 1"].startswith("issue 1 (第1号): sent\naudience: 20 subscribers (every "
                                                 "subscriber), frozen when sending started\n"
                                                 "total 20, sent 20, failed 0")
    assert re.fullmatch(r"http://127\.0\.0\.1:8025/submit/\S+\n", outputs["orgs token cef"])
    assert len(outputs["subscribers list"].splitlines()) == 20
    assert outputs["items list"].count("\tpublished\t") == 5
    assert outputs["issues preview 1"] == (folder / "issue-1.txt").read_text(encoding="utf-8")


def test_running_it_again_starts_over(tmp_path):
    folder = tmp_path / "demo"
    assert _demo("--dir", str(folder)).exit_code == 0
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    again = _demo("--dir", str(folder))
    assert again.exit_code == 0, again.output
    assert "20 subscribers" in again.stdout and "20 sent, 0 failed" in again.stdout
    assert len(_messages(folder)) == 20
    listed = _mailmag(folder / "mailmag.toml", "issues", "list").stdout.splitlines()
    assert len(listed) == 1
    assert re.fullmatch(r"1\t第1号\tsent\t[-0-9]+ [0-9:]+ JST\t5 items\tall\t.+第1号", listed[0])
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "mine"  # only the demo's own files go


def test_a_real_installation_is_never_overwritten(tmp_path):
    real = "[database]\nurl = \"sqlite:///production.db\"\n"
    (tmp_path / "mailmag.toml").write_text(real, encoding="utf-8")
    (tmp_path / "production.db").write_bytes(b"precious")
    result = _demo("--dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {tmp_path / 'mailmag.toml'} is not a demo configuration (no demo = "
                             "true): the demo would overwrite a real installation; choose another --dir\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailmag.toml", "production.db"]
    assert (tmp_path / "mailmag.toml").read_text(encoding="utf-8") == real


def test_the_demo_takes_no_config_option(tmp_path):
    args = ["--config", str(tmp_path / "x.toml"), "demo", "--dir", str(tmp_path / "d")]
    result = CliRunner().invoke(cli, args, env=CLEAN_ENV)
    assert result.exit_code == 2 and "leave out --config" in result.stderr
    assert not (tmp_path / "d").exists()


NO_NETWORK = '''\
import socket

def _refuse(*args, **kwargs):
    raise OSError("network access is disabled for this test")

socket.socket.connect = socket.socket.connect_ex = _refuse
socket.getaddrinfo = socket.create_connection = _refuse
'''


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMAG_")}
    return {**env, **extra}


@pytest.mark.slow  # real demo and serve processes
def test_a_real_process_runs_the_demo_offline_and_serves_its_archive(tmp_path):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK, encoding="utf-8")
    offline = _env(PYTHONPATH=str(guard))
    connect = "import socket; socket.create_connection(('127.0.0.1', 9))"
    probe = subprocess.run([sys.executable, "-c", connect], env=offline, capture_output=True, text=True,
                           timeout=60)
    assert "network access is disabled" in probe.stderr  # the guard is in force

    folder = tmp_path / "demo"
    done = subprocess.run(mailmag_command("demo", "--dir", str(folder)), env=offline,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "20 sent, 0 failed" in done.stdout
    assert "demo/issue-1.html" in done.stdout  # relative to the folder it was started in

    config = str(folder / "mailmag.toml")
    command = mailmag_command("--config", config, "serve", "--port", "0")
    serve = subprocess.Popen(command, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stderr is not None
        url = re.search(r"serving on (http://\S+/)", serve.stderr.readline()).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(url + "archive/1", timeout=10) as page:
            html = page.read().decode("utf-8")
        assert all(title in html for title in TITLES)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        serve.stderr.close()  # type: ignore[union-attr]
