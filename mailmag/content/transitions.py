"""An issue's states, one function per transition with its guard; nothing else writes Issue.status.

    draft ──schedule──▶ scheduled ──unschedule──▶ draft
    draft | scheduled ──start_sending──▶ sending ──complete (no pending rows left)──▶ sent
    sending ──cancel_issue──▶ cancelled            sent ──retry_dead──▶ sending

The outbox (delivery/) owns the delivery rows and only reports what happened to them; the
dispatcher hands those reports to the hooks its builder gave it (scheduling/sending.py), which
call the transitions here. An item's transitions live in content/items.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from mailmag.delivery import outbox
from mailmag.errors import Fix, StateError
from mailmag.models import STATUS_JA, Issue, utcnow

# What the send gates accept (content.issues.check_sendable) and what can be rendered again.
SENDABLE = ("draft", "scheduled")


def schedule(issue: Issue, when: dt.datetime, now: dt.datetime) -> None:
    """`issues send N --at …`: the issue waits as "scheduled" (a scheduled one is moved)."""
    if when <= now:
        raise StateError(f"issue {issue.id} cannot be scheduled in the past: give a later time",
                         ja=f"号（ID {issue.id}）を過去の日時に予約することはできません。"
                            "これより後の日時を指定してください")
    issue.status, issue.scheduled_at, issue.schedule_set_at = "scheduled", when, now


def unschedule(issue: Issue) -> None:
    """A scheduled issue becomes a draft again (cancelled, or its firing was missed or failed)."""
    if issue.status != "scheduled":
        raise StateError(f"issue {issue.id} is {issue.status}, not scheduled",
                         ja=f"号（ID {issue.id}）は{STATUS_JA[issue.status]}で、送信予約されていません")
    issue.status, issue.scheduled_at = "draft", None


def start_sending(session: Session, issue: Issue, domain: str, default_lang: str) -> int:
    """Freeze the audience and open the issue for workers; returns the messages queued
    (content.issues.start_sending checks the gates, gives the number and publishes the items first)."""
    if issue.status not in SENDABLE:
        raise StateError(f"issue {issue.id} is {issue.status}; only a draft or scheduled issue can be sent",
                         ja=f"号（ID {issue.id}）は{STATUS_JA[issue.status]}です。"
                            "送信できるのは下書きか送信予約済みの号だけです")
    if issue.number is None:
        raise StateError(f"issue {issue.id} has no number yet", fixes=[Fix("send_issue", issue.id)],
                         ja=f"号（ID {issue.id}）にはまだ号数がありません")
    if not issue.renderings:
        raise StateError(f"issue {issue.id} is not rendered", fixes=[Fix("render_issue", issue.id)],
                         ja=f"号（ID {issue.id}）の本文（HTML とテキスト）がまだ作られていません")
    # The issue is marked first, so an opt-out taken back meanwhile waits for this send to
    # commit and then catches up with it (outbox.catch_up; PostgreSQL's snapshots, helper-60).
    issue.status, issue.sent_at, issue.scheduled_at = "sending", utcnow(), None
    session.flush()
    return outbox.enqueue(session, issue, domain, default_lang)


def cancel_issue(session: Session, issue: Issue) -> int:
    """Stop a send: what is queued and what workers claimed but did not send is cancelled.

    Returns the rows cancelled. A message already on the wire still goes (outbox.cancel_rows).
    """
    if issue.status in ("sent", "cancelled"):
        raise StateError(f"issue {issue.id} is already {issue.status}",
                         ja=f"号（ID {issue.id}）はすでに{STATUS_JA[issue.status]}です")
    issue.status = "cancelled"
    return outbox.cancel_rows(session, issue.id)


def complete(session: Session, issue_ids: Sequence[int]) -> list[int]:
    """Issues the outbox reports drained become 'sent'; returns their numbers.

    One conditional UPDATE that looks at the rows again, so an `issues cancel` or a retry
    committed meanwhile is never overwritten.
    """
    if not issue_ids:
        return []
    done = session.execute(
        update(Issue)
        .where(Issue.id.in_(issue_ids), Issue.status == "sending", ~outbox.has_pending(Issue.id))
        .values(status="sent")
        .returning(Issue.number)
    ).scalars().all()
    return sorted(number for number in done if number is not None)


def complete_issues(session: Session) -> list[int]:
    """Every issue being sent whose every delivery reached a final state becomes 'sent'."""
    return complete(session, outbox.drained_issues(session))


def reopen(session: Session, issue_ids: set[int]) -> None:
    """Issues marked sent that have messages queued again (dead ones retried, an unsubscribe
    taken back) are being sent again, so workers take those messages. Issues loaded in the
    session are updated too (the ORM's UPDATE evaluates the condition on them)."""
    if issue_ids:
        session.execute(update(Issue).where(Issue.id.in_(issue_ids), Issue.status == "sent")
                        .values(status="sending"))


def retry_dead(session: Session, issue: Issue, now: dt.datetime) -> int:
    """`issues retry N --dead`: dead deliveries go back to the queue; a `sent` issue with dead
    rows opens again so workers take them. Returns rows requeued.

    Only an issue being sent or sent: the workers claim rows of no other issue, so dead rows of
    a cancelled issue put back in the queue would wait there forever."""
    if issue.status not in ("sending", "sent"):
        raise StateError(f"issue {issue.id} is {issue.status}: only the dead messages of an issue being sent "
                         "or sent can be queued again",
                         ja=f"号（ID {issue.id}）は{STATUS_JA[issue.status]}です。"
                            "届けられなかったメールを送り直せるのは、送信中か送信済みの号だけです")
    requeued = outbox.requeue_dead(session, issue.id, now)
    if requeued:
        reopen(session, {issue.id})
    return requeued


def relay_unreachable(session: Session, since: dt.datetime, error: str) -> None:
    """Issues being sent show that they wait for the relay, since the first failed attempt."""
    session.execute(
        update(Issue).where(Issue.status == "sending")
        .values(relay_waiting_since=func.coalesce(Issue.relay_waiting_since, since), relay_error=error[:500])
    )


def relay_reached(session: Session) -> None:
    """The relay answers again: no issue waits for it any more."""
    session.execute(
        update(Issue).where(Issue.relay_waiting_since.is_not(None))
        .values(relay_waiting_since=None, relay_error=None)
    )
