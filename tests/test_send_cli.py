"""The secretariat's whole path from the shell: compose, test, send, deliver, status, cancel."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json

import pytest
import time_machine

from mailmag.models import utcnow


@pytest.fixture
def composed(mailmag):  # type: ignore[no-untyped-def]
    """Two subscribers and issue 1 holding one approved event."""
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    item = json.loads(mailmag.ok(
        "items", "submit", "--org", "cef", "--kind", "event", "--title", "産学官連携シンポジウム",
        "--date", "2027-09-10", "--venue", "島根県松江市", "--url", "https://example.jp/sympo", "--json",
    ).stdout)
    mailmag.ok("items", "approve", str(item["id"]))
    for address in ("a@example.jp", "b@example.jp"):
        mailmag.ok("subscribers", "add", address)
    new = json.loads(mailmag.ok("issues", "new", "--json").stdout)
    assert (new["id"], new["number"]) == (1, None)  # the 第N号 comes when sending starts
    return mailmag


def status(mailmag) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(mailmag.ok("issues", "status", "1", "--json").stdout)


def test_send_then_worker_delivers_each_subscriber_once(composed, tmp_path):
    result = composed.ok("issues", "send", "1", "--yes")
    assert "2 messages queued" in result.stdout
    before = status(composed)
    assert {k: before[k] for k in ("number", "status", "total", "sent", "failed", "pending")} == {
        "number": 1, "status": "sending", "total": 2, "sent": 0, "failed": 0, "pending": 2}
    assert composed.ok("worker", "--once").stdout.strip() == "sent 2, failed 0, deferred 0"
    after = status(composed)
    assert (after["status"], after["sent"], after["pending"]) == ("sent", 2, 0)
    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 2
    recipients = {email.message_from_bytes(f.read_bytes(), policy=email.policy.default)["To"] for f in files}
    assert recipients == {"a@example.jp", "b@example.jp"}
    # The item is published: it will not be offered to the next issue.
    item = json.loads(composed.ok("items", "list", "--json").stdout)[0]
    assert item["status"] == "published"


def test_send_twice_is_refused_and_queues_nothing_more(composed):
    composed.ok("issues", "send", "1", "--yes")
    again = composed("issues", "send", "1", "--yes")
    assert again.exit_code == 1
    assert again.stderr.strip() == ("Error: issue 1 (第1号) is sending; only a draft or scheduled issue can "
                                    "be sent")
    assert status(composed)["total"] == 2


def test_send_without_yes_from_a_script_asks_for_it_and_queues_nothing(composed):
    result = composed("issues", "send", "1")
    assert result.exit_code == 2
    assert "add --yes" in result.stderr
    assert status(composed)["total"] == 0


def test_test_send_reaches_only_the_test_addresses(composed, smtp_server, config_file):
    text = config_file.read_text().replace('transport = "file"', f'transport = "smtp"\nhost = "127.0.0.1"\n'
                                           f'port = {smtp_server.port}\nsecurity = "none"')
    config_file.write_text(text)
    result = composed.ok("issues", "test", "1", "--to", "editor@example.jp")
    assert result.stdout.startswith("editor@example.jp: 250")
    assert smtp_server.recipients() == ["editor@example.jp"]
    message = email.message_from_bytes(smtp_server.messages[0].data, policy=email.policy.default)
    assert "産学官連携シンポジウム" in str(message["Subject"])
    assert status(composed)["total"] == 0 and status(composed)["status"] == "draft"


def test_test_send_takes_an_address_as_a_mail_program_copies_it(composed, smtp_server, config_file):
    """helper-70: `--to '山田 太郎 <yamada@example.jp>'` was refused, and the error showed the
    address without its closing bracket. The bracketed address is the recipient."""
    text = config_file.read_text().replace('transport = "file"', f'transport = "smtp"\nhost = "127.0.0.1"\n'
                                           f'port = {smtp_server.port}\nsecurity = "none"')
    config_file.write_text(text)
    result = composed.ok("issues", "test", "1", "--to", "山田 太郎 <yamada@example.jp>")
    assert result.stdout.startswith("yamada@example.jp: 250")
    assert smtp_server.recipients() == ["yamada@example.jp"]
    refused = composed("issues", "test", "1", "--to", "Yamada <yamada@example>")
    assert refused.exit_code == 1 and "'yamada@example'" in refused.stderr
    assert smtp_server.recipients() == ["yamada@example.jp"]


def test_a_relays_reply_cannot_write_to_the_operators_terminal(composed, smtp_server, config_file):
    """`issues status` prints each failed reader's last reply: an escape sequence in one would have
    recoloured or rewritten the operator's terminal. Control characters are kept as '?'."""
    text = config_file.read_text().replace('transport = "file"', f'transport = "smtp"\nhost = "127.0.0.1"\n'
                                           f'port = {smtp_server.port}\nsecurity = "none"')
    config_file.write_text(text)
    smtp_server.fail_rcpt("a@example.jp", 550, "5.1.1 \x1b[2J\x1b[31mno such user\x07")
    composed.ok("issues", "send", "1", "--yes")
    composed.ok("worker", "--once")
    shown = composed.ok("issues", "status", "1").stdout
    # failed, or held as not believed yet (no message was accepted before it): listed either way
    assert "  a@example.jp" in shown and "550 5.1.1 ?[2J?[31mno such user?" in shown
    assert not any(ch in shown for ch in "\x1b\x07")


