"""The database schema: SQLAlchemy 2.x typed models, the same on SQLite and PostgreSQL.

Times are stored in UTC (`UTCDateTime` makes every value timezone-aware on the way out).
Each stateful table has ONE status column; the allowed values are listed beside it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import (
    JSON,
    Date,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mailmag import clock
from mailmag.errors import in_lang

# No row's id reaches this (SQLite's INTEGER and PostgreSQL's BIGINT are 64-bit): a number at or
# past it from a URL or a form names nothing (SQLite raised OverflowError for it: a 500).
ID_LIMIT = 2**63


def utcnow() -> dt.datetime:
    """Now, aware UTC: mailmag.clock's reading, so tests that move the clock move this too."""
    return clock.now()


def new_link_key() -> str:
    """A subscriber row's random link key (128 bits): never reused, gone with the row."""
    return secrets.token_urlsafe(16)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on both SQLite (naive text) and PostgreSQL (timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


# --- audience -------------------------------------------------------------------------------

SUBSCRIBER_STATUSES = ("pending", "active", "unsubscribed", "bounced")


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    # Lower-cased whole address: duplicates are detected case-insensitively.
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    organization: Mapped[str] = mapped_column(String(200), default="")
    lang: Mapped[str] = mapped_column(String(8), default="ja")
    topics: Mapped[list[str]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    confirmed_at: Mapped[dt.datetime | None]
    # Random, carried by every link made for this row: an id SQLite reuses is not identity.
    link_key: Mapped[str] = mapped_column(String(32), default=new_link_key)

    consents: Mapped[list[ConsentEvent]] = relationship(back_populates="subscriber")


class ConsentEvent(Base):
    """One opt-in or opt-out, kept forever (also after `remove --forget`, then without PII)."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))  # opt_in | ask | confirm | opt_out | forget | choose
    # cli | import | web | one-click | mailto | bounce | complaint
    channel: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(Text, default="")
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(Text)
    wording_version: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    subscriber: Mapped[Subscriber | None] = relationship(back_populates="consents")


class Suppression(Base):
    """An address never to be mailed again, kept as a hash so it survives `--forget`."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(32))  # forgotten | bounced | complaint
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BounceEvent(Base):
    """A bounce, complaint or mailto unsubscribe read from a mailbox, or a 5xx during dispatch."""

    __tablename__ = "bounce_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))  # hard | soft | complaint | unsubscribe
    code: Mapped[str] = mapped_column(String(16), default="")
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    # What makes processing idempotent: the report's Message-ID (or a digest of it).
    source_key: Mapped[str] = mapped_column(String(255), unique=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --- content --------------------------------------------------------------------------------


class Org(Base):
    __tablename__ = "orgs"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    short_name: Mapped[str] = mapped_column(String(100), default="")
    contact: Mapped[str] = mapped_column(String(320), default="")
    # Bumped by `orgs token --rotate`: signed links carrying an older version stop working.
    token_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    items: Mapped[list[Item]] = relationship(back_populates="org")


ITEM_KINDS = ("meeting", "event", "exhibitors", "news")
ITEM_STATUSES = ("submitted", "approved", "rejected", "published")
# How Japanese sentences name a subscriber's, an item's or an issue's status (console messages).
STATUS_JA = {
    "pending": "登録確認待ち", "active": "配信中", "unsubscribed": "配信停止済み", "bounced": "不達で停止中",
    "erased": "消去済み",
    "submitted": "確認待ち", "approved": "承認済み", "rejected": "差し戻し", "published": "掲載済み",
    "draft": "下書き", "scheduled": "送信予約済み", "sending": "送信中", "sent": "送信済み",
    "cancelled": "取り消し済み", "queued": "送信待ち", "failed": "不達", "dead": "送信を断念",
}
# A BounceEvent's kind as the console's pages say it (English, Japanese).
EVENT_KIND_WORDS = {
    "hard": ("hard bounce", "不達（恒久的）"), "soft": ("soft bounce", "不達（一時的）"),
    "complaint": ("complaint", "迷惑メールの報告"),
    "unsubscribe": ("unsubscribed by mail", "メールで配信停止"),
    "asked": ("asked by mail, without our tag", "メールでの配信停止依頼（タグなし）"),
}


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text, default="")  # Markdown, normalized
    date: Mapped[dt.date | None] = mapped_column(Date)  # meeting / event date
    end_date: Mapped[dt.date | None] = mapped_column(Date)
    time_text: Mapped[str] = mapped_column(String(100), default="")  # "13:30〜17:00"
    venue: Mapped[str] = mapped_column(String(300), default="")
    url: Mapped[str] = mapped_column(String(2000), default="")
    deadline: Mapped[dt.date | None] = mapped_column(Date)
    fee: Mapped[str] = mapped_column(String(200), default="")
    event_name: Mapped[str] = mapped_column(String(300), default="")  # exhibitors: which event
    how_to_apply: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="submitted", index=True)
    reject_reason: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str] = mapped_column(String(16), default="cli")  # cli | file | web
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    org: Mapped[Org] = relationship(back_populates="items")


