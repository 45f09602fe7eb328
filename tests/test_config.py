"""Configuration: defaults, the example file, and one clear error per mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mailmag.config import Config, load_config, section_keys, sections
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
    ],
)
def test_each_mistake_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "m.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_bad_env_value_is_named():
    with pytest.raises(ConfigError, match="MAILMAG_SMTP_PORT must be an integer"):
        load_config(None, env={"MAILMAG_SMTP_PORT": "abc"})


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*nope\.toml"):
        load_config(tmp_path / "nope.toml", env={})
