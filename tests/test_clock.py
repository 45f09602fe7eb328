"""One wall clock: mailmag reads "now" only through mailmag.clock, and tests can move it anywhere."""

from __future__ import annotations

import ast
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import time_machine
from clocked import mailmag_command
from conftest import SECRET

from mailmag import clock
from mailmag.config import Config, GeneralConfig, SenderConfig
from mailmag.delivery import dkim, messages
from mailmag.models import utcnow

PACKAGE = Path(__file__).resolve().parents[1] / "mailmag"
# Calls that read the wall clock; monotonic clocks (durations, timeouts) are fine anywhere.
WALL_CLOCK = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
              ("time", "time"), ("time", "time_ns"), ("time", "localtime"), ("time", "gmtime")}
FAR = dt.datetime(2031, 1, 1, 0, 30, tzinfo=dt.UTC)


def _wall_clock_readings(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if (name, node.func.attr) in WALL_CLOCK:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def test_only_the_clock_module_reads_the_wall_clock():
    readings = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "clock.py"
                for hit in _wall_clock_readings(path)]
    assert readings == []
    assert _wall_clock_readings(PACKAGE / "clock.py") != []  # the checker does find one


def test_the_clock_is_aware_utc_and_utcnow_is_the_same_clock():
    with time_machine.travel(FAR, tick=False):
        assert clock.now() == utcnow() == FAR
        assert clock.now().tzinfo is dt.UTC
        assert clock.today(dt.timezone(dt.timedelta(hours=9))) == dt.date(2031, 1, 1)
        assert clock.today(dt.timezone(dt.timedelta(hours=-5))) == dt.date(2030, 12, 31)


def test_a_moved_clock_moves_the_mail_date_and_the_dkim_time():
    config = Config(mailmag=GeneralConfig(base_url="https://news.example.jp"),
                    sender=SenderConfig(from_="news@example.jp", name="事務局"))
    with time_machine.travel(FAR, tick=False):
        raw = messages.build_simple(config, "a@example.jp", "", "件名", "本文")
        line = dkim.sign(raw, b"s", b"example.jp", _key(), [b"from", b"subject", b"date"])
    assert b"Date: Wed, 01 Jan 2031 09:30:00 +0900" in raw
    assert b"t=%d" % int(FAR.timestamp()) in line


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def test_a_process_the_tests_start_runs_on_the_tests_clock(mailmag, config_file):
    with time_machine.travel(FAR, tick=True):
        command = mailmag_command("--config", str(config_file), "subscribers", "add", "far@example.jp")
        done = subprocess.run(command, env={"MAILMAG_SECRET_KEY": SECRET, "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = json.loads(mailmag.ok("subscribers", "list", "--json").stdout)
    assert [s["email"] for s in listed] == ["far@example.jp"]
    assert listed[0]["created_at"].startswith("2031-01-01T")


PROBE = '''
import datetime as dt
import subprocess
import sys

from clocked import mailmag_command

from mailmag.models import utcnow


def test_probe():
    assert utcnow().date() >= dt.date(2031, 1, 1)
    command = mailmag_command("--help")
    assert command[1].endswith("clocked.py") and float(command[2]) > 3 * 365 * 86400
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
'''


def test_the_ci_clock_moves_the_whole_session_and_the_processes_it_starts(tmp_path):
    (tmp_path / "test_probe.py").write_text(PROBE, encoding="utf-8")
    tests = str(Path(__file__).resolve().parent)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": tests, "MAILMAG_TEST_CLOCK": "2031-01-01"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:randomly",
                           "-p", "no:cacheprovider", str(tmp_path / "test_probe.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wall clock moved to 2031-01-01T00:00:00+00:00" in done.stdout
