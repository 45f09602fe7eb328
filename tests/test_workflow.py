"""The secretariat's workflow holds together: topics, numbering, cancel, delete and the send gates.

Each test drives the real command line (in-process, on SQLite and PostgreSQL) as the
secretariat would, and checks what subscribers would get: the .eml files of the file
transport, the archive over HTTP, and the rows left in the database.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import re
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from conftest import SECRET, Mailmag
from sqlalchemy import func, select, text

from mailmag.cli import cli
from mailmag.config import Config, WebConfig, load_config
from mailmag.content import issues, items, orgs
from mailmag.errors import ConfigError, StateError
from mailmag.models import Issue, utcnow
from mailmag.services import Services

EVENT = ("items", "submit", "--org", "cef", "--kind", "event", "--venue", "島根県松江市")


def _future_date(days: int) -> str:
    """A date `days` from now, as ISO (tests never hard-code a date that will one day be past)."""
    return (utcnow() + dt.timedelta(days=days)).date().isoformat()


def _event(mailmag: Mailmag, title: str) -> int:
    item = json.loads(mailmag.ok(*EVENT, "--title", title, "--date", _future_date(60), "--json").stdout)
    mailmag.ok("items", "approve", str(item["id"]))
    return item["id"]


@pytest.fixture
def council(mailmag: Mailmag) -> Mailmag:
    """An org and three subscribers: one for events, one for news, one for everything."""
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("subscribers", "add", "events@example.jp", "--topic", "events")
    mailmag.ok("subscribers", "add", "news@example.jp", "--topic", "news")
    mailmag.ok("subscribers", "add", "all@example.jp")
    return mailmag


def _recipients(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found.append(message["To"].addresses[0].addr_spec)
    return sorted(found)


def _status(mailmag: Mailmag, issue_id: int) -> dict:
    return json.loads(mailmag.ok("issues", "status", str(issue_id), "--json").stdout)


# --- 1. topics --------------------------------------------------------------------------------


def test_an_events_issue_reaches_the_events_subscriber_and_the_one_without_topics(council, tmp_path):
    _event(council, "産学官連携シンポジウム")
    new = council.ok("issues", "new", "--topic", "events", "--json")
    assert json.loads(new.stdout)["audience"] == 2
    assert _status(council, 1)["audience"] == 2 and _status(council, 1)["topic"] == "events"
    preview = council.ok("issues", "preview", "1")
    assert "issue 1 goes to topic events (イベント案内): 2 subscribers now" in preview.stderr
    council.ok("issues", "send", "1", "--yes")
    council.ok("worker", "--once")
    assert _recipients(tmp_path / "outbox") == ["all@example.jp", "events@example.jp"]
    assert _status(council, 1)["total"] == 2


def test_unknown_topic_codes_are_refused_with_the_known_ones_listed(council, tmp_path):
    added = council("subscribers", "add", "kato@example.jp", "--topic", "evnets")
    assert (added.exit_code, added.stderr) == (
        1,
        "Error: unknown topic 'evnets': the topics are events, news\n",
    )
    _event(council, "シンポジウム")
    new = council("issues", "new", "--topic", "event")
    assert new.stderr == "Error: unknown topic 'event': the topics are events, news\n"
    schedule = council("schedule", "add", "--cron", "0 9 1 * *", "--topic", "meeting")
    assert schedule.stderr == "Error: unknown topic 'meeting': the topics are events, news\n"
    csv = tmp_path / "list.csv"
    csv.write_text(
        "email,topics\nok@example.jp,events;news\nbad@example.jp,event;meeting\n", encoding="utf-8"
    )
    imported = council.ok("subscribers", "import", str(csv))
    assert imported.stdout.splitlines() == [
        "added 1, updated 0, unchanged 0, invalid 1, suppressed 0",
        "line 3: unknown topic 'event': the topics are events, news",
    ]
    listed = {s["email"]: s["topics"] for s in json.loads(council.ok("subscribers", "list", "--json").stdout)}
    assert "kato@example.jp" not in listed and "bad@example.jp" not in listed
    assert listed["ok@example.jp"] == ["events", "news"]
    assert json.loads(council.ok("issues", "list", "--json").stdout) == []


def test_the_sample_lists_use_the_configured_topic_codes(mailmag):
    samples = Path(__file__).resolve().parents[1] / "subscribers"
    for name in ("sample-utf8.csv", "sample-cp932.csv", "sample-en.csv"):
        result = mailmag.ok("subscribers", "import", str(samples / name))
        assert "unknown topic" not in result.stdout, name
    codes = {
        code for s in json.loads(mailmag.ok("subscribers", "list", "--json").stdout) for code in s["topics"]
    }
    assert codes == {"events", "news"}


@pytest.mark.parametrize(
    ("topics", "message"),
    [
        (["events|イベント案内", "events|催し"], "[web] topics names the code 'events' twice"),
        (["イベント|x"], "[web] topics entry 'イベント|x': the code must be letters, digits, - or _"),
    ],
)
def test_a_bad_topic_setting_fails_when_the_configuration_loads(tmp_path, topics, message):
    path = tmp_path / "mailmag.toml"
    path.write_text(f"[web]\ntopics = {json.dumps(topics, ensure_ascii=False)}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={})
    assert str(raised.value).startswith(f"{path}:2: {message}")  # the line of `topics`


def test_doctor_names_topic_codes_stored_before_they_were_checked(council, config_file, db_url):
    services = Services(load_config(config_file, env={}))
    with services.session() as session:  # as an import from before this version left them
        session.execute(
            text(
                "UPDATE subscribers SET topics = '[\"event\", \"meeting\"]' WHERE email = 'events@example.jp'"
            )
        )
    services.close()
    result = council("doctor", "--json")
    findings = {f["check"]: f for f in json.loads(result.stdout)["findings"]}
    assert findings["topics"]["status"] == "problem"
    assert findings["topics"]["message"].startswith(
        "the database holds topic codes [web] topics does not offer: 'event' (1 subscriber), "
        "'meeting' (1 subscriber); add them to [web] topics, or change them to events, news"
    )


def test_the_web_forms_refuse_a_topic_that_is_not_offered(config):
    offered = config.replace(web=WebConfig(topics=["events|イベント案内|Events"])).topics
    from mailmag.audience import consent

    with pytest.raises(Exception, match="unknown topic 'news': the topics are events"):
        consent.choose_topics(["news"], offered)


# --- 2. numbers without gaps; delete; cancel gives items back ----------------------------------


def test_deleted_and_cancelled_drafts_use_no_number_and_the_archive_has_no_gap(council):
    first = _event(council, "第一のお知らせ")
    council.ok("issues", "new")
    deleted = council.ok("issues", "delete", "1")
    assert deleted.stdout == "deleted draft issue 1; its 1 item wait for the next issue\n"
    assert json.loads(council.ok("items", "list", "--json").stdout)[0]["status"] == "approved"
    assert (
        council("issues", "preview", "1").stderr
        == "Error: no issue with the id 1: see which there are (`mailmag issues list`)\n"
    )
    # The same item again, in a draft with an id of its own: issue 1 stays the deleted one.
    a = json.loads(council.ok("issues", "new", "--json").stdout)["id"]
    assert a == 2
    draft = council("issues", "cancel", str(a))
    assert draft.stderr == (
        f"Error: issue {a} is a draft: nothing is being sent: to drop it, delete it "
        f"(`mailmag issues delete {a}`)\n"
    )
    _event(council, "第二のお知らせ")
    b = json.loads(council.ok("issues", "new", "--item", str(first + 1), "--json").stdout)["id"]
    sent = council.ok("issues", "send", str(b), "--yes")
    assert sent.stdout.startswith(f"issue {b} is 第1号: 3 messages queued;")  # sent first, numbered first
    council.ok("issues", "send", str(a), "--yes")
    listed = json.loads(council.ok("issues", "list", "--json").stdout)
    assert [(i["id"], i["number"]) for i in listed] == [(b, 1), (a, 2)]
    table = council.ok("issues", "list").stdout.splitlines()
    assert [line.split("\t")[:3] for line in table] == [
        [str(b), "第1号", "sending"],
        [str(a), "第2号", "sending"],
    ]


def test_an_item_waits_in_one_issue_at_a_time_and_a_published_one_goes_again_only_when_named(council):
    item = _event(council, "一度だけのお知らせ")
    council.ok("issues", "new")
    twice = council("issues", "new", "--item", str(item))
    assert twice.exit_code == 1
    assert twice.stderr == (f"Error: item {item} is already in issue 1 (draft): an item waits in one "
                            "issue at a time; no issue was made\n")
    council.ok("issues", "send", "1", "--yes")
    again = council.ok("issues", "new", "--item", str(item), "--json")  # announced once more, on purpose
    assert f"item {item} is also in issue 1 (第1号) (sending)" in again.stderr
    assert [i["id"] for i in json.loads(council.ok("issues", "list", "--json").stdout)] == [2, 1]


def test_two_composes_at_once_cannot_both_take_an_item(services, config):
    """Two editors press 作る at the same moment: the second waits for the first, then finds the
    item taken (each issue would have sent it)."""
    with services.session() as session:
        org = orgs.add(session, "cef", "中国経済連合会")
        item_id = items.submit(session, org, "news", {"title": "お知らせ", "body": "本文"}).id
        items.approve(session, [item_id])
    outcome: list[object] = []
    first = services.session()
    with first as session:
        issues.compose(session, config, item_ids=[item_id])

        def second() -> None:
            try:
                with services.session() as other:
                    outcome.append(issues.compose(other, config, item_ids=[item_id]).issue.id)
            except StateError as exc:
                outcome.append(exc.message)

        racer = threading.Thread(target=second)
        racer.start()
        time.sleep(0.3)  # the second compose is waiting for the first's lock (or starts after it)
    racer.join(10)
    assert outcome == [f"item {item_id} is already in issue 1 (draft): an item waits in one issue at a time; "
                       "no issue was made"]
    with services.session() as session:
        assert session.scalar(select(func.count()).select_from(Issue)) == 1


def test_cancel_before_anything_went_gives_back_the_number_and_the_items(council, tmp_path):
    item = _event(council, "取り消すお知らせ")
    council.ok("issues", "new")
    council.ok("issues", "send", "1", "--yes")
    cancelled = council.ok("issues", "cancel", "1")
    assert cancelled.stdout == (
        "issue 1 cancelled before any message went: 3 messages not sent, no number "
        "used; 1 item approved again for the next issue\n"
    )
    assert [(i["id"], i["status"]) for i in json.loads(council.ok("items", "list", "--json").stdout)] == [
        (item, "approved")
    ]
    council.ok("issues", "new")
    assert council.ok("issues", "send", "2", "--yes").stdout.startswith("issue 2 is 第1号:")
    council.ok("worker", "--once")
    assert len(_recipients(tmp_path / "outbox")) == 3


def test_cancel_of_a_partly_sent_issue_keeps_what_went_and_says_what_did_not(council, services_for):
    _event(council, "一部だけ届くお知らせ")
    council.ok("issues", "new")
    council.ok("issues", "send", "1", "--yes")
    with services_for(council).session() as session:  # one message went before the cancel
        session.execute(
            text("UPDATE deliveries SET status = 'sent' WHERE id = (SELECT MIN(id) FROM deliveries)")
        )
    cancelled = council.ok("issues", "cancel", "1")
    assert cancelled.stdout == (
        "issue 1 (第1号) cancelled: 1 message went, 2 queued messages will not be "
        "sent; 第1号 stays in the archive\n"
    )
    status = _status(council, 1)
    assert (status["status"], status["number"], status["sent"], status["cancelled"]) == ("cancelled", 1, 1, 2)
    assert json.loads(council.ok("items", "list", "--json").stdout)[0]["status"] == "published"


def test_cancel_of_a_scheduled_issue_makes_it_a_draft_again(council):
    _event(council, "予約したお知らせ")
    council.ok("issues", "new")
    council.ok("issues", "send", "1", "--at", f"{_future_date(30)} 09:00")
    listed = council.ok("issues", "list").stdout.split("\t")
    assert listed[1:4] == ["-", "scheduled", f"{_future_date(30)} 09:00 JST"]  # the send time, no number yet
    assert council.ok("issues", "cancel", "1").stdout == "issue 1 unscheduled; it is a draft again\n"
    # helper-90: a draft's time was read as one it was scheduled for
    assert council.ok("issues", "list").stdout.split("\t")[3].startswith("rendered ")
    status = _status(council, 1)
    assert (status["status"], status["number"], status["scheduled_at"]) == ("draft", None, None)


def test_two_processes_starting_sends_at_once_both_get_a_number(pg_url, tmp_path, services_for):
    """PostgreSQL: the second send waits on the first's number, then takes the next one."""
    path = tmp_path / "pg.toml"
    from conftest import SENDER_TOML

    path.write_text(
        f'[database]\nurl = "{pg_url}"\n\n{SENDER_TOML}\n[smtp]\ntransport = "file"\n'
        f'file_dir = "{tmp_path / "outbox"}"\n',
        encoding="utf-8",
    )
    cli_ = Mailmag(path)
    cli_.ok("init")
    cli_.ok("orgs", "add", "cef", "中国経済連合会")
    cli_.ok("subscribers", "add", "a@example.jp")
    for title in ("一号目", "二号目"):
        _event(cli_, title)
        cli_.ok(
            "issues", "new", "--item", str(json.loads(cli_.ok("items", "list", "--json").stdout)[-1]["id"])
        )
    services = services_for(cli_)
    first, second = services.sessions(), services.sessions()
    issues.start_sending(first, services.config, issues.get(first, 1))  # holds number 1, not committed
    done: list[int | None] = []

    def start_second() -> None:
        issues.start_sending(second, services.config, issues.get(second, 2))
        done.append(issues.get(second, 2).number)
        second.commit()

    holder = first.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
    thread = threading.Thread(target=start_second)
    thread.start()
    # Wait until the second one is blocked by the first (not by another test's lock: the
    # database is shared with other test processes).
    with services.engine.connect() as watcher:
        while not watcher.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
            {"pid": holder},
        ).scalar():
            watcher.rollback()
    first.commit()
    thread.join()
    first.close()
    second.close()
    assert done == [2]
    numbers = [(i["id"], i["number"]) for i in json.loads(cli_.ok("issues", "list", "--json").stdout)]
    assert numbers == [(2, 2), (1, 1)]


