"""The architecture contract (pyproject.toml, [tool.importlinter]) holds, and it has teeth.

`lint-imports` reads the import graph of mailmag/: each layer imports only the layers below
it, and the domain never imports the fronts (cli, web) nor click or Flask. The second test
adds one backwards import to a copy of the package and expects the contract to break, so a
contract that checks nothing would fail here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the package in `project`, found there first (not the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def copy_project(to: Path) -> Path:
    shutil.copytree(ROOT / "mailmag", to / "mailmag", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", to / "pyproject.toml")
    return to


def test_the_package_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "backwards"), [
    ("mailmag/delivery/outbox.py", "from mailmag.cli import main"),  # the domain calls a front
    ("mailmag/links.py", "from mailmag.delivery import outbox"),  # the ground floor calls up
    ("mailmag/delivery/dispatch.py", "from mailmag.audience import bounces"),  # the old cycle
    ("mailmag/content/items.py", "import flask"),  # the domain knows Flask
])
def test_a_backwards_import_breaks_the_contract(tmp_path, module, backwards):
    project = copy_project(tmp_path)
    source = project / module
    source.write_text(source.read_text(encoding="utf-8") + f"\n{backwards}  # noqa\n", encoding="utf-8")
    result = lint_imports(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert module.removesuffix(".py").replace("/", ".") in result.stdout
