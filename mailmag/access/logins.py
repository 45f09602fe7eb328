"""Logging in to the console: throttles and lockout, then a server-side session.

A wrong name, a wrong password and a wrong one-time code are one answer, so the form tells
an attacker nothing. After `max_failed_logins` failures on one account (or
`max_failed_logins_per_ip` from one address) within `lockout_minutes`, that account (or
address) is refused, even with the right password, until the window has passed.

Sessions live in the database and the browser holds only a random token; its SHA-256 is
stored, so a copy of the database logs no one in. A session ends on logout, on a password
reset, after `session_idle_minutes` without a request and `session_max_hours` after login.
A login always makes a new session (and ends the one the browser came with): a session id
planted before login is worth nothing after it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from mailmag.access import accounts
from mailmag.config import AdminConfig
from mailmag.errors import AccessDenied
from mailmag.models import Admin, AdminSession, LoginAttempt, utcnow

REFUSED = "the name, password or one-time code is wrong"
REFUSED_JA = "アカウント名、パスワード、ワンタイムコードのいずれかが違います"
REFUSED_NO_CODE = (f"{REFUSED} (an owner's or sender's account needs a one-time code, set up at the "
                   "terminal: mailmag admins totp NAME)")
REFUSED_NO_CODE_JA = (f"{REFUSED_JA}（owner と sender のアカウントにはワンタイムコードが必要です。"
                      "サーバーで mailmag admins totp アカウント名 を実行して設定します）")
LOCKED = "too many failed logins: try again later"
LOCKED_JA = "ログインの失敗が多すぎます。しばらくしてからもう一度お試しください"
# Touching last_seen_at on every request would make every page a write; a minute is precise
# enough, and a quarter of the idle limit where that is shorter (helper-100: with an idle limit of
# one minute, touched once a minute, someone at work was logged out at the 60th second).
_TOUCH_EVERY = dt.timedelta(seconds=60)


class LockedOut(AccessDenied):
    """Refused by the lockout, the credentials not looked at: not another failure, or trying
    again within the window would keep the lock for good (helper-82)."""


@dataclasses.dataclass(frozen=True)
class Started:
    token: str  # for the cookie; never stored
    session: AdminSession


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _locked(session: Session, policy: AdminConfig, now: dt.datetime, limit: int, **where: str) -> bool:
    """`limit` failures within lockout_minutes of each other lock the account (or address) for
    lockout_minutes from the last of them: from when the lock began, as the settings say, not
    from the first failure (helper-84: a lock begun late in the window lasted 21 s of a minute).
    Tries refused by the lock are not failures (authenticate), so they do not move it."""
    column = LoginAttempt.name if "name" in where else LoginAttempt.ip
    value = where.get("name", where.get("ip"))
    lockout = dt.timedelta(minutes=policy.lockout_minutes)
    query = (select(LoginAttempt.at).where(column == value, LoginAttempt.ok.is_(False),
                                           LoginAttempt.at > now - 2 * lockout)
             .order_by(LoginAttempt.at.desc()).limit(limit))
    if "name" in where:  # a good login on the account starts its count again
        last_ok = select(func.max(LoginAttempt.at)).where(column == value, LoginAttempt.ok.is_(True))
        floor = session.scalar(last_ok)
        if floor is not None:
            query = query.where(LoginAttempt.at > floor)
    recent = list(session.scalars(query))
    return len(recent) >= limit and recent[0] > now - lockout and recent[0] - recent[-1] <= lockout


def locked_out(session: Session, policy: AdminConfig, name: str, ip: str, now: dt.datetime) -> bool:
    """Too many recent failures on this account, or from this address."""
    return (_locked(session, policy, now, policy.max_failed_logins, name=name)
            or _locked(session, policy, now, policy.max_failed_logins_per_ip, ip=ip))


def authenticate(session: Session, policy: AdminConfig, name: str, password: str, code: str, ip: str,
                 now: dt.datetime | None = None) -> Admin:
    """The admin these credentials are (the success is recorded), or AccessDenied.

    AccessDenied rolls the unit of work back: the caller records the failure with
    `record_failure` in a unit of its own, so that it is kept for the throttles (but not a
    LockedOut: no credentials were tried).
    """
    now = now or utcnow()
    name = name.strip()[:64]
    if locked_out(session, policy, name, ip, now):
        raise LockedOut(LOCKED, ja=LOCKED_JA)
    admin = accounts.find(session, name)
    good = accounts.verify_password(admin, password)
    if good and admin is not None and accounts.needs_totp(admin, policy.require_totp):
        # An account with no code yet is refused as a wrong code is: a different answer would
        # tell whoever guesses that the password was right (helper-70). doctor names them.
        good = accounts.verify_totp(admin, code, now.timestamp())
    if not good or admin is None:
        if policy.require_totp:
            raise AccessDenied(REFUSED_NO_CODE, ja=REFUSED_NO_CODE_JA)
        raise AccessDenied(REFUSED, ja=REFUSED_JA)
    session.add(LoginAttempt(name=name, ip=ip, ok=True, at=now))
    sweep(session, policy, now)
    return admin


def record_failure(session: Session, name: str, ip: str, now: dt.datetime | None = None) -> None:
    session.add(LoginAttempt(name=name.strip()[:64], ip=ip[:64], ok=False, at=now or utcnow()))


def start(session: Session, admin: Admin, ip: str, user_agent: str, previous_token: str | None = None,
          now: dt.datetime | None = None) -> Started:
    """A new session for a just-authenticated admin; the browser's previous one ends."""
    if previous_token:
        end(session, previous_token)
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    row = AdminSession(token_hash=_digest(token), admin_id=admin.id, csrf=secrets.token_urlsafe(32),
                       ip=ip[:64], user_agent=user_agent[:500], created_at=now, last_seen_at=now)
    session.add(row)
    session.flush()
    return Started(token, row)


