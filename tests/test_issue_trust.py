"""What an org submits cannot reach into personalization; a mailto unsubscribe names its
subscriber by a signed tag. Through the CLI (items add, issues send, worker, bounces process)
and the org's web form, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email
import email.policy
import json
import mailbox
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import bounce_samples as samples
import icalendar
import pytest
import time_machine
from conftest import SECRET
from sqlalchemy import create_engine, text
from web_support import Client

from mailmag.models import utcnow

NEUTRALIZED_START = "__MM-"  # how a marker in submitted text is shown

pytest_plugins = ["web_fixtures"]
PAYLOAD = "[x](https://evil.example/?e=__MM_EMAIL__&u=__MM_UNSUBSCRIBE_URL__&p=__MM_PREFERENCES_URL__)"
READERS = ("a@example.jp", "b@example.jp")


def _item_file(tmp_path: Path) -> Path:
    path = tmp_path / "news.md"
    path.write_text(
        '+++\norg = "cef"\nkind = "news"\ntitle = "お知らせ __MM_EMAIL__"\n+++\n'
        f"詳しくは {PAYLOAD} をご覧ください。\n\n<span>&#95;&#95;MM_NAME__</span> 様\n\n"
        "ご担当 __MM_NAME__ さま、`__MM_EMAIL__` 宛\n",
        encoding="utf-8",
    )
    return path


def _send(mailmag, tmp_path: Path) -> dict[str, email.message.EmailMessage]:  # type: ignore[no-untyped-def]
    for address in READERS:
        mailmag.ok("subscribers", "add", address)
    mailmag.ok("issues", "new")
    mailmag.ok("issues", "send", "1", "--yes")
    assert mailmag.ok("worker", "--once").stdout.strip() == "sent 2, failed 0, deferred 0"
    sent = {}
    for path in (tmp_path / "outbox").glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        sent[str(message["To"])] = message
    assert set(sent) == set(READERS)
    return sent


def _assert_nothing_personal_leaks(mailmag, sent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for address, message in sent.items():
        html = message.get_body(("html",)).get_content()
        text = message.get_body(("plain",)).get_content()
        for part in (html, text):
            evil = re.search(r"https://evil\.example/\S*", part).group(0)
            assert address not in evil and "/u/" not in evil and "/p/" not in evil
            assert "__MM_" not in part
        assert address not in str(message["Subject"])
    preview = tmp_path / "preview.html"
    mailmag.ok("issues", "preview", "1", "-o", str(preview))
    shown = preview.read_text(encoding="utf-8")
    html = sent[READERS[0]].get_body(("html",)).get_content()
    # The preview shows the link exactly as recipients get it, not filled with sample values.
    evil_shown = re.search(r'href="(https://evil\.example/[^"]*)"', shown).group(1)
    evil_sent = re.search(r'href="(https://evil\.example/[^"]*)"', html).group(1)
    assert evil_shown == evil_sent and "yamada@example.jp" not in evil_shown


def test_placeholders_in_an_item_file_stay_inert(mailmag, tmp_path):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("items", "add", str(_item_file(tmp_path)))
    mailmag.ok("items", "approve", "1")
    sent = _send(mailmag, tmp_path)
    _assert_nothing_personal_leaks(mailmag, sent, tmp_path)
    html = sent["a@example.jp"].get_body(("html",)).get_content()
    assert NEUTRALIZED_START + "NAME__ 様" in html  # entities that decode to a marker too
    # helper-70: bold, from the marker's "__", showed "MM_NAME" and not what was written
    text = sent["a@example.jp"].get_body(("plain",)).get_content()
    for part in (html, text):
        line = part[part.index("ご担当"):].split("宛")[0]
        shown = NEUTRALIZED_START
        assert re.sub("</?code>", "", line) == f"ご担当 {shown}NAME__ さま、{shown}EMAIL__ "
    assert "お知らせ " + NEUTRALIZED_START + "EMAIL__" in str(sent["a@example.jp"]["Subject"])


def test_placeholders_in_the_org_web_form_stay_inert(mailmag, live, tmp_path):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    link = mailmag.ok("orgs", "token", "cef").stdout.strip().split()[-1]
    path = "/submit/" + link.rsplit("/submit/", 1)[1]
    reply = Client(live.url).submit(path, {"kind": "news", "title": "お知らせ", "body": PAYLOAD},
                                    page=f"{path}?kind=news")
    assert reply.status == 200
    [item] = json.loads(mailmag.ok("items", "list", "--json").stdout)
    mailmag.ok("items", "approve", str(item["id"]))
    _assert_nothing_personal_leaks(mailmag, _send(mailmag, tmp_path), tmp_path)


def test_a_link_pasted_with_japanese_is_a_uri_in_the_mail_and_the_calendar(mailmag, live, tmp_path):
    """helper-70: an item's link went verbatim into the text edition and the .ics: a text mail
    program links https://例え.jp/イベント only up to its first Japanese character, and an .ics
    URL must be a URI. Both now carry its IDNA and %-escaped form, and so does the button."""
    iri = "https://例え.jp/イベント/申込?名前=山田"
    uri = ("https://xn--r8jz45g.jp/%E3%82%A4%E3%83%99%E3%83%B3%E3%83%88/%E7%94%B3%E8%BE%BC"
           "?%E5%90%8D%E5%89%8D=%E5%B1%B1%E7%94%B0")
    day = (utcnow() + dt.timedelta(days=30)).date().isoformat()
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("items", "submit", "--org", "cef", "--kind", "event", "--title", "説明会", "--date", day,
               "--venue", "広島", "--url", iri)
    mailmag.ok("items", "approve", "1")
    assert json.loads(mailmag.ok("items", "list", "--json").stdout)[0]["url"] == iri  # kept as pasted
    message = _send(mailmag, tmp_path)[READERS[0]]
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert uri in text.splitlines() and iri not in text
    assert f'href="{uri.replace("&", "&amp;")}"' in html
    calendar = icalendar.Calendar.from_ical(Client(live.url).get("/events.ics").body)
    [event] = calendar.walk("VEVENT")
    assert str(event["URL"]) == uri and uri in str(event["DESCRIPTION"])


# --- 4. the mailto unsubscribe ---------------------------------------------------------------


def _mailto(message) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(address, subject) of the mailto in a message's List-Unsubscribe."""
    match = re.search(r"<mailto:([^?>]+)\?subject=([^>]+)>", str(message["List-Unsubscribe"]))
    return match.group(1), match.group(2).replace("%20", " ")


