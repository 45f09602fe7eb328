"""README.md works as written: the tutorial's ```sh blocks run in order, every `mailmag …` it shows parses.

The tutorial's `mailmag` lines run in-process (the real CLI, a real SQLite file, the file
transport); the other lines (heredocs, `export`) run in bash. Every other `mailmag …` line or
inline code span (console, ini blocks) is parsed by the real command line without running.
And every command mailmag has is documented in the README.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes
from email.header import decode_header, make_header
from email.policy import compat32
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mailmag.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TWO_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/mailmag demo\n"
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest\n"
)
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# `mailmag` starting a line (after a `$ ` prompt and VAR=value assignments), or as a path (…/bin/mailmag).
_INVOCATION = re.compile(r"(?:^(?:\$\s+)?(?:[A-Z_]+=\S+\s+)*|bin/)mailmag\s+(.+)$")
_SHELL_SYNTAX = set("$|&;<>`")


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _blocks() -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block, in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(_readme())]


def _commands(body: str) -> Iterator[str]:
    """Shell commands of a block: backslash continuations joined, a heredoc kept whole."""
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line, i = lines[i], i + 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line, i = line[:-1].rstrip() + " " + lines[i].strip(), i + 1
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        if heredoc:
            end = lines.index(heredoc.group(1), i)
            line, i = "\n".join([line, *lines[i:end + 1]]), end + 1
        yield line


def _invocations() -> list[tuple[list[str], bool]]:
    """(arguments after `mailmag`, strict) for every invocation shown; inline spans are not strict."""
    found = []
    for _info, body in _blocks():
        for command in _commands(body):
            match = _INVOCATION.search(command.split("\n")[0])
            if match:
                found.append((shlex.split(match.group(1), comments=True), True))
    prose = re.sub(r"<!--.*?-->", "", _FENCE.sub("", _readme()), flags=re.DOTALL)
    for span in re.findall(r"`([^`\n]+)`", prose):
        match = _INVOCATION.search(span)
        if match:
            found.append((shlex.split(match.group(1)), False))
    return found


def _parse(args: list[str], strict: bool) -> tuple[str, ...]:
    """Parse like `mailmag ARGS` without running; returns the command path. UsageError if wrong."""
    command: click.Command = cli
    name, parent, path = "mailmag", None, ("mailmag",)
    while True:
        ctx = click.Context(command, info_name=name, parent=parent)
        if not isinstance(command, click.Group):
            if strict:
                with ctx.scope(cleanup=False):
                    command.parse_args(ctx, args)
            return path
        with ctx.scope(cleanup=False):
            rest = click.Command.parse_args(command, ctx, args)  # the group's own options only
        if not rest:
            raise click.UsageError(f"{' '.join(path)}: no subcommand")
        sub_name, sub, args = command.resolve_command(ctx, rest)
        assert sub is not None and sub_name is not None
        command, name, parent, path = sub, sub_name, ctx, (*path, sub_name)


def _all_commands(group: click.Group = cli, path: tuple[str, ...] = ("mailmag",)
                  ) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*path, name))
        else:
            yield (*path, name)


# --- the tests --------------------------------------------------------------------------------


def test_the_readme_opens_with_the_two_commands():
    info, body = _blocks()[0]
    assert (info, body) == ("sh", TWO_COMMANDS)


def test_every_mailmag_line_shown_parses():
    invocations = _invocations()
    assert len(invocations) > 50
    wrong = []
    for args, strict in invocations:
        try:
            _parse(args, strict)
        except click.UsageError as exc:
            wrong.append(f"mailmag {shlex.join(args)}: {exc.format_message()}")
    assert wrong == []


def test_every_command_is_documented():
    documented = {_parse(args, strict=False) for args, _ in _invocations()}
    missing = [" ".join(path) for path in _all_commands() if path not in documented]
    assert missing == []


class Shell:
    """Runs tutorial commands in one folder with one environment, as a reader's terminal would."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env: dict[str, str] = {}
        self.runner = CliRunner()

    def run(self, command: str) -> str:
        if command.startswith("export "):
            name = command.removeprefix("export ").split("=", 1)[0]
            self.env[name] = self._bash(f'{command}\nprintf %s "${name}"')
            return ""
        if command.startswith("mailmag ") and not _SHELL_SYNTAX & set(command):
            result = self.runner.invoke(cli, shlex.split(command, comments=True)[1:], env=self.env,
                                        catch_exceptions=False)
            assert result.exit_code == 0, f"{command}\n{result.output}{result.stderr}"
            return result.stdout
        return self._bash(command)

    def _bash(self, command: str) -> str:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's mailmag
        env = {**os.environ, **self.env, "PATH": path}
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=self.folder, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
        return done.stdout

    def mailmag(self, *args: str) -> str:
        return self.run(shlex.join(["mailmag", *args]))


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with what the tutorial uses from the clone, and no MAILMAG_* from the developer."""
    shutil.copy(ROOT / "config.example.toml", tmp_path)
    shutil.copytree(ROOT / "subscribers", tmp_path / "subscribers")
    for name in [n for n in os.environ if n.startswith("MAILMAG_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_tutorial_runs_as_written(clone):
    tutorial = _readme().split("## Tutorial", 1)[1].split("## Operations", 1)[0]
    blocks = [body for info, body in _FENCE.findall(tutorial) if info == "sh"]
    assert len(blocks) >= 10
    shell = Shell(clone)
    for body in blocks:
        for command in _commands(body):
            shell.run(command)
    # What the secretariat now sees: issue 1 sent to every subscriber (one removed since); issue 2
    # (topic events) scheduled, cancelled and deleted: its item approved again, no number used.
    status = json.loads(shell.mailmag("issues", "status", "1", "--json"))
    active = json.loads(shell.mailmag("subscribers", "list", "--status", "active", "--json"))
    assert status["status"] == "sent" and status["sent"] == status["total"] == len(active) + 1 > 10
    listed = json.loads(shell.mailmag("issues", "list", "--json"))
    assert [(i["id"], i["number"], i["status"]) for i in listed] == [(1, 1, "sent")]
    approved = json.loads(shell.mailmag("items", "list", "--status", "approved", "--json"))
    assert [item["id"] for item in approved] == [4]
    messages = sorted((clone / "outbox").glob("*.eml"))
    assert len(messages) == status["total"] + 1  # and the test message
    parsed = [message_from_bytes(m.read_bytes(), policy=compat32) for m in messages]
    subjects = {str(make_header(decode_header(m["Subject"]))) for m in parsed}
    assert "【第1号】『企画会議』の概要 ほか" in subjects
    assert (clone / "issue-1.html").read_text(encoding="utf-8").count("松江市") >= 1
    assert (clone / "subscribers-export.csv").read_bytes().startswith(b"\xef\xbb\xbf")
