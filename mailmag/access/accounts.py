"""Console accounts: Argon2 passwords, optional TOTP, and what each role may do.

Roles nest: an editor reviews and edits items and composes drafts; a sender also tests,
schedules, sends and cancels; an owner also manages admins, orgs and subscribers. This
table is the one place that says so; the console asks `allows(role, permission)`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from mailmag.errors import Fix, InvalidInput, NotFound, StateError
from mailmag.models import ADMIN_ROLES, Admin, AdminSession, utcnow

PERMISSIONS: dict[str, frozenset[str]] = {
    "editor": frozenset({"review", "compose"}),
    "sender": frozenset({"review", "compose", "send"}),
    "owner": frozenset({"review", "compose", "send", "manage"}),
}
MIN_PASSWORD = 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    """Verified against when the name is unknown, so a wrong name costs as long as a wrong password.

    Made at the first login, not at import: made there, it was a login's work (0.15–0.2 s of
    CPU) that every `mailmag` command and process paid before doing anything.
    """
    return hasher.hash("mailmag: no such account")


def allows(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def check_role(role: str) -> str:
    if role not in ADMIN_ROLES:
        raise InvalidInput(f"unknown role {role!r}: use {', '.join(ADMIN_ROLES)}",
                           ja=f"役割「{role}」はありません（{'、'.join(ADMIN_ROLES)} のいずれかです）")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password is too short: use at least {MIN_PASSWORD} characters",
                           ja=f"パスワードが短すぎます。{MIN_PASSWORD}文字以上にしてください")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def verify_password(admin: Admin | None, password: str) -> bool:
    """True when the password is the admin's (always does the work of one verification)."""
    dummy = _dummy_hash(_hasher)  # for a known name too: the first login of either kind makes it
    try:
        return _hasher.verify(admin.password_hash if admin else dummy, password) and admin is not None
    except (VerificationError, InvalidHashError):
        return False


def get(session: Session, name: str) -> Admin:
    admin = find(session, name)
    if admin is None:
        raise NotFound(f"there is no console account {name!r}", fixes=[Fix("list_admins")],
                       ja=f"アカウント「{name}」はありません")
    return admin


def find(session: Session, name: str) -> Admin | None:
    return session.scalar(select(Admin).where(Admin.name == name))


def listing(session: Session) -> Sequence[Admin]:
    return session.scalars(select(Admin).order_by(Admin.name)).all()


def add(session: Session, name: str, email: str, role: str, password: str) -> Admin:
    """A new account; the name is what the person types at the login form."""
    if not _NAME.match(name):
        raise InvalidInput(f"account name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)",
                           ja=f"アカウント名「{name}」は使えません。"
                              "英数字と「.」「_」「-」で64文字までにしてください")
    if find(session, name) is not None:
        raise StateError(f"the account {name!r} exists already: pick another name, or reset its password",
                         ja=f"アカウント「{name}」はすでにあります。"
                            "別の名前にするか、そのアカウントのパスワードを設定し直してください")
    if "@" not in email or any(c.isspace() for c in email):
        raise InvalidInput(f"{email!r} is not an e-mail address: test sends go there",
                           ja=f"「{email}」はメールアドレスではありません（テスト送信の宛先になります）")
    admin = Admin(name=name, email=email, role=check_role(role), password_hash=hash_password(password))
    session.add(admin)
    session.flush()
    return admin


def remove(session: Session, name: str) -> None:
    """Delete the account and end its sessions (its audit entries keep its name)."""
    admin = _locked(session, name)
    _guard_last_owner(session, admin)
    end_sessions(session, admin.id)  # explicit: not every SQLite connection enforces foreign keys
    session.delete(admin)
    session.flush()


def set_role(session: Session, name: str, role: str) -> str:
    """The account's new role, from its next page on (its sessions stay); returns the old one."""
    admin = _locked(session, name)
    old = admin.role
    if check_role(role) != "owner":
        _guard_last_owner(session, admin, ("changing its role", "役割を変える"))
    admin.role = role
    session.flush()
    return old