def _mbox(tmp_path: Path, *messages: bytes) -> Path:
    path = tmp_path / f"box{len(list(tmp_path.glob('box*')))}.mbox"
    box = mailbox.mbox(path)
    for message in messages:
        box.add(message)
    box.close()
    return path


def _process(mailmag, tmp_path: Path, *messages: bytes) -> str:  # type: ignore[no-untyped-def]
    return mailmag.ok("bounces", "process", str(_mbox(tmp_path, *messages)), "-v").stdout


def _statuses(mailmag) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {s["email"]: s["status"] for s in json.loads(mailmag.ok("subscribers", "list", "--json").stdout)}


@pytest.fixture
def issued(mailmag, tmp_path):  # type: ignore[no-untyped-def]
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("items", "submit", "--org", "cef", "--kind", "news", "--title", "お知らせ", "--body", "本文")
    mailmag.ok("items", "approve", "1")
    return _send(mailmag, tmp_path)


def test_a_forged_from_with_another_recipients_address_changes_nothing(mailmag, issued, tmp_path):
    address, subject = _mailto(issued["a@example.jp"])
    assert address == "unsubscribe@example.jp"  # the tag is carried once, in the subject
    assert re.fullmatch(r"unsubscribe \d+-[a-z2-7]{13}", subject)
    tag = subject.split()[1]
    forged_new = tag[:-2] + ("aa" if not tag.endswith("aa") else "ba")
    forged_old = tag.split("-")[0] + "-0123456789abcdef"
    out = _process(mailmag, tmp_path,
                   samples.mailto_unsubscribe("b@example.jp", subject=f"unsubscribe {forged_new}",
                                              message_id="<f1@x>"),
                   samples.mailto_unsubscribe("b@example.jp", to=f"unsubscribe+{forged_old}@example.jp",
                                              message_id="<f2@x>"))
    # from b's own address, a tag that fits no row is a request without one: b is sent b's own
    # link, once a day (helper-87); a's row is never touched
    assert "unsubscribes 0" in out and "asked to confirm 1" in out
    assert "a@example.jp" not in out and out.count("b@example.jp (matched by sender)") == 2
    assert _statuses(mailmag) == {"a@example.jp": "active", "b@example.jp": "active"}


