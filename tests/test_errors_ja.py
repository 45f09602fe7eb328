"""Every error a person can meet on a page carries its sentence in Japanese (`ja=`).

The console and the submission form are read by the secretariat and the member organizations in
Japanese; an English sentence there (`url 'x' is not an http:// or https:// address`) is one they
may not read. The command line and the logs keep the English `message`.
"""

from __future__ import annotations

import ast
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailmag.addresses import parse_address
from mailmag.errors import Fix, InvalidInput, MailmagError, StateError
from mailmag.scheduling.when import cron_trigger

PACKAGE = Path(__file__).resolve().parent.parent / "mailmag"
# Errors about what a person did or asked for; ConfigError, DatabaseError and TransportError are
# about the server's setup and its relay, read by the operator (command line, logs).
FOR_PEOPLE = {"NotFound", "InvalidInput", "InvalidEmail", "StateError", "LimitExceeded",
              "ComplianceError", "TokenError", "AccessDenied"}


def _raised_without_japanese() -> list[str]:
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:  # the command line speaks English
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in FOR_PEOPLE):
                continue
            ja = next((k.value for k in node.keywords if k.arg == "ja"), None)
            written = isinstance(ja, ast.Constant | ast.JoinedStr)
            if ja is None or (written and ast.unparse(ja).isascii()):
                missing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.func.id}")
    return missing


def test_every_error_a_page_can_show_has_a_japanese_sentence():
    assert _raised_without_japanese() == []


def test_a_japanese_sentence_names_its_steps_in_japanese_and_english_stays_for_the_command_line():
    error = StateError("issue 3 has no 'ja' rendering", ja="第3号には日本語の版がありません",
                       fixes=[Fix("render_issue", 3), Fix("send_issue", 3)])
    assert error.text("ja") == "第3号には日本語の版がありません。対処：号を作り直す → 送信する"
    assert error.text("en") == str(error) == (
        "issue 3 has no 'ja' rendering: render the issue again, then send it")


@pytest.mark.parametrize("error", [InvalidInput("bad", ja="不正です"), MailmagError("plain")])
def test_an_error_keeps_its_japanese_across_processes(error):
    import pickle

    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.message, again.ja) == (type(error), error.message, error.ja)


@pytest.mark.parametrize(("typed", "why"), [
    ("hanako.example.jp", "「@」がありません"),
    ("hanako@", "「@」の後が空です"),
    ("hanako@localhost", "「@」の後に「.」がありません"),
    ("hana ko@example.jp", "「@」の前に使えない文字があります"),
    ("hana..ko@example.jp", "「.」が2つ続いています"),
    ("hanako@exa mple.jp", "「@」の後に使えない文字があります"),
])
def test_why_an_address_is_refused_is_said_in_japanese_too(typed, why):
    """The address checker's reasons come in English only; a Japanese page names them itself."""
    with pytest.raises(InvalidInput) as refused:
        parse_address(typed)
    assert refused.value.text("ja") == f"メールアドレス「{typed}」が正しくありません（{why}）"
    assert refused.value.message.startswith(f"invalid e-mail address {typed!r}: ")


@pytest.mark.parametrize(("line", "field"), [
    ("61 9 * * *", "分の欄「61」"), ("0 25 * * *", "時の欄「25」"), ("0 9 32 * *", "日の欄「32」"),
    ("0 9 * 13 *", "月の欄「13」"), ("0 9 * 0 *", "月の欄「0」"),
])
def test_which_crontab_field_is_wrong_is_said_in_japanese(line, field):
    """APScheduler's reason is English ("the last value (25) is higher than the maximum value
    (23)"): a Japanese page names the field instead of quoting it."""
    with pytest.raises(InvalidInput) as refused:
        cron_trigger(line, ZoneInfo("Asia/Tokyo"))
    assert refused.value.text("ja") == f"crontab の行「{line}」の{field}が正しくありません"