def _locked(session: Session, name: str) -> Admin:
    """The account, every account locked first, in one order (FOR UPDATE on PostgreSQL; SQLite's
    IMMEDIATE write lock serializes already), and read as the last commit left it: two owners
    demoted at once cannot each see the other still an owner, and a role change or a removal
    waiting on another's removal finds the account gone (helper-72, helper-74)."""
    session.scalars(select(Admin).order_by(Admin.id).with_for_update()
                    .execution_options(populate_existing=True)).all()
    return get(session, name)


def _guard_last_owner(session: Session, admin: Admin,
                      doing: tuple[str, str] = ("removing it", "削除する")) -> None:
    """(under _locked)"""
    owners = session.scalars(select(Admin.id).where(Admin.role == "owner").order_by(Admin.id)).all()
    if list(owners) == [admin.id]:
        raise StateError(f"{admin.name} is the last owner: add another owner before {doing[0]}",
                         ja=f"アカウント「{admin.name}」は最後の「owner」です。"
                            f"{doing[1]}前に、別の「owner」のアカウントを追加してください")


def reset_password(session: Session, name: str, password: str) -> int:
    """A new password; every session of the account ends. Returns how many ended."""
    admin = get(session, name)
    admin.password_hash = hash_password(password)
    admin.password_changed_at = utcnow()
    return end_sessions(session, admin.id)


def end_sessions(session: Session, admin_id: int) -> int:
    result = session.execute(delete(AdminSession).where(AdminSession.admin_id == admin_id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def set_totp(session: Session, name: str) -> str:
    """A fresh TOTP secret for the account (the old one stops working); returns it. Every
    session of the account ends, as with a new password: a code is replaced because a phone
    was lost or taken, and whoever has it may be logged in."""
    admin = get(session, name)
    admin.totp_secret = pyotp.random_base32()
    admin.totp_last_step = None
    end_sessions(session, admin.id)
    return admin.totp_secret


def clear_totp(session: Session, name: str) -> None:
    """No one-time code for the account; its sessions end."""
    admin = get(session, name)
    admin.totp_secret = None
    end_sessions(session, admin.id)


def totp_uri(admin: Admin, issuer: str) -> str:
    """The otpauth:// link an authenticator app reads (as a QR code or typed in)."""
    if not admin.totp_secret:
        raise StateError(f"{admin.name} has no one-time code set up", fixes=[Fix("setup_totp", admin.name)],
                         ja=f"アカウント「{admin.name}」にはワンタイムコードが設定されていません")
    return pyotp.TOTP(admin.totp_secret).provisioning_uri(name=admin.name, issuer_name=issuer)


def verify_totp(admin: Admin, code: str, at_timestamp: float) -> bool:
    """The code for now (or the step before or after, for clock drift), never one used before."""
    if not admin.totp_secret:
        return False
    totp = pyotp.TOTP(admin.totp_secret)
    step = int(at_timestamp // totp.interval)
    for candidate in (step - 1, step, step + 1):
        if admin.totp_last_step is not None and candidate <= admin.totp_last_step:
            continue
        if totp.verify(code.strip(), for_time=candidate * totp.interval):
            admin.totp_last_step = candidate
            return True
    return False


def needs_totp(admin: Admin, require_for_senders: bool) -> bool:
    """Whether this login must give a one-time code."""
    return bool(admin.totp_secret) or (require_for_senders and admin.role in ("owner", "sender"))


def without_needed_code(session: Session, require_for_senders: bool) -> list[str]:
    """Accounts that cannot log in until they get a one-time code (`mailmag admins totp NAME`)."""
    if not require_for_senders:
        return []
    return list(session.scalars(select(Admin.name).where(
        Admin.role.in_(("owner", "sender")), or_(Admin.totp_secret.is_(None), Admin.totp_secret == ""))
        .order_by(Admin.name)))