def test_a_tag_in_the_old_form_still_names_its_recipient(mailmag, issued, tmp_path):
    """Mail sent before carried '<id>-<16 hex>' in the address and subject: the same 64 bits."""
    _, subject = _mailto(issued["a@example.jp"])
    head, _, mac = subject.split()[1].partition("-")
    old = f"{head}-{base64.b32decode(mac.upper() + '===').hex()}"
    out = _process(mailmag, tmp_path, samples.mailto_unsubscribe(
        "b@example.jp", to=f"unsubscribe+{old}@example.jp", subject=f"unsubscribe {old}",
        message_id="<o1@x>"))
    assert "a@example.jp (matched by tag): unsubscribed" in out
    assert _statuses(mailmag) == {"a@example.jp": "unsubscribed", "b@example.jp": "active"}


def test_the_tag_names_the_recipient_whatever_the_from(mailmag, issued, tmp_path):
    address, subject = _mailto(issued["a@example.jp"])
    # a's request sent from an alias: matched by the tag, b (whose address it forges) untouched
    out = _process(mailmag, tmp_path, samples.mailto_unsubscribe(
        "b@example.jp", to=address, subject=subject, message_id="<t1@x>"))
    assert "unsubscribes 1" in out and "a@example.jp (matched by tag): unsubscribed" in out
    assert _statuses(mailmag) == {"a@example.jp": "unsubscribed", "b@example.jp": "active"}


def test_the_subject_tag_names_its_recipient_from_any_address(mailmag, issued, tmp_path):
    _, subject = _mailto(issued["b@example.jp"])
    out = _process(mailmag, tmp_path, samples.mailto_unsubscribe(
        "alias@example.com", to="unsubscribe@example.jp", subject=subject, message_id="<t2@x>"))
    assert "b@example.jp (matched by tag): unsubscribed" in out
    assert _statuses(mailmag) == {"a@example.jp": "active", "b@example.jp": "unsubscribed"}


def test_without_a_tag_the_exact_from_is_sent_its_own_link_and_nothing_changes(
        mailmag, issued, live, tmp_path):
    """helper-72: a request without a tag unsubscribed whoever its From named, and anyone can
    write a From. It is now answered, as Mailman answers a `leave` by mail, with that
    subscriber's own unsubscribe link, sent to their address: only its owner can follow it."""
    for sent in (tmp_path / "outbox").glob("*.eml"):
        sent.unlink()
    requests = (samples.mailto_unsubscribe("a+alias@example.jp", message_id="<n1@x>"),
                samples.mailto_unsubscribe("B@example.jp", message_id="<n2@x>"))
    out = _process(mailmag, tmp_path, *requests)
    assert "unmatched" in out and "a+alias@example.jp is not a subscriber" in out
    assert "unsubscribes 0, asked to confirm 1," in out
    assert "b@example.jp (matched by sender): their unsubscribe link was sent to the address" in out
    assert _statuses(mailmag) == {"a@example.jp": "active", "b@example.jp": "active"}
    [answer] = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in (tmp_path / "outbox").glob("*.eml")]
    assert str(answer["To"]) == "b@example.jp" and "配信停止のご確認" in str(answer["Subject"])
    path = re.search(r"https://news\.example\.jp(/u/\S+)", answer.get_body(("plain",)).get_content()).group(1)
    assert "配信を停止する" in Client(live.url).get(path).text
    assert Client(live.url).submit(path, {}).status == 200
    assert _statuses(mailmag) == {"a@example.jp": "active", "b@example.jp": "unsubscribed"}
    again = _process(mailmag, tmp_path, *requests)  # the same requests read again: no second answer
    assert "asked to confirm 0, duplicates 1" in again and len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_an_answer_the_relay_refuses_leaves_the_request_to_be_read_again(mailmag, issued, config_file,
                                                                         tmp_path):
    """The link could not be sent (the relay is down): the request is not marked read, so the
    next run answers it; nothing else of that run is lost."""
    text = config_file.read_text()
    config_file.write_text(text.replace('transport = "file"', 'transport = "smtp"\nhost = "127.0.0.1"\n'
                                                         'port = 9\nsecurity = "none"'))
    request = samples.mailto_unsubscribe("b@example.jp", message_id="<n3@x>")
    failed = mailmag.ok("bounces", "process", str(_mbox(tmp_path, request))).stdout
    assert "asked to confirm 0, duplicates 0, unmatched 0, unreadable 0, unanswered 1" in failed
    assert "unanswered #1: could not send the unsubscribe link to b@example.jp" in failed
    config_file.write_text(text)
    assert "asked to confirm 1, duplicates 0" in _process(mailmag, tmp_path, request)
    assert _statuses(mailmag) == {"a@example.jp": "active", "b@example.jp": "active"}