@pytest.fixture
def services_for():  # type: ignore[no-untyped-def]
    made: list[Services] = []

    def make(runner: Mailmag) -> Services:
        services = Services(load_config(runner.config_file, env={"MAILMAG_SECRET_KEY": SECRET}))
        made.append(services)
        return services

    yield make
    for services in made:
        services.close()


# --- 3. gates ---------------------------------------------------------------------------------


def test_every_item_edited_after_approval_is_named_and_approved_in_one_command(council):
    """Two items edited after the issue was made: the refusal names both (naming the first only
    sent the secretariat round the loop once per item), and its command approves both."""
    first, second = _event(council, "講演会のお知らせ"), _event(council, "展示会のお知らせ")
    council.ok("issues", "new")
    for item in (first, second):
        council.ok("items", "edit", str(item), "--venue", "鳥取県米子市")
    refused = council("issues", "send", "1", "--yes")
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"Error: items {first} 「講演会のお知らせ」, {second} 「展示会のお知らせ」 are submitted, "
        "not approved (edited since it was approved?); nothing was sent: review the item "
        f"(`mailmag items show {first}`), approve them (`mailmag items approve {first} {second}`), then "
        "render the issue again (`mailmag issues render 1`)\n"
    )
    assert _status(council, 1)["total"] == 0
    council.ok("items", "approve", str(first), str(second))  # the command as the error gave it
    council.ok("issues", "render", "1")
    council.ok("issues", "send", "1", "--yes")
    assert _status(council, 1)["total"] == 3  # the three subscribers