def test_a_relays_reply_of_several_lines_shows_as_one(composed, smtp_server, config_file):
    """helper-72 F3: smtplib joins a multi-line reply's lines with '\\n', and `issues status` printed
    them as they came: a relay could add lines that read as mailmag's own counts. A bidi override
    or a line separator in the reply reordered or broke what the operator read."""
    text = config_file.read_text().replace('transport = "file"', f'transport = "smtp"\nhost = "127.0.0.1"\n'
                                           f'port = {smtp_server.port}\nsecurity = "none"')
    config_file.write_text(text)
    smtp_server.fail_rcpt("a@example.jp", 550, "5.1.1 no such user\ntotal 2, sent 2, failed 0, pending 0\n"
                          "5.1.1 \u202egnp.live\u2028end")
    composed.ok("issues", "send", "1", "--yes")
    composed.ok("worker", "--once")
    shown = composed.ok("issues", "status", "1").stdout
    # failed, or held as not believed yet (no message was accepted before it): listed either way
    assert "550 5.1.1 no such user / total 2, sent 2, failed 0, pending 0 / 5.1.1 ?gnp.live / end" in shown
    assert [line[:15] for line in shown.splitlines() if line.startswith("total")] == ["total 2, sent 1"]
    assert not any(ch in shown for ch in "\u202e\u2028")


def test_a_waiting_issue_whose_number_another_took_says_so(composed):
    """helper-70: issue 1 was rendered as 第1号; issue 2 started sending first and took 第1号, and
    issue 1's preview and test mail still said 第1号 without a word."""
    item = json.loads(composed.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "お知らせ",
                                  "--body", "本文", "--json").stdout)
    composed.ok("items", "approve", str(item["id"]))
    composed.ok("issues", "new", "--item", str(item["id"]))
    before = composed.ok("issues", "preview", "1")
    assert "第1号" in before.stdout and "another issue has taken" not in before.stderr
    composed.ok("issues", "send", "2", "--yes")
    after = composed.ok("issues", "preview", "1")
    assert "第1号" in after.stdout  # the rendering as it stands
    assert ("warning: issue 1 shows 第1号, which another issue has taken since: sent now, it would be "
            "第2号 (it is rendered again with its number when sending starts)") in after.stderr
    composed.ok("issues", "send", "1", "--yes")
    composed.ok("worker", "--once")
    assert status(composed)["number"] == 2


