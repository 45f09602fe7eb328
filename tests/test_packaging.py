"""mailmag installs like a package: the sdist and the wheel carry templates/, the demo runs from it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from clocked import mailmag_command

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                                    ".hypothesis", "outbox", "mailmag-demo", "*.db", "*.db-*")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built as `python -m build` does: the sdist first, then the wheel from the sdist alone."""
    work = tmp_path_factory.mktemp("build")
    shutil.copytree(ROOT, work / "source", ignore=NOT_SOURCE)
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"),
                           str(work / "source")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return next((work / "dist").glob("mailmag-*.whl"))


def test_the_wheel_carries_every_template(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("mailmag/") for n in names if n.startswith("mailmag/templates/"))
    expected = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "templates").rglob("*") if p.is_file())
    assert shipped == expected and len(expected) > 20


def test_the_installed_wheel_runs_the_demo_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # The dependencies come from this environment (no network); mailmag itself only from the wheel.
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    install = ["install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run([sys.executable, "-m", "pip", "--python", python, *install], check=True, timeout=300)
    where = subprocess.run([python, "-c", "import mailmag; print(mailmag.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(site)  # the wheel's copy, not this checkout

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(mailmag_command("demo", python=python), cwd=empty, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "20 sent, 0 failed" in done.stdout
    assert "松江" in next((empty / "mailmag-demo").glob("issue-1.html")).read_text(encoding="utf-8")
    script = subprocess.run([str(venv / "bin" / "mailmag"), "--help"], cwd=empty, env=env,
                            capture_output=True, text=True, timeout=120)  # the console script's entry point
    assert script.returncode == 0 and script.stdout.startswith("Usage: mailmag"), script.stderr


def test_ctrl_c_while_the_command_line_loads_prints_no_traceback():
    """Loading takes a second or two; a Ctrl-C then ends the command as click's own does (one
    line, exit 1), or, before Python listens for it, kills it quietly."""
    process = subprocess.Popen([sys.executable, "-m", "mailmag", "--help"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # inside the imports
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode in (1, -signal.SIGINT), out + err
    assert "Traceback" not in err and err.strip() in ("", "Aborted!")