def test_an_item_edited_after_approval_blocks_the_send_naming_it(council):
    item = _event(council, "直前に直したお知らせ")
    council.ok("issues", "new")
    council.ok("items", "edit", str(item), "--venue", "鳥取県米子市")
    refused = council("issues", "send", "1", "--yes")
    assert refused.exit_code == 1
    assert refused.stderr.startswith(
        f"Error: item {item} 「直前に直したお知らせ」 is submitted, not approved"
    )
    council.ok("items", "approve", str(item))
    stale = council("issues", "send", "1", "--yes")  # approved again, but the issue shows the old text
    assert stale.stderr == (
        f"Error: item {item} 「直前に直したお知らせ」 changed after issue 1 was rendered; nothing was sent: "
        "render the issue again (`mailmag issues render 1`), then look at the preview again "
        "(`mailmag issues preview 1`)\n"
    )
    assert _status(council, 1)["total"] == 0
    assert json.loads(council.ok("items", "list", "--json").stdout)[0]["status"] == "approved"
    council.ok("issues", "render", "1")
    council.ok("issues", "send", "1", "--yes")
    assert "鳥取県米子市" in council.ok("issues", "preview", "1").stdout


def test_preview_and_test_mail_warn_that_an_item_changed_after_rendering(council):
    """They show the stored rendering: after an edit, the secretariat must not proofread old text
    believing it is the new one (send refuses; these two used to say nothing)."""
    item = _event(council, "直前に直したお知らせ")
    council.ok("issues", "new")
    council.ok("items", "edit", str(item), "--venue", "鳥取県米子市")
    warning = (f"warning: item {item} 「直前に直したお知らせ」 changed after issue 1 was rendered; this "
               "shows the old text: render the issue again (`mailmag issues render 1`)")
    preview = council.ok("issues", "preview", "1")
    assert warning in preview.stderr.splitlines() and "鳥取県米子市" not in preview.stdout
    tested = council.ok("issues", "test", "1", "--to", "proof@example.jp")
    assert warning in tested.stderr.splitlines()
    council.ok("items", "approve", str(item))
    council.ok("issues", "render", "1")
    again = council.ok("issues", "preview", "1")
    assert "warning" not in again.stderr and "鳥取県米子市" in again.stdout