def _answers(tmp_path: Path) -> list[str]:
    """To whom the unsubscribe links went (the file transport's outbox)."""
    found = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
             for p in sorted((tmp_path / "outbox").glob("*.eml"))]
    return [str(m["To"]) for m in found if "配信停止のご確認" in str(m["Subject"])]


def test_hand_typed_requests_get_one_link_a_day(mailmag, issued, tmp_path):
    """helper-75: each run answered a new forged request, so one forged mail per run mailed the
    reader once per run, from the office's relay. A link goes once in 24 hours at most."""
    def ask(n: int) -> str:
        return _process(mailmag, tmp_path, samples.mailto_unsubscribe("b@example.jp", message_id=f"<d{n}@x>"))

    assert "asked to confirm 1" in ask(1) and _answers(tmp_path) == ["b@example.jp"]
    again = ask(2)
    assert "asked to confirm 0" in again and "to the address within the last 24 hours" in again
    with time_machine.travel(utcnow() + dt.timedelta(hours=25), tick=True):
        assert "asked to confirm 1" in ask(3)
    assert _answers(tmp_path) == ["b@example.jp", "b@example.jp"]
    assert _statuses(mailmag) == {"a@example.jp": "active", "b@example.jp": "active"}


def test_requests_sharing_a_message_id_send_one_link_and_no_traceback(mailmag, issued, tmp_path):
    """helper-76: two requests with one Message-ID, from b and from a reader who left: the second
    was recorded first, b's link went, then its record collided (a traceback), so nothing said
    b had had a link, and every round of two such requests mailed b again."""
    mailmag.ok("subscribers", "remove", "a@example.jp")
    for n in range(3):
        _process(mailmag, tmp_path, samples.mailto_unsubscribe("b@example.jp", message_id=f"<r{n}@evil>"),
                 samples.mailto_unsubscribe("a@example.jp", message_id=f"<r{n}@evil>"))
    assert _answers(tmp_path) == ["b@example.jp"]


def test_two_runs_at_once_send_one_link(mailmag, issued, config_file, smtp_server, tmp_path):
    """helper-76: the 24-hour check was made in one transaction and its record written after the
    relay took the mail, so two `bounces process` at once (two mailboxes, or the same one) both
    answered, and the second died on the first's record."""
    import subprocess

    from clocked import mailmag_command

    text = config_file.read_text()
    relay = f'transport = "smtp"\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"'
    config_file.write_text(text.replace('transport = "file"', relay))
    smtp_server.delay("data_end", 2.0, times=None)  # a slow relay: both runs are past their check
    boxes = [_mbox(tmp_path, samples.mailto_unsubscribe("b@example.jp", message_id=f"<c{n}@x>"))
             for n in (1, 2)]
    boxes.append(boxes[0])  # and the same mailbox twice
    env = {**os.environ, "MAILMAG_CONFIG": str(config_file), "MAILMAG_SECRET_KEY": SECRET}
    runs = [subprocess.Popen(mailmag_command("bounces", "process", str(box)), env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for box in boxes]
    results = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], results
    assert smtp_server.recipients() == ["b@example.jp"]


