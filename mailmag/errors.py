"""Every error mailmag raises on purpose, one line each; messages name the fix.

    MailmagError                  base: the CLI prints it as one sentence, the web as a page
    ├── ConfigError               a configuration file or environment value is wrong
    ├── DatabaseError             the database cannot be reached or is not initialised
    ├── NotFound                  an org, item, issue, subscriber or schedule that does not exist
    ├── InvalidInput              a value a person typed or a file held is not acceptable
    │   └── InvalidEmail          an address that is not a deliverable address's syntax
    ├── StateError                the operation does not fit the object's state
    ├── LimitExceeded             a submission link or form was used more than its limits allow
    ├── ComplianceError           an issue would break 特定電子メール法 (missing sender data)
    ├── TokenError                a signed link was tampered with, foreign or expired
    ├── AccessDenied              a console login refused, or an action the account's role lacks
    └── TransportError            the relay refuses us (connect, MAIL FROM, AUTH): stop the run

An error that the user can mend names the steps as `Fix`es, not as commands: the domain says
what to do ("render the issue again"), each front says how — the command line names the command
(`mailmag issues render 3`, cli/fixes.py), the console its button (web/admin/fixes.py).

Each error a person at a page can meet carries its sentence in Japanese too (`ja=`): the console
and the submission form speak Japanese, the command line and the logs English. A page in Japanese
shows `ja` (with the steps of STEPS_JA); tests/test_errors_ja.py finds every such error without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

# What each step is, in words every front can show (str(error), logs, a scheduler job's record).
STEPS = {
    "render_issue": "render the issue again",
    "preview_issue": "look at the preview again",
    "send_issue": "send it",
    "unschedule_issue": "unschedule it first",
    "delete_issue": "to drop it, delete it",
    "review_item": "review the item",
    "approve_item": "approve it",
    "approve_these": "approve them",
    "approve_items": "approve some",
    "add_org": "register one",
    "add_subscribers": "add subscribers",
    "list_issues": "see which there are",
    "list_items": "see which there are",
    "list_subscribers": "see which there are",
    "list_schedules": "see which there are",
    "list_admins": "see which there are",
    "setup_totp": "set up its one-time code",
    "deliver_again": "start delivering again",
}
STEPS_JA = {
    "render_issue": "号を作り直す",
    "preview_issue": "プレビューをもう一度確かめる",
    "send_issue": "送信する",
    "unschedule_issue": "先に予約を取り消す",
    "delete_issue": "不要なら号を削除する",
    "review_item": "記事を確認する",
    "approve_item": "記事を承認する",
    "approve_these": "これらの記事を承認する",
    "approve_items": "記事をいくつか承認する",
    "add_org": "団体を登録する",
    "add_subscribers": "読者を登録する",
    "list_issues": "どの号があるか確かめる",
    "list_items": "どの記事があるか確かめる",
    "list_subscribers": "どの読者がいるか確かめる",
    "list_schedules": "どの自動発行があるか確かめる",
    "list_admins": "どのアカウントがあるか確かめる",
    "setup_totp": "ワンタイムコードを設定する",
    "deliver_again": "配信をもう一度始める",
}


@dataclasses.dataclass(frozen=True)
class Fix:
    """One step that mends an error: a key of STEPS, and the object it is about (an id, a name)."""

    step: str
    target: int | str = ""

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"unknown step {self.step!r}")


def said(message: str, fixes: Sequence[Fix], how: Callable[[Fix], str] = lambda _fix: "",
         lang: str = "en") -> str:
    """'message: step (how), step (how), then step (how)', each `how` in the front's own terms
    ('' leaves it out); in Japanese (`lang` "ja", `message` the Japanese sentence)
    'message。対処：step（how） → step（how）'."""
    if not fixes:
        return message
    if lang == "ja":
        steps = [STEPS_JA[fix.step] + (f"（{way}）" if (way := how(fix)) else "") for fix in fixes]
        return f"{message.rstrip('。')}。対処：{' → '.join(steps)}"
    steps = [STEPS[fix.step] + (f" ({way})" if (way := how(fix)) else "") for fix in fixes]
    listed = steps[0] if len(steps) == 1 else ", ".join(steps[:-1]) + ", then " + steps[-1]
    return f"{message}: {listed}"


def in_lang(lang: str, english: str, ja: str) -> str:
    """What a page in `lang` shows: the Japanese where it was written, else the English."""
    return ja if lang == "ja" and ja else english


@dataclasses.dataclass(frozen=True, order=True)
class Sentence:
    """A note for people that is not an error (a composer's warning, why a CSV row was skipped), in
    both languages: str() is the English (command line, logs), said(lang) what a page shows."""

    text: str
    ja: str

    def __str__(self) -> str:
        return self.text

    def said(self, lang: str) -> str:
        return in_lang(lang, self.text, self.ja)


class MailmagError(Exception):
    """Base class: str(error) is the one sentence shown to the user (with its fixes, in plain
    words); `message` and `fixes` are for fronts that say how (the command, the button), `ja` the
    same sentence for pages in Japanese."""

    def __init__(self, message: str = "", *, fixes: Sequence[Fix] = (), ja: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fixes = tuple(fixes)
        self.ja = ja

    def __str__(self) -> str:
        return said(self.message, self.fixes)

    def text(self, lang: str, how: Callable[[Fix], str] = lambda _fix: "") -> str:
        """The sentence with its steps in `lang` (Japanese where the raiser wrote it, else English)."""
        if in_lang(lang, "", self.ja):
            return said(self.ja, self.fixes, how, "ja")
        return said(self.message, self.fixes, how)

    def __reduce__(self) -> tuple:  # to another process (worker --processes) with its fixes
        return _rebuilt, (type(self), self.message, self.fixes, self.ja)


def _rebuilt(kind: type[MailmagError], message: str, fixes: tuple[Fix, ...], ja: str = "") -> MailmagError:
    return kind(message, fixes=fixes, ja=ja)


class ConfigError(MailmagError):
    """The configuration is malformed or names an unknown key."""


class DatabaseError(MailmagError):
    """The database cannot be reached or is not initialised."""


class NotFound(MailmagError):
    """The named object does not exist."""


class InvalidInput(MailmagError):
    """A value is not acceptable."""


class InvalidEmail(InvalidInput):
    """An e-mail address is not valid."""


class StateError(MailmagError):
    """The object's state does not allow the operation."""


class LimitExceeded(MailmagError):
    """More requests or bytes than a configured limit allows; try again later."""


class ComplianceError(MailmagError):
    """An issue lacks what 特定電子メール法 requires."""


class TokenError(MailmagError):
    """A signed token is invalid, foreign or expired."""


class AccessDenied(MailmagError):
    """A console login is refused, or the account's role does not allow the action."""


class TransportError(MailmagError):
    """The mail relay refused the connection or the sender."""