def test_the_example_sender_data_is_refused_at_compose_test_and_send(council, config_file):
    _event(council, "お知らせ")
    council.ok("issues", "new")
    placeholder = Path(__file__).resolve().parents[1] / "config.example.toml"
    example = re.search(r"^\[sender\]\n(.*?)\n\n", placeholder.read_text(encoding="utf-8"), re.M | re.S)[1]
    ours = re.search(r"^\[sender\]\n.*?\n\n", config_file.read_text(encoding="utf-8"), re.M | re.S)[0]
    config_file.write_text(
        config_file.read_text(encoding="utf-8").replace(ours, f"[sender]\n{example}\n\n"), encoding="utf-8"
    )
    expected = (
        "Error: [sender] from, postal_address, contact still hold the example values of "
        "config.example.toml: set the secretariat's own in mailmag.toml (特定電子メール法 requires "
        "the real sender in every issue)\n"
    )
    for args in (
        ["issues", "new", "--item", "1"],
        ["issues", "send", "1", "--yes"],
        ["issues", "test", "1", "--to", "office@example.jp"],
        ["issues", "render", "1"],
    ):
        result = council(*args)
        assert (result.exit_code, result.stderr) == (1, expected), args
    assert _status(council, 1)["total"] == 0
    assert len(json.loads(council.ok("issues", "list", "--json").stdout)) == 1