def resume(session: Session, policy: AdminConfig, token: str | None,
           now: dt.datetime | None = None) -> AdminSession | None:
    """The live session of this cookie, or None (an expired one is deleted on the way)."""
    now = now or utcnow()
    row, due = look(session, policy, token, now)
    if row is None or not due:
        return row
    if expired(policy, row, now):
        session.delete(row)
        return None
    row.last_seen_at = now
    return row


def look(session: Session, policy: AdminConfig, token: str | None,
         now: dt.datetime | None = None) -> tuple[AdminSession | None, bool]:
    """The cookie's session as stored, and whether `resume` has a write to make for it (delete it
    as expired, or touch it). Only reads."""
    if not token:
        return None, False
    now = now or utcnow()
    row = session.scalar(select(AdminSession).where(AdminSession.token_hash == _digest(token)))
    if row is None:
        return None, False
    touch_every = min(_TOUCH_EVERY, dt.timedelta(minutes=policy.session_idle_minutes) / 4)
    return row, expired(policy, row, now) or now - row.last_seen_at > touch_every


def expired(policy: AdminConfig, row: AdminSession, now: dt.datetime) -> bool:
    """Past the idle limit or the absolute one: the cookie logs in no more."""
    idle = now - row.last_seen_at > dt.timedelta(minutes=policy.session_idle_minutes)
    return idle or now - row.created_at > dt.timedelta(hours=policy.session_max_hours)


def end(session: Session, token: str) -> bool:
    """Log out: the session is deleted, its cookie is worth nothing from now on."""
    result = session.execute(delete(AdminSession).where(AdminSession.token_hash == _digest(token)))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def sweep(session: Session, policy: AdminConfig, now: dt.datetime) -> None:
    """Forget what no rule looks at any more: old login attempts, sessions past their age.

    Runs at each successful login, so the tables stay small without a job of their own.
    """
    session.execute(delete(LoginAttempt).where(
        LoginAttempt.at < now - dt.timedelta(minutes=policy.lockout_minutes, days=1)))
    session.execute(delete(AdminSession).where(
        AdminSession.created_at < now - dt.timedelta(hours=policy.session_max_hours)))