class Issue(Base):
    __tablename__ = "issues"
    # Never give a deleted draft's id to the next one (PostgreSQL's sequences don't): the audit
    # log and links that name issue 5 must not come to mean another issue.
    __table_args__ = {"sqlite_autoincrement": True}

    # `id` addresses an issue in every command; `number` is the public 第N号, given when its
    # sending starts (None for a draft, a scheduled issue, or a cancelled one that sent nothing),
    # so the archive counts what was sent, without gaps.
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int | None] = mapped_column(unique=True)
    # The number the stored renderings show (the next free one when rendered): starting the send
    # renders again only if the number it gets is another one.
    rendered_number: Mapped[int | None]
    title: Mapped[str] = mapped_column(String(300))
    topic: Mapped[str | None] = mapped_column(String(64))  # None: every subscriber
    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    scheduled_at: Mapped[dt.datetime | None]
    # When `issues send --at` last set or moved the schedule: what a timed send did before then
    # (missed, failed) is history, not news about the issue (scheduling.jobs.last_send_run).
    schedule_set_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    rendered_at: Mapped[dt.datetime | None]
    sent_at: Mapped[dt.datetime | None]  # when the send started (audience frozen)
    # While a worker cannot reach the relay for this issue's deliveries: since when, and why.
    relay_waiting_since: Mapped[dt.datetime | None]
    relay_error: Mapped[str | None] = mapped_column(Text)

    entries: Mapped[list[IssueItem]] = relationship(
        back_populates="issue", order_by="IssueItem.position", cascade="all, delete-orphan"
    )
    renderings: Mapped[list[Rendering]] = relationship(
        back_populates="issue", cascade="all, delete-orphan"
    )


