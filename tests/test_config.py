"""Configuration: defaults, the example file, and one clear error per mistake."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import SECRET

from mailmag.config import Config, broken_rule, load_config, section_keys, sections
from mailmag.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def test_example_documents_every_key_with_its_default():
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    defaults = Config()
    assert list(example) == list(sections())
    for name, cls in sections().items():
        assert list(example[name]) == list(section_keys(cls)), name
        for key, field in section_keys(cls).items():
            assert example[name][key] == getattr(getattr(defaults, name), field.name), (name, key)


def test_example_loads(tmp_path):
    assert load_config(EXAMPLE, env={}).sender.name == "中国地域産学官コラボレーション会議 事務局"


def test_no_file_gives_builtin_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config.database.url == "sqlite:///mailmag.db"
    assert config.smtp.transport == "file"
    assert config.source is None


def test_env_names_the_file_and_overrides_keys(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[smtp]\nport = 25\n', encoding="utf-8")
    config = load_config(None, env={"MAILMAG_CONFIG": str(path), "MAILMAG_SMTP_HOST": "relay",
                                    "MAILMAG_SECRET_KEY": "k", "MAILMAG_SMTP_PASSWORD": "pw"})
    assert (config.smtp.port, config.smtp.host) == (25, "relay")
    assert (config.secret_key, config.smtp_password) == ("k", "pw")


def test_relative_paths_follow_the_file(tmp_path):
    path = tmp_path / "conf" / "m.toml"
    path.parent.mkdir()
    path.write_text('[database]\nurl = "sqlite:///data.db"\n[smtp]\nfile_dir = "out"\n')
    config = load_config(path, env={})
    assert config.database.url == f"sqlite:///{tmp_path / 'conf' / 'data.db'}"
    assert config.smtp.file_dir == str(tmp_path / "conf" / "out")


def test_the_default_database_and_outbox_follow_the_file_too(tmp_path, monkeypatch):
    """A file without [database] url, named by $MAILMAG_CONFIG from another folder, looked for
    ./mailmag.db where the command ran ("the database mailmag.db does not exist")."""
    path = tmp_path / "conf" / "m.toml"
    path.parent.mkdir()
    path.write_text('[mailmag]\nbase_url = "https://news.example.jp"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={"MAILMAG_CONFIG": str(path)})
    assert config.database.url == f"sqlite:///{tmp_path / 'conf' / 'mailmag.db'}"
    assert config.smtp.file_dir == str(tmp_path / "conf" / "outbox")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[smtp]\nport = "587"\n', r"m\.toml:2: \[smtp\] port must be an integer, not '587'"),
        ('[smtp]\nhots = "x"\n', r"m\.toml:2: unknown key 'hots' in \[smtp\]"),
        ('[smtp]\npassword = "x"\n', r"secrets come from the environment only"),
        ('[mailer]\nx = 1\n', r"m\.toml:1: unknown section \[mailer\]"),
        ('[smtp\nport = 1\n', r"m\.toml: not valid TOML"),
        ('[smtp]\nsecurity = "ssl"\n', r"security must be one of none, starttls, tls"),
        ('[mailmag]\ntimezone = "Tokyo"\n', r"not a known time zone"),
        ('[schedule]\nsend_window_enabled = true\nsend_window_start = "25:00"\n',
         r"m\.toml:3: \[schedule\] send_window_start must be a time such as \"09:00\", not '25:00'"),
        ('[schedule]\nsend_window_days = ["mon", "funday"]\n',
         r"m\.toml:2: \[schedule\] send_window_days must list"),
        ('[schedule]\nyear_end_break = ["12-32", "01-03"]\n',
         r"m\.toml:2: \[schedule\] year_end_break must be"),
        ('[mailmag]\nbase_url = "https://x.example.jp"\n\n[schedule]\nsend_window_start = "10:00"\n'
         'send_window_end = "10:00"\n',
         r"m\.toml:5: \[schedule\] send_window_start must be earlier than send_window_end$"),
        # helper-66: 0 was taken, then treated as 1, and the skip message said "min_items = 1"
        ('[schedule]\nmin_items = 0\n', r"m\.toml:2: \[schedule\] min_items must be at least 1, not 0$"),
        # a lock wait of busy_timeout_seconds must not count as a server that stopped answering
        ('[database]\nurl = "postgresql+psycopg://m@db.example.jp/m"\nbusy_timeout_seconds = 90\n',
         r"\[database\] answer_timeout_seconds \(60\) must be longer than busy_timeout_seconds \(90\)$"),
    ],
)
def test_each_mistake_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "m.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_a_send_window_mistake_made_in_the_environment_names_the_variable_not_the_file(tmp_path):
    """The file's line holds a good value: pointing at it would send the operator to the wrong place."""
    path = tmp_path / "m.toml"
    path.write_text('[schedule]\nsend_window_enabled = true\nsend_window_start = "09:00"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^environment variable MAILMAG_SCHEDULE_SEND_WINDOW_START: "
                                          r"\[schedule\] send_window_start must be a time such as"):
        load_config(path, env={"MAILMAG_SCHEDULE_SEND_WINDOW_START": "25:00"})


