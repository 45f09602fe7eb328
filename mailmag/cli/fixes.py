"""How the command line mends a domain error: each step of mailmag.errors.STEPS as a command.

    Error: 第3号 is not rendered: render the issue again (`mailmag issues render 3`)
"""

from __future__ import annotations

from mailmag import errors
from mailmag.errors import Fix, MailmagError

COMMANDS = {
    "render_issue": "`mailmag issues render {target}`",
    "preview_issue": "`mailmag issues preview {target}`",
    "send_issue": "`mailmag issues send {target}`",
    "unschedule_issue": "`mailmag issues cancel {target}`",
    "delete_issue": "`mailmag issues delete {target}`",
    "review_item": "`mailmag items show {target}`",
    "approve_item": "`mailmag items approve {target}`",
    "approve_these": "`mailmag items approve {target}`",
    "approve_items": "`mailmag items approve ID`, or name items with --item",
    "add_org": "`mailmag orgs add`",
    "add_subscribers": "`mailmag subscribers import`; or send it to nobody with --allow-empty: it still goes "
                       "to the archive",
    "list_issues": "`mailmag issues list`",
    "list_items": "`mailmag items list`",
    "list_subscribers": "`mailmag subscribers list`",
    "list_schedules": "`mailmag schedule list`",
    "list_admins": "`mailmag admins list`",
    "setup_totp": "`mailmag admins totp {target}`",
    "deliver_again": "`mailmag worker`, or `mailmag run`",
}


def how(fix: Fix) -> str:
    return COMMANDS[fix.step].format(target=fix.target)


def said(error: MailmagError) -> str:
    """The error's one line with each step's command."""
    return errors.said(error.message, error.fixes, how)