def test_cancel_stops_the_queue(composed):
    composed.ok("issues", "send", "1", "--yes")
    assert composed.ok("issues", "cancel", "1").stdout == (
        "issue 1 cancelled before any message went: 2 messages not sent, no number used; "
        "1 item approved again for the next issue\n")
    assert composed.ok("worker", "--once").stdout.strip() == "sent 0, failed 0, deferred 0"
    after = status(composed)
    assert (after["status"], after["number"], after["cancelled"], after["sent"]) == ("cancelled", None, 2, 0)
    assert [i["status"] for i in json.loads(composed.ok("items", "list", "--json").stdout)] == ["approved"]


def test_unknown_issue_is_one_line_error(mailmag):
    result = mailmag("issues", "status", "9")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1


def test_send_at_schedules_and_cancel_unschedules(composed):
    year = utcnow().year + 1  # always ahead, whatever the date the suite runs on
    result = composed.ok("issues", "send", "1", "--at", f"{year}-12-02 09:00")
    assert result.stdout.startswith(f"issue 1 scheduled for {year}-12-02 09:00 JST")
    scheduled = status(composed)
    assert (scheduled["status"], scheduled["total"]) == ("scheduled", 0)
    assert scheduled["scheduled_at"].startswith(f"{year}-12-02T00:00:00")  # stored in UTC
    listed = json.loads(composed.ok("issues", "list", "--json").stdout)
    assert listed[0]["status"] == "scheduled"
    assert "unscheduled" in composed.ok("issues", "cancel", "1").stdout
    after = status(composed)
    assert (after["status"], after["scheduled_at"], after["total"]) == ("draft", None, 0)


def test_editing_an_item_of_a_scheduled_issue_says_what_its_send_now_needs(composed):
    """helper-101: the edit said only "status: submitted"; at its time the send refused (the item
    was no longer approved) and the issue went back to being a draft."""
    year = utcnow().year + 1
    composed.ok("issues", "send", "1", "--at", f"{year}-12-02 09:00")
    edited = composed.ok("items", "edit", "1", "--title", "産学官連携シンポジウム（会場変更）")
    assert edited.stdout == "edited item 1; status: submitted\n"
    assert edited.stderr == (f"warning: item 1 is in issue 1, scheduled for {year}-12-02 09:00 JST: approve "
                             "it again and render the issue again before then (`mailmag items approve 1`, "
                             "then `mailmag issues render 1`), or at that time the send is refused and the "
                             "issue becomes a draft again\n")
    composed.ok("items", "approve", "1")
    composed.ok("issues", "render", "1")
    assert status(composed)["status"] == "scheduled"
    shown = composed.ok("issues", "preview", "1")
    assert "会場変更" in shown.stdout and "warning" not in shown.stderr
    assert composed.ok("items", "edit", "1", "--venue", "松江市").stderr.startswith("warning: item 1 is in")
    composed.ok("issues", "cancel", "1")  # a draft again: no warning
    assert composed.ok("items", "edit", "1", "--venue", "出雲市").stderr == ""