def test_bad_env_value_is_named():
    with pytest.raises(ConfigError, match="MAILMAG_SMTP_PORT must be an integer"):
        load_config(None, env={"MAILMAG_SMTP_PORT": "abc"})


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*nope\.toml"):
        load_config(tmp_path / "nope.toml", env={})


def _ruled_fields():  # type: ignore[no-untyped-def]
    for name, cls in sections().items():
        for key, f in section_keys(cls).items():
            if {"min", "above", "choices"} & set(f.metadata):
                yield name, key, f


def test_every_number_has_a_range_and_every_default_keeps_its_own_rule():
    ruled = {(name, key) for name, key, _ in _ruled_fields()}
    for name, cls in sections().items():
        for key, f in section_keys(cls).items():
            if f.type in ("int", "float"):
                assert (name, key) in ruled, f"[{name}] {key} has no range"
    defaults = Config()
    for name, _key, f in _ruled_fields():
        assert broken_rule(getattr(getattr(defaults, name), f.name), f.metadata) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[smtp]\nhost = \"relay\"\nmax_connections = 0\n",
         r"^.*m\.toml:3: \[smtp\] max_connections must be at least 1, not 0$"),
        ("[smtp]\nport = 70000\n", r"m\.toml:2: \[smtp\] port must be from 1 to 65535, not 70000$"),
        ("[smtp]\ntimeout_seconds = 0\n",
         r"m\.toml:2: \[smtp\] timeout_seconds must be more than 0, not 0\.0$"),
        ("[dispatch]\nbatch_size = -5\n", r"m\.toml:2: \[dispatch\] batch_size must be at least 1, not -5$"),
        ("[mailmag]\nlanguage = \"fr\"\n",
         r"m\.toml:2: \[mailmag\] language must be one of ja, en, not 'fr'$"),
        # nan passes every comparison unnoticed (the limit was silently off), inf crashed the worker,
        # and a billion an hour was a billion timestamps held in memory
        ("[smtp]\nrate_per_second = nan\n", r"m\.toml:2: \[smtp\] rate_per_second must be a finite number"),
        ("[smtp]\nrate_per_second = inf\n", r"m\.toml:2: \[smtp\] rate_per_second must be a finite number"),
        ("[smtp]\nrate_per_second = 1e9\n", r"m\.toml:2: \[smtp\] rate_per_second must be from 0 to 10000"),
        # a message every 1e300 s overflowed the --once note and the worker's clock
        ("[smtp]\nrate_per_second = 1e-300\n",
         r"m\.toml:2: \[smtp\] rate_per_second must be 0 or at least 0\.001, not 1e-300$"),
        ("[smtp]\nrate_per_hour = 1000000000\n",
         r"m\.toml:2: \[smtp\] rate_per_hour must be from 0 to 1000000, not 1000000000$"),
    ],
)
def test_a_value_out_of_range_is_one_error_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "m.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_a_number_that_is_not_finite_is_refused_from_the_environment_too():
    with pytest.raises(ConfigError, match=r"MAILMAG_SMTP_RATE_PER_SECOND.*must be a finite number"):
        load_config(None, env={"MAILMAG_SMTP_RATE_PER_SECOND": "inf"})


def test_an_override_out_of_range_is_named():
    expected = r"^environment variable MAILMAG_SMTP_MAX_CONNECTIONS must be at least 1, not 0$"
    with pytest.raises(ConfigError, match=expected):
        load_config(None, env={"MAILMAG_SMTP_MAX_CONNECTIONS": "0"})