class IssueItem(Base):
    __tablename__ = "issue_items"
    __table_args__ = (UniqueConstraint("issue_id", "item_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    position: Mapped[int] = mapped_column(default=0)

    issue: Mapped[Issue] = relationship(back_populates="entries")
    item: Mapped[Item] = relationship()


class Rendering(Base):
    """An issue rendered once per language, frozen: what was previewed is what is sent."""

    __tablename__ = "renderings"
    __table_args__ = (UniqueConstraint("issue_id", "lang"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    lang: Mapped[str] = mapped_column(String(8))
    subject: Mapped[str] = mapped_column(String(500))
    html: Mapped[str] = mapped_column(Text)  # CSS inlined, with per-recipient placeholders
    text: Mapped[str] = mapped_column(Text)
    rendered_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    issue: Mapped[Issue] = relationship(back_populates="renderings")


# --- delivery -------------------------------------------------------------------------------

class Delivery(Base):
    """One recipient of one issue: the outbox row that is the source of truth."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        # Progress and completion of one issue: without it, checking "anything still pending?"
        # walks every row already sent, once per claimed batch (O(list²) over a send).
        Index("ix_deliveries_issue_status", "issue_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # No index of its own: the two above begin with it (each status change writes every index).
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))  # frozen with the audience
    lang: Mapped[str] = mapped_column(String(8), default="ja")
    message_id: Mapped[str] = mapped_column(String(255))  # fixed at enqueue, reused on retries
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    # When its first try failed for a reason that is retried (a 4xx, a dropped connection, an
    # address refusal not believed yet): [retry] lifetime_seconds counts from here, not from
    # when it was queued, which may be days earlier (a send window over 年末年始, a relay down).
    retrying_since: Mapped[dt.datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[dt.datetime | None]
    lease_expiries: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_reply: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # when the relay accepted it; on a row marked ambiguous and not sent, when it may have
    sent_at: Mapped[dt.datetime | None]
    # attempts that may have delivered it (a drop after the final dot): [retry] ambiguous_max_attempts
    maybe_copies: Mapped[int] = mapped_column(default=0, server_default="0")


# --- scheduling -----------------------------------------------------------------------------


class AutoSchedule(Base):
    """A recurring automatic issue (`schedule add --cron`); its APScheduler job shares the id."""

    __tablename__ = "auto_schedules"
    __table_args__ = {"sqlite_autoincrement": True}  # as for issues: an id is never given twice

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(100))
    topic: Mapped[str | None] = mapped_column(String(64))  # the issues it makes go to this topic
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


def timed_send_job_id(issue_id: int) -> str:
    """The JobRun job_id of an issue's timed send (`issues send ID --at …`)."""
    return f"send-issue-{issue_id}"


class JobRun(Base):
    """What a scheduled job did when it fired, or that it was missed: never silently dropped."""

    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(191), index=True)
    scheduled_for: Mapped[dt.datetime]
    outcome: Mapped[str] = mapped_column(String(16))  # sent | skipped | held | missed | failed
    detail: Mapped[str] = mapped_column(Text, default="")
    detail_ja: Mapped[str] = mapped_column(Text, default="", server_default="")  # (a failure: the console)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("job_id", "scheduled_for"),)

    def said(self, lang: str) -> str:
        """The detail as a page in `lang` shows it: Japanese where it was recorded."""
        return in_lang(lang, self.detail, self.detail_ja)


# --- web ------------------------------------------------------------------------------------


class SubscribeAttempt(Base):
    """A confirmation mail asked for on the public form: the per-address and per-IP limits."""

    __tablename__ = "subscribe_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    ip: Mapped[str] = mapped_column(String(64), index=True)
    mailed: Mapped[bool] = mapped_column(default=False)  # counts against the address's limit
    # whether the mail left: one still waiting in a web process that stopped never will
    sent: Mapped[bool] = mapped_column(default=False, server_default=false())
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


# --- console (web/admin) --------------------------------------------------------------------

ADMIN_ROLES = ("owner", "sender", "editor")


class Admin(Base):
    """A secretariat account of the web console (made at the terminal: `mailmag admins add`)."""

    __tablename__ = "admins"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))  # owner | sender | editor
    password_hash: Mapped[str] = mapped_column(String(255))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    # The last TOTP time step accepted: a code seen once is refused the second time.
    totp_last_step: Mapped[int | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    password_changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AdminSession(Base):
    """A logged-in browser: only the digest of its cookie is stored, so a database leak logs no one in."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admins.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    admin: Mapped[Admin] = relationship()


class LoginAttempt(Base):
    """One try at the console's login form: the per-account and per-address throttles count these."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    ip: Mapped[str] = mapped_column(String(64), index=True)
    ok: Mapped[bool] = mapped_column(default=False)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class AuditEntry(Base):
    """A state-changing action in the console or on admin accounts: who, when, what, from where."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(64))  # the admin's name (kept after the account goes)
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
