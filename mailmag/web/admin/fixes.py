"""How the console mends a domain error: each step of mailmag.errors.STEPS as the button or page
that does it (in the page's language). A step the console cannot take names the command an
operator runs on the server; none at all leaves the plain words."""

from __future__ import annotations

from mailmag.errors import Fix, MailmagError
from mailmag.web import _, page_lang

# (button or page, where it is: "" for a page of that name); both in Japanese, through _().
PLACES = {
    "render_issue": ("記事の今の内容で作り直す", "号のページ"),
    "preview_issue": ("プレビュー", "号のページ"),
    "send_issue": ("今すぐ送信…", "号のページ"),
    "unschedule_issue": ("取り消す", "号のページ"),
    "review_item": ("記事の確認", ""),
    "approve_item": ("承認する", "記事のページ"),
    "approve_these": ("承認する", "各記事のページ"),
    "approve_items": ("記事の確認", ""),
    "add_org": ("団体", ""),
    "add_subscribers": ("読者", ""),
    "list_issues": ("号", ""),
    "list_items": ("記事の確認", ""),
    "list_subscribers": ("読者", ""),
    "list_schedules": ("自動発行", ""),
}
ON_THE_SERVER = {  # no console page does these: an operator runs the command
    "delete_issue": "mailmag issues delete {target}",
    "setup_totp": "mailmag admins totp {target}",
    "list_admins": "mailmag admins list",
    "deliver_again": "mailmag worker",
}


def how(fix: Fix) -> str:
    if fix.step in PLACES:
        label, where = PLACES[fix.step]
        if not where:
            return _("「{label}」ページ", label=_(label))
        return _("{where}の「{label}」", where=_(where), label=_(label))
    return _("サーバーで `{command}`", command=ON_THE_SERVER[fix.step].format(target=fix.target))


def said(error: MailmagError) -> str:
    """The error's one line, in the page's language, with each step's button or page."""
    return error.text(page_lang(), how)
