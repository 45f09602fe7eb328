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
}


@dataclasses.dataclass(frozen=True)
class Fix:
    """One step that mends an error: a key of STEPS, and the object it is about (an id, a name)."""

    step: str
    target: int | str = ""

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"unknown step {self.step!r}")


def said(message: str, fixes: Sequence[Fix], how: Callable[[Fix], str] = lambda _fix: "") -> str:
    """'message: step (how), step (how), then step (how)', each `how` in the front's own terms
    ('' leaves it out)."""
    if not fixes:
        return message
    steps = [STEPS[fix.step] + (f" ({way})" if (way := how(fix)) else "") for fix in fixes]
    listed = steps[0] if len(steps) == 1 else ", ".join(steps[:-1]) + ", then " + steps[-1]
    return f"{message}: {listed}"


class MailmagError(Exception):
    """Base class: str(error) is the one sentence shown to the user (with its fixes, in plain
    words); `message` and `fixes` are for fronts that say how (the command, the button)."""

    def __init__(self, message: str = "", *, fixes: Sequence[Fix] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.fixes = tuple(fixes)

    def __str__(self) -> str:
        return said(self.message, self.fixes)

    def __reduce__(self) -> tuple:  # to another process (worker --processes) with its fixes
        return _rebuilt, (type(self), self.message, self.fixes)


def _rebuilt(kind: type[MailmagError], message: str, fixes: tuple[Fix, ...]) -> MailmagError:
    return kind(message, fixes=fixes)


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