def test_a_scheduled_issue_past_its_time_says_run_is_not_running(composed):
    """helper-87: with `mailmag run` down, `issues status` went on saying "scheduled for" a time in
    the past, and nothing told the staff why nothing went, nor that after grace_seconds starting
    `run` would no longer send it."""
    from zoneinfo import ZoneInfo

    due = (utcnow() + dt.timedelta(hours=1)).astimezone(ZoneInfo("Asia/Tokyo"))
    due = due.replace(second=0, microsecond=0)
    composed.ok("issues", "send", "1", "--at", due.strftime("%Y-%m-%d %H:%M"))
    assert "overdue" not in composed.ok("issues", "status", "1").stdout  # not yet due
    with time_machine.travel(due + dt.timedelta(seconds=59), tick=True):  # within two polls (30 s)
        assert "overdue" not in composed.ok("issues", "status", "1").stdout
    with time_machine.travel(due + dt.timedelta(minutes=5), tick=True):
        shown = composed.ok("issues", "status", "1").stdout
        listed = composed.ok("issues", "list").stdout
        doctor = composed("doctor").output
        document = status(composed)
    last_chance = (due + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M JST")  # grace_seconds = 3600
    assert (f"overdue: due at {due:%Y-%m-%d %H:%M} JST and not done: is `mailmag run` running on this "
            f"database? Started by {last_chance} ([schedule] grace_seconds after) it still does it\n"
            ) in shown
    assert "scheduled, OVERDUE (is `mailmag run` running?)" in listed
    assert "schedule" in doctor and f"issue 1 is due at {due:%Y-%m-%d %H:%M} JST and not done" in doctor
    assert document["status"] == "scheduled" and document["overdue"]["due_at"].startswith(
        due.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M"))
    with time_machine.travel(due + dt.timedelta(hours=2), tick=True):
        late = composed.ok("issues", "status", "1").stdout
        assert "records this as missed instead of doing it; `mailmag issues send 1` sends it now" in late
        assert "2 messages queued" in composed.ok("issues", "send", "1", "--yes").stdout
        assert "overdue" not in composed.ok("issues", "status", "1").stdout


def test_an_automatic_issue_past_its_moment_says_run_is_not_running(composed):
    composed.ok("schedule", "add", "--cron", "0 9 * * *")
    assert "overdue" not in composed.ok("schedule", "list").output
    with time_machine.travel(utcnow() + dt.timedelta(days=1, minutes=5), tick=True):
        listed = composed.ok("schedule", "list")
        (document,) = json.loads(composed.ok("schedule", "list", "--json").stdout)
    assert "\noverdue: automatic issue 1: due at " in listed.stderr
    assert " 09:00 JST and not done" in listed.stderr
    assert document["overdue_since"].endswith("T00:00:00Z")


def test_send_at_in_the_past_is_refused_and_nothing_changes(composed):
    result = composed("issues", "send", "1", "--at", "2020-01-01 09:00")
    assert result.exit_code == 1
    assert "is in the past" in result.stderr
    # year 1 in Tokyo lies before any time UTC can hold (an OverflowError's traceback before)
    first = composed("issues", "send", "1", "--at", "0001-01-01 00:00", "--yes")
    assert first.exit_code == 1
    assert first.stderr.startswith("Error: 0001-01-01 00:00 is in the past (it is now ")
    assert len(first.stderr.splitlines()) == 1
    last = composed("issues", "send", "1", "--at", "9999-12-31 23:59-12:00", "--yes")  # past UTC's end
    assert last.exit_code == 1
    assert last.stderr == "Error: 9999-12-31 23:59-12:00 is too far ahead: give a time before 9999\n"
    assert status(composed)["status"] == "draft"


def test_send_with_a_malformed_sender_is_refused_before_anything_is_queued(composed, config_file):
    config_file.write_text(config_file.read_text().replace('from = "magazine@example.jp"', 'from = "news"'))
    result = composed("issues", "send", "1", "--yes")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: [sender] from 'news' is not an address like news@example.jp")
    assert status(composed)["total"] == 0 and status(composed)["status"] == "draft"


def test_worker_once_with_the_hourly_limit_reached_says_when_to_run_again(composed):
    """`worker --once` sends what the hour allows, leaves the rest queued and says why, at once."""
    composed.ok("issues", "send", "1", "--yes")
    result = composed.ok("worker", "--once", env={"MAILMAG_SMTP_RATE_PER_HOUR": "1",
                                                  "MAILMAG_SMTP_RATE_PER_SECOND": "0"})
    assert result.stdout.strip() == "sent 1, failed 0, deferred 0"
    assert "rate_per_hour = 1 lets the next message go in about 60 min" in result.stderr
    assert "run the worker again then" in result.stderr
    after = status(composed)
    assert (after["status"], after["sent"], after["pending"]) == ("sending", 1, 1)


def test_issues_status_lists_refused_addresses_it_does_not_believe_yet(composed, smtp_server, config_file):
    """The last reader's address refused after every accepted message waits, not bounced
    (a relay whose lookup broke refuses everyone so). `issues status` said only "pending 1":
    not whom, nor the relay's words, nor when it is asked again."""
    text = config_file.read_text().replace('transport = "file"', f'transport = "smtp"\nhost = "127.0.0.1"\n'
                                           f'port = {smtp_server.port}\nsecurity = "none"\n'
                                           'max_connections = 1\nrate_per_second = 0')
    config_file.write_text(text)
    smtp_server.fail_rcpt("b@example.jp", 550, "5.1.1 no such user")
    composed.ok("issues", "send", "1", "--yes")
    assert composed.ok("worker", "--once").stdout.strip() == "sent 1, failed 0, deferred 1"
    after = status(composed)
    assert (after["sent"], after["failed"], after["pending"], after["held_refusals"]) == (1, 0, 1, 1)
    shown = composed.ok("issues", "status", "1").stdout
    assert "refused, not believed yet: 1 address" in shown
    assert "  b@example.jp: 550 5.1.1 no such user; next try 20" in shown
    assert "not believed yet: no message" not in shown  # the marker is the row's, not the reader's
    listed = composed.ok("subscribers", "list", "--status", "active").stdout
    assert "b@example.jp" in listed
    # once its time has come and no worker has run, "next try" is not a time in the past
    with time_machine.travel(utcnow() + dt.timedelta(days=1), tick=True):
        assert "  b@example.jp: 550 5.1.1 no such user; next try when a worker next runs" in \
            composed.ok("issues", "status", "1").stdout


def test_issues_status_says_which_failures_kept_their_readers(composed, smtp_server, config_file):
    """One address bounced for good, one reader's server answered 451 until [retry]
    lifetime_seconds: both fail, and only the first reader is off the list. `issues status` said
    "failed 2", which reads as two bad addresses."""
    text = config_file.read_text().replace('transport = "file"', f'transport = "smtp"\nhost = "127.0.0.1"\n'
                                           f'port = {smtp_server.port}\nsecurity = "none"\n'
                                           'max_connections = 1\nrate_per_second = 0')
    config_file.write_text(text)
    composed.ok("subscribers", "add", "c@example.jp")
    smtp_server.fail_rcpt("a@example.jp", 550, "5.1.1 no such user")  # vouched for by b's and c's
    smtp_server.fail_rcpt("c@example.jp", 451, "4.3.0 try later")
    composed.ok("issues", "send", "1", "--yes")
    composed.ok("worker", "--once")
    with time_machine.travel(utcnow() + dt.timedelta(days=6), tick=True):
        composed.ok("worker", "--once")
        after = status(composed)
        shown = composed.ok("issues", "status", "1").stdout
    assert (after["sent"], after["failed"], after["failed_reader_kept"], after["pending"]) == (1, 2, 1, 0)
    assert "failed, reader kept: 1 of the failed" in shown
    # helper-70: which readers did not get it, and why (the console's issue page said; the CLI did not)
    assert "\n  a@example.jp (failed): 550 5.1.1 no such user" in shown
    assert "\n  c@example.jp (failed): gave up: 451 4.3.0 try later" in shown
    assert [(f["email"], f["status"]) for f in after["failures"]] == [("a@example.jp", "failed"),
                                                                      ("c@example.jp", "failed")]
    assert "c@example.jp" in composed.ok("subscribers", "list", "--status", "active").stdout
    assert "a@example.jp" in composed.ok("subscribers", "list", "--status", "bounced").stdout


def test_a_sender_address_no_message_could_go_from_is_refused_at_compose(composed, config_file):
    """helper-92: with from = news@council.test (a reserved domain) an issue was composed, and
    every message then failed, "unsubscribe_mailto 'unsubscribe@council.test' is not a plain ASCII
    e-mail address"."""
    config_file.write_text(config_file.read_text().replace("magazine@example.jp", "news@council.test"))
    item = ("items", "submit", "--org", "cef", "--kind", "news", "--title", "お知らせ", "--body", "本文。")
    composed.ok(*item)
    refused = composed("issues", "new")
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("Error: [sender] from: invalid e-mail address 'news@council.test': "
                                     "The part after the @-sign is a special-use or reserved name")
    assert len(json.loads(composed.ok("issues", "list", "--json").stdout)) == 1  # issue 1 alone
    assert "problem  sender: [sender] from: invalid e-mail address" in composed("doctor").output