@pytest.mark.parametrize(("name", "suggestion"), [
    ("MAILMAG_SMTP_PROT", "MAILMAG_SMTP_PORT"),
    ("MAILMAG_SMPT_HOST", "MAILMAG_SMTP_HOST"),
    ("MAILMAG_SECRET_KY", "MAILMAG_SECRET_KEY"),
    ("MAILMAG_DATABASE_URI", "MAILMAG_DATABASE_URL"),
])
def test_a_misspelled_override_is_reported_not_ignored(name, suggestion):
    expected = rf"^environment variable {name} is not a setting: did you mean {suggestion}\?"
    with pytest.raises(ConfigError, match=expected):
        load_config(None, env={name: "25"})


def test_other_mailmag_variables_are_left_alone():
    load_config(None, env={"MAILMAG_TEST_PG": "x", "MAILMAG_SCREENSHOTS": "/tmp"})


def test_the_worker_refuses_zero_connections_as_one_line(mailmag, config_file):
    text = config_file.read_text().replace('transport = "file"', 'transport = "file"\nmax_connections = 0')
    config_file.write_text(text, encoding="utf-8")
    result = mailmag("worker", "--once")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {config_file}:") and result.stderr.count("\n") == 1
    assert "[smtp] max_connections must be at least 1, not 0" in result.stderr


def test_a_list_from_the_environment_reads_as_in_the_file_or_comma_separated():
    days = {"MAILMAG_SCHEDULE_SEND_WINDOW_DAYS": '["mon", "tue"]',
            "MAILMAG_SCHEDULE_YEAR_END_BREAK": '["12-29","01-03"]'}
    schedule = load_config(None, env=days).schedule
    assert (schedule.send_window_days, schedule.year_end_break) == (["mon", "tue"], ["12-29", "01-03"])
    comma = load_config(None, env={"MAILMAG_SCHEDULE_SEND_WINDOW_DAYS": "mon, tue"}).schedule
    assert comma.send_window_days == ["mon", "tue"]
    with pytest.raises(ConfigError, match="MAILMAG_SCHEDULE_SEND_WINDOW_DAYS"):
        load_config(None, env={"MAILMAG_SCHEDULE_SEND_WINDOW_DAYS": '["mon", 3]'})


def test_a_bad_send_window_stops_every_command_before_it_does_anything(mailmag, config_file):
    """Not only the worker at the next morning's start: `issues send` must not queue an issue and
    then fail on the window it would wait for."""
    text = config_file.read_text() + '\n[schedule]\nsend_window_enabled = true\nsend_window_end = "8:00"\n'
    config_file.write_text(text, encoding="utf-8")
    for command in (["issues", "list"], ["issues", "send", "1"]):
        result = mailmag(*command)
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1
        assert "[schedule] send_window_start must be earlier than send_window_end" in result.stderr


@pytest.mark.parametrize("key", ["name", "list_name", "from", "reply_to", "feedback_id"])
def test_a_line_break_in_a_sender_header_value_stops_every_command_before_it_starts(mailmag, key):
    """[sender] values go into mail headers: a CR/LF there was found only when a mail was built, so
    `serve` started and then every confirmation mail failed (an outside attack). Now every command
    refuses the configuration with one line naming the variable, before it does anything."""
    variable = f"MAILMAG_SENDER_{key.upper()}"
    said = (f"environment variable {variable}: [sender] {key} goes into a mail header and must be one line: "
            "remove its line break (or NUL character)")
    result = mailmag("subscribers", "list", env={variable: "事務局\r\nBcc: everyone@example.jp"})
    assert (result.exit_code, result.stderr.strip().splitlines()) == (1, [f"Error: {said}"])
    serve = subprocess.run(  # a real process: one that starts serves until it is stopped
        [sys.executable, "-m", "mailmag", "--config", str(mailmag.config_file), "serve", "--port", "0"],
        env={**os.environ, "MAILMAG_SECRET_KEY": SECRET, variable: "事務局\nBcc: everyone@example.jp"},
        capture_output=True, text=True, timeout=60)
    assert serve.returncode == 1 and said in serve.stderr


def test_a_line_break_in_the_sender_name_is_refused_at_its_line(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[mailmag]\nbase_url = "https://x.example.jp"\n\n[sender]\n'
                    'name = "事務局\\r\\nBcc: x@evil.jp"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"m\.toml:5: \[sender\] name goes into a mail header and must be"):
        load_config(path, env={})