def test_a_link_the_relay_may_have_taken_counts_as_sent(mailmag, issued, config_file, smtp_server, tmp_path):
    """helper-77: the relay took the message and dropped the line before its answer to the dot;
    the request was read again on every run, and every run mailed the reader again."""
    relay = f'transport = "smtp"\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"'
    config_file.write_text(config_file.read_text().replace('transport = "file"', relay))
    smtp_server.drop("after_data", times=None)
    box = _mbox(tmp_path, samples.mailto_unsubscribe("b@example.jp", message_id="<m1@x>"))
    runs = [mailmag.ok("bounces", "process", str(box)).stdout for _ in range(3)]
    assert "asked to confirm 1" in runs[0] and all("duplicates 1" in run for run in runs[1:])
    assert smtp_server.recipients() == ["b@example.jp"]


def test_a_reader_who_left_later_in_the_same_mailbox_gets_no_link(mailmag, issued, tmp_path):
    """helper-78: b's hand-typed request, then b's tagged one: the second unsubscribed b, and the
    first still mailed b a link, its status read only when the mailbox was."""
    _, subject = _mailto(issued["b@example.jp"])
    out = _process(mailmag, tmp_path, samples.mailto_unsubscribe("b@example.jp", message_id="<s1@x>"),
                   samples.mailto_unsubscribe("b@example.jp", subject=subject, message_id="<s2@x>"))
    assert "unsubscribes 1, asked to confirm 0" in out and "the address is unsubscribed now" in out
    assert _answers(tmp_path) == [] and _statuses(mailmag)["b@example.jp"] == "unsubscribed"


@contextlib.contextmanager
def _row_held(config_file: Path, lock: str) -> Iterator[None]:
    """b's subscriber row locked `FOR <lock>` by another transaction (another run's, say)."""
    engine = create_engine(tomllib.loads(config_file.read_text())["database"]["url"])
    try:
        with engine.connect() as connection:
            connection.execute(text(f"SELECT id FROM subscribers WHERE email = 'b@example.jp' FOR {lock}"))
            yield
            connection.rollback()
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_run_that_meets_another_runs_locks_keeps_its_other_reports(mailmag, issued, config_file, tmp_path):
    """helper-77, -78: on PostgreSQL, a run whose record of a reader waited on another run's open
    transaction (a deadlock, or its lock timeout) died and lost every report of its mailbox; one
    whose send step waited so died before printing them. Each such request is now read again
    on the next run, and the rest of the run stands."""
    fast = {"MAILMAG_DATABASE_BUSY_TIMEOUT_SECONDS": "2"}
    request = samples.mailto_unsubscribe("b@example.jp", message_id="<l1@x>")
    box = _mbox(tmp_path, request, samples.mailto_unsubscribe("zz@example.com", message_id="<l2@x>"))
    with _row_held(config_file, "UPDATE"):  # the record's key check waits: its statement only fails
        held = mailmag.ok("bounces", "process", str(box), env=fast).stdout
    assert "unmatched 1" in held and "unanswered 1" in held and "another run was recording" in held
    with _row_held(config_file, "NO KEY UPDATE"):  # the record goes in; the send step cannot wait
        sending = mailmag.ok("bounces", "process", str(box), env=fast).stdout
    assert "asked to confirm 0" in sending and "another run is answering this reader now" in sending
    assert _answers(tmp_path) == []
    assert "asked to confirm 1" in mailmag.ok("bounces", "process", str(box)).stdout
    assert _answers(tmp_path) == ["b@example.jp"]


def test_a_nul_in_one_request_does_not_stop_the_others(mailmag, issued, tmp_path):
    """helper-75: PostgreSQL refuses a NUL; a request whose From or Message-ID held one failed the
    whole run with a traceback, and every run after it, since the mailbox is never changed."""
    hostile = samples.mailto_unsubscribe("a\x00b@example.jp", message_id="<n\x004@x>")
    spaced = samples.mailto_unsubscribe("b@example.jp", subject="配信停止 お願いします", message_id="<n5@x>")
    out = _process(mailmag, tmp_path, hostile, spaced)
    assert "ab@example.jp is not a subscriber" in out  # not a tag: a request without one
    assert "asked to confirm 1" in out and _answers(tmp_path) == ["b@example.jp"]
