"""Mail that waits for the send window says so: `issues status`, `issues list`, `mailmag doctor`.

The clock is given explicitly: to the domain functions as an argument, to the commands by
replacing the one clock function they read (`utcnow`).
"""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest

from mailmag.config import Config, ScheduleConfig
from mailmag.delivery.window import next_window_open, opening, summary, waiting_for_window

JST = ZoneInfo("Asia/Tokyo")
NOTE = "waiting for the send window; it opens at 2027-01-04 09:00 (月)"
OPENS_JSON = "2027-01-04T00:00:00Z"  # the same opening in JSON: UTC with a Z


def jst(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=JST).astimezone(dt.UTC)


def windowed(**settings) -> Config:  # type: ignore[no-untyped-def]
    return Config(schedule=ScheduleConfig(send_window_enabled=True, **settings))


@pytest.mark.parametrize(
    ("now", "opens"),
    [
        (jst(2027, 1, 2, 12, 0), jst(2027, 1, 4, 9, 0)),  # Saturday in 年末年始: Monday the 4th
        (jst(2026, 12, 28, 18, 0), jst(2027, 1, 4, 9, 0)),  # closing time before the break
        (jst(2027, 1, 4, 8, 59), jst(2027, 1, 4, 9, 0)),
        (jst(2027, 1, 4, 9, 0), None),  # open: nothing to wait for
        (jst(2027, 2, 11, 10, 0), jst(2027, 2, 12, 9, 0)),  # 建国記念の日
    ],
)
def test_next_window_open_is_none_while_open_else_the_next_opening(now, opens):
    assert next_window_open(now, windowed()) == opens
    assert next_window_open(now, Config()) is None  # no window: never waits


def test_only_pending_mail_waits_and_the_opening_reads_with_its_weekday():
    now = jst(2027, 1, 2, 12, 0)
    assert waiting_for_window(0, now, windowed()) is None
    opens = waiting_for_window(5, now, windowed())
    assert opening(opens, windowed()) == "2027-01-04 09:00 (月)"


@pytest.mark.parametrize(
    ("config", "now", "line"),
    [
        (windowed(), jst(2027, 1, 2, 12, 0),
         "closed now; it opens at 2027-01-04 09:00 (月) (mon,tue,wed,thu,fri 09:00-18:00, not on 祝日, "
         "not 12-29 to 01-03, Asia/Tokyo)"),
        (windowed(send_window_days=["sat", "mon"], skip_holidays=False, year_end_break=[],
                  send_window_end="24:00"), jst(2027, 1, 2, 12, 0),
         "open now, until 24:00 today (mon,sat 09:00-24:00, Asia/Tokyo)"),
        (Config(), jst(2027, 1, 2, 12, 0),
         "off: messages leave as soon as they are queued ([schedule] send_window_enabled = false)"),
    ],
)
def test_the_window_in_one_line(config, now, line):
    assert summary(now, config) == line


# --- the commands ---------------------------------------------------------------------------------


@pytest.fixture
def sending(mailmag, config_file):  # type: ignore[no-untyped-def]
    """Issue 1 sent to 3 subscribers (nothing delivered yet), issue 2 a draft; the window is on."""
    config_file.write_text(config_file.read_text() + "\n[schedule]\nsend_window_enabled = true\n")
    mailmag.ok("orgs", "add", "meti", "中国経済産業局")
    for n in range(2):
        submitted = mailmag.ok("items", "submit", "--org", "meti", "--kind", "news",
                               "--title", f"お知らせ{n}", "--body", "本文です。", "--json")
        item_id = str(json.loads(submitted.stdout)["id"])
        mailmag.ok("items", "approve", item_id)
        mailmag.ok("issues", "new", "--item", item_id)
    for n in range(3):
        mailmag.ok("subscribers", "add", f"member{n}@example.jp")
    mailmag.ok("issues", "send", "1", "--yes")
    return mailmag


def at(monkeypatch, module: str, moment: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(f"{module}.utcnow", lambda: moment)


def test_issues_status_says_the_mail_waits_for_the_window_and_when_it_opens(sending, monkeypatch):
    at(monkeypatch, "mailmag.cli.issues", jst(2027, 1, 2, 12, 0))
    shown = sending.ok("issues", "status", "1").stdout.splitlines()
    assert shown[0] == "issue 1 (第1号): sending" and shown[1].startswith("audience: 3 subscribers (")
    assert shown[2:] == ["total 3, sent 0, failed 0, pending 3, dead 0, cancelled 0", NOTE]
    document = json.loads(sending.ok("issues", "status", "1", "--json").stdout)
    assert (document["pending"], document["waiting_for_window"]) == (3, OPENS_JSON)
    # A draft has nothing waiting.
    assert NOTE not in sending.ok("issues", "status", "2").stdout
    assert json.loads(sending.ok("issues", "status", "2", "--json").stdout)["waiting_for_window"] is None
    at(monkeypatch, "mailmag.cli.issues", jst(2027, 1, 4, 10, 0))  # open: the worker is what it waits for
    assert "waiting for the send window" not in sending.ok("issues", "status", "1").stdout
    assert json.loads(sending.ok("issues", "status", "1", "--json").stdout)["waiting_for_window"] is None


def test_issues_list_says_which_issue_waits_for_the_window(sending, monkeypatch):
    at(monkeypatch, "mailmag.cli.issues", jst(2027, 1, 2, 12, 0))
    rows = sending.ok("issues", "list").stdout.splitlines()
    # ID, 第N号, status: the draft has no number yet.
    assert [row.split("\t")[:3] for row in rows] == [["2", "-", "draft"], ["1", "第1号", "sending"]]
    assert rows[1].endswith(f"\t{NOTE}") and "waiting" not in rows[0]
    listed = json.loads(sending.ok("issues", "list", "--json").stdout)
    assert [(i["id"], i["number"], i["waiting_for_window"]) for i in listed] == [
        (2, None, None), (1, 1, OPENS_JSON)]


def test_doctor_prints_the_next_window(sending, monkeypatch):
    at(monkeypatch, "mailmag.doctor", jst(2026, 12, 30, 12, 0))
    lines = [line for line in sending("doctor").stdout.splitlines() if "send window" in line]
    assert lines == ["ok       send window: closed now; it opens at 2027-01-04 09:00 (月) "
                     "(mon,tue,wed,thu,fri 09:00-18:00, not on 祝日, not 12-29 to 01-03, Asia/Tokyo)"]


def _next_saturday_noon_jst() -> dt.datetime:
    """Closed under the default window (mon–fri) whatever day the test clock says it is."""
    from mailmag import clock

    today = clock.now().astimezone(JST).date()
    saturday = today + dt.timedelta(days=(5 - today.weekday()) % 7 or 7)
    return dt.datetime.combine(saturday, dt.time(12, 0), JST)


def test_issues_send_and_worker_once_say_the_closed_window_holds_the_mail(sending):
    """Both used to print their counts and nothing else: 'queued', then 'sent 0', no reason."""
    import time_machine

    with time_machine.travel(_next_saturday_noon_jst(), tick=False):
        queued = sending.ok("issues", "send", "2", "--yes")
        note = [line for line in queued.stderr.splitlines() if line.startswith("note: 3 messages")]
        assert len(note) == 1 and "waiting for the send window; it opens at " in note[0]
        assert "09:00 (" in note[0]  # a weekday morning: the window's start
        worked = sending.ok("worker", "--once")
        assert worked.stdout.startswith("sent 0, failed 0, deferred 0")
        assert "note: 6 messages waiting for the send window; it opens at " in worked.stderr
