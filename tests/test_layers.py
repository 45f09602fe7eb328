"""The architecture contract (pyproject.toml, [tool.importlinter]) holds, and it has teeth.

`lint-imports` reads the import graph of mailmag/: each layer imports only the layers below
it, and the domain never imports the fronts (cli, web) nor click or Flask. The second test
adds one backwards import to a copy of the package and expects the contract to break, so a
contract that checks nothing would fail here.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailmag.cli import fixes
from mailmag.errors import STEPS, Fix, StateError

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


DOMAIN = ("content", "audience", "delivery", "scheduling", "access")
COMMAND = re.compile(r"mailmag (issues|items|orgs|subscribers|schedule|admins)\b")


def _raised_texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string written in a `raise …(…)` of the module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.append((node.lineno, part.value))
    return found


def test_domain_errors_name_steps_not_commands():
    """The console shows the domain's errors too: a remedy is a Fix the front says in its own
    terms (errors.py), never a command line written into the sentence."""
    spelled = [f"{path.relative_to(ROOT)}:{line}: {text}"
               for package in DOMAIN for path in sorted((ROOT / "mailmag" / package).rglob("*.py"))
               for line, text in _raised_texts(path) if COMMAND.search(text)]
    assert spelled == []


def test_an_error_keeps_its_fixes_on_the_way_from_a_sending_process():
    error = StateError("issue 3 is not rendered", fixes=[Fix("render_issue", 3)])
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is StateError and again.fixes == error.fixes
    assert str(again) == "issue 3 is not rendered: render the issue again"
    assert fixes.said(again) == "issue 3 is not rendered: render the issue again (`mailmag issues render 3`)"


def test_every_fix_has_a_command_and_a_console_way():
    """A step one front cannot say would be a KeyError in the middle of showing an error."""
    from mailmag.web.admin import fixes as console

    assert set(fixes.COMMANDS) == set(STEPS)
    assert set(console.PLACES) | set(console.ON_THE_SERVER) == set(STEPS)
    assert not set(console.PLACES) & set(console.ON_THE_SERVER)
