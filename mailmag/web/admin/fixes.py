"""How the console mends a domain error: each step of mailmag.errors.STEPS as the button or page
that does it (in the page's language). A step the console cannot take names the command an
operator runs on the server; none at all leaves the plain words."""

from __future__ import annotations

from mailmag import errors
from mailmag.errors import Fix, MailmagError
from mailmag.web import _

# (button or page, where it is), in the console's own words; the text goes through _().
PLACES = {
    "render_issue": ("記事の今の内容で作り直す", "on the issue's page"),
    "preview_issue": ("プレビュー", "on the issue's page"),
    "send_issue": ("今すぐ送信…", "on the issue's page"),
    "unschedule_issue": ("取り消す", "on the issue's page"),
    "review_item": ("記事の確認", "page"),
    "approve_item": ("承認する", "on the item's page"),
    "approve_these": ("承認する", "on each item's page"),
    "approve_items": ("記事の確認", "page"),
    "add_org": ("団体", "page"),
    "add_subscribers": ("読者", "page"),
    "list_issues": ("号", "page"),
    "list_items": ("記事の確認", "page"),
    "list_subscribers": ("読者", "page"),
    "list_schedules": ("自動発行", "page"),
}
ON_THE_SERVER = {  # no console page does these: an operator runs the command
    "delete_issue": "mailmag issues delete {target}",
    "setup_totp": "mailmag admins totp {target}",
    "list_admins": "mailmag admins list",
}


def how(fix: Fix) -> str:
    if fix.step in PLACES:
        label, where = PLACES[fix.step]
        return f"「{_(label)}」 {where}"
    return f"on the server: `{ON_THE_SERVER[fix.step].format(target=fix.target)}`"


def said(error: MailmagError) -> str:
    """The error's one line with each step's button or page."""
    return errors.said(error.message, error.fixes, how)