def test_the_demo_still_sends_with_its_own_sender_data(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path / "demo")], env={"MAILMAG_CONFIG": None})
    assert result.exit_code == 0, result.output
    assert "20 sent, 0 failed" in result.stdout


def test_no_configuration_file_says_what_was_looked_for_and_creates_no_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["subscribers", "list"], env={"MAILMAG_CONFIG": None})
    assert result.exit_code == 1
    assert result.stderr == (
        f"note: no configuration file (looked for --config, $MAILMAG_CONFIG (not set) and "
        f"{tmp_path / 'mailmag.toml'}): using the built-in defaults (database sqlite:///mailmag.db, file "
        "transport into ./outbox/)\n"
        "Error: the database mailmag.db does not exist: run `mailmag init` here, or point "
        "--config (or [database] url) at the installation\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_empty_audience_is_an_error_unless_allowed(mailmag, tmp_path):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("subscribers", "add", "news@example.jp", "--topic", "news")
    _event(mailmag, "誰にも届かないお知らせ")
    mailmag.ok("issues", "new", "--topic", "events")
    refused = mailmag("issues", "send", "1", "--yes")
    assert (refused.exit_code, refused.stderr) == (
        1,
        (
            "Error: no active subscriber matches issue 1 (topic events (イベント案内)); nothing was sent: "
            "add subscribers (`mailmag subscribers import`; or send it to nobody with --allow-empty: it "
            "still goes to the archive)\n"
        ),
    )
    assert _status(mailmag, 1)["status"] == "draft"
    later = mailmag("issues", "send", "1", "--at", f"{_future_date(3)} 09:00")
    assert later.exit_code == 1 and "no active subscriber matches issue 1" in later.stderr
    allowed = mailmag.ok("issues", "send", "1", "--yes", "--allow-empty")
    assert allowed.stdout.startswith("issue 1 is 第1号: 0 messages queued;")


def test_the_confirmation_question_names_the_recipients_and_the_topic(council, monkeypatch):
    from mailmag.cli import issues as issues_cli

    _event(council, "確認するお知らせ")
    council.ok("issues", "new", "--topic", "events")
    monkeypatch.setattr(issues_cli, "_interactive", lambda: True)
    declined = council("issues", "send", "1", input="n\n")
    assert (
        "Send issue 1 「中国地域産学官コラボレーション会議 メールマガジン 第1号」 to 2 subscribers "
        "(topic events (イベント案内)) now? [y/N]" in declined.stdout
    )
    assert declined.exit_code == 1 and _status(council, 1)["total"] == 0
    council.ok("issues", "send", "1", input="y\n")
    assert _status(council, 1)["total"] == 2


@pytest.mark.parametrize("form", ["{y}年{m}月{d}日 9:00", "{iso} 09:00", "R{r}.{m}.{d} 9:00", "{m}/{d} 9:00"])
def test_send_at_reads_the_date_forms_of_items(council, form):
    day = (utcnow() + dt.timedelta(days=40)).date()
    typed = form.format(y=day.year, m=day.month, d=day.day, iso=day.isoformat(), r=day.year - 2018)
    _event(council, "予約")
    council.ok("issues", "new")
    council.ok("issues", "send", "1", "--at", typed)
    status = _status(council, 1)
    expected = dt.datetime.combine(day, dt.time(9, 0), tzinfo=ZoneInfo("Asia/Tokyo"))
    assert (status["status"], status["scheduled_at"]) == (
        "scheduled",
        expected.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
    )


def test_a_crontab_line_that_never_fires_is_refused(council):
    result = council("schedule", "add", "--cron", "0 9 31 2 *")
    assert (result.exit_code, result.stderr) == (
        1,
        (
            "Error: the cron expression '0 9 31 2 *' never fires (no such date, e.g. 31 February): "
            "check the day "
            "and month fields\n"
        ),
    )
    assert json.loads(council.ok("schedule", "list", "--json").stdout) == []
    added = json.loads(
        council.ok("schedule", "add", "--cron", "0 9 29 2 *", "--topic", "news", "--json").stdout
    )
    assert (added["cron"], added["topic"]) == ("0 9 29 2 *", "news")  # leap years only, but it fires


# --- 5. small things a secretariat notices ----------------------------------------------------


def test_counts_are_singular_for_one(mailmag):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    added = mailmag.ok("subscribers", "add", "one@example.jp")
    assert added.stdout == "added one@example.jp\n"
    assert mailmag.ok("subscribers", "list").stderr == "1 subscriber\n"
    _event(mailmag, "ひとつだけ")
    assert mailmag.ok("items", "list").stderr == "1 item\n"
    assert "with 1 item for every subscriber (1 subscriber now)" in mailmag.ok("issues", "new").stdout
    assert mailmag.ok("issues", "send", "1", "--yes").stdout.startswith("issue 1 is 第1号: 1 message queued;")
    assert mailmag.ok("issues", "list").stderr == "1 issue\n"
    assert mailmag.ok("orgs", "list").stdout.endswith("\t1 item\n")


def test_json_times_are_utc_with_z(council):
    _event(council, "時刻")
    council.ok("issues", "new")
    listed = json.loads(council.ok("issues", "list", "--json").stdout)[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed["created_at"])
    council.ok("schedule", "add", "--cron", "0 9 1 * *")
    schedule = json.loads(council.ok("schedule", "list", "--json").stdout)[0]
    assert schedule["next_run"].endswith(":00:00Z")
    subscriber = json.loads(council.ok("subscribers", "list", "--json").stdout)[0]
    assert subscriber["created_at"].endswith("Z")


def test_every_listing_has_one_format(council):
    _event(council, "一覧")
    council.ok("issues", "new")
    council.ok("schedule", "add", "--cron", "0 9 1 * *", "--name", "定期号")
    for args, columns in (
        (["orgs", "list"], 5),
        (["subscribers", "list"], 6),
        (["items", "list"], 6),
        (["issues", "list"], 7),
        (["schedule", "list"], 6),
    ):
        result = council.ok(*args)
        rows = result.stdout.splitlines()
        assert rows and all(len(row.split("\t")) == columns for row in rows), (args, rows)
        assert re.fullmatch(r"\d+ [a-z ]+\n", result.stderr), (args, result.stderr)


def test_adding_the_same_item_file_twice_stores_one_item(council, tmp_path):
    path = tmp_path / "symposium.md"
    path.write_text(
        f'+++\norg = "cef"\nkind = "event"\ntitle = "シンポジウム"\ndate = {_future_date(50)}\n'
        'venue = "松江市"\n+++\n本文です。\n',
        encoding="utf-8",
    )
    assert council.ok("items", "add", str(path)).stdout == "submitted item 1 (event: シンポジウム)\n"
    again = council.ok("items", "add", str(path), str(path))
    assert (
        again.stdout
        == (
            f"{path}: already stored as item 1 (submitted); nothing added (change it with "
            f"mailmag items edit 1)\n"
        )
        * 2
    )
    assert len(json.loads(council.ok("items", "list", "--json").stdout)) == 1


def test_config_topics_property_is_the_parsed_setting():
    assert [t.code for t in Config().topics] == ["events", "news"]


def test_the_migration_takes_the_numbers_of_unsent_issues_back(db_url):
    """An installation from before: drafts had numbers; only the sent ones keep theirs."""
    from alembic import command

    from mailmag import db

    engine = db.make_engine(db_url)
    try:
        command.upgrade(db.alembic_config(engine), "0002")
        with engine.begin() as conn:
            for issue_id, number, status in ((1, 1, "sent"), (2, 3, "draft"), (3, 2, "scheduled")):
                conn.execute(text("INSERT INTO issues (id, number, title, status, created_at) "
                                  "VALUES (:i, :n, 't', :s, CURRENT_TIMESTAMP)"),
                             {"i": issue_id, "n": number, "s": status})
            # (as the 0002 schema has it: the model's later columns, such as detail_ja, are not there yet)
            conn.execute(text("INSERT INTO job_runs (job_id, scheduled_for, outcome, detail, at) "
                              "VALUES ('send-issue-2', :now, 'missed', '', :now)"), {"now": utcnow()})
        command.upgrade(db.alembic_config(engine), "head")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, number, rendered_number FROM issues ORDER BY id")).all()
            runs = conn.execute(text("SELECT job_id FROM job_runs")).scalars().all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(1, 1, 1), (2, None, 3), (3, None, 2)]
    assert runs == ["send-issue-3"]  # issue 3 (then numbered 2) keeps its timed send's history
