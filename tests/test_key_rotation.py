"""Changing MAILMAG_SECRET_KEY: what the old key signed is still read while it is listed in
MAILMAG_PREVIOUS_SECRET_KEYS, and nothing new is signed with it (helper-85: every link in mail
already sent became a 404, and bounces of that mail matched no one)."""

from __future__ import annotations

import bounce_samples as samples
import pytest
from conftest import SECRET
from web_support import Client, LiveServer, make_services, one_click

from mailmag import addresses, links, tokens
from mailmag.audience import bounces, subscribers
from mailmag.audience.subscribers import Consent
from mailmag.config import Config
from mailmag.content import orgs
from mailmag.errors import ConfigError
from mailmag.models import Subscriber
from mailmag.web import create_app

NEW = "a-new-secret-key-after-the-old-one-leaked-0123456789"
BASE = "https://news.example.jp"


def _rotated(config: Config, *previous: str) -> Config:
    return config.replace(secret_key=NEW, previous_secret_keys=previous)


@pytest.fixture
def reader_and_org(config):  # type: ignore[no-untyped-def]
    """A subscriber and an org in a database, and the links the old key (SECRET) signed for them."""
    services = make_services(config)
    with services.session() as session:
        _, reader = subscribers.add(session, subscribers.parse_address("yamada@example.jp"), Consent("cli"))
        org = orgs.add(session, "cef", "中国経済連合会")
        session.flush()
        old = {"unsubscribe": links.unsubscribe_url(BASE, SECRET, reader.id, reader.link_key),
               "submit": orgs.submission_link(BASE, SECRET, org),
               "tag": tokens.unsubscribe_tag(SECRET, reader.id, reader.link_key),
               "verp": tokens.verp_tag(SECRET, 7), "reader": reader.id}
    services.close()
    return old


@pytest.mark.parametrize("previous", [(), (SECRET,)])
def test_links_the_old_key_signed_work_while_it_is_listed_as_previous(config, reader_and_org, previous):
    services = make_services(_rotated(config, *previous))
    app = create_app(services)
    live = LiveServer(app)
    try:
        unsubscribe = reader_and_org["unsubscribe"].removeprefix(BASE)
        submit = reader_and_org["submit"].removeprefix(BASE)
        expected = 200 if previous else 404
        assert Client(live.url).get(unsubscribe).status == expected
        assert Client(live.url).get(submit + "?kind=news").status == expected
        assert one_click(live.url, unsubscribe).status == expected
        with services.session() as session:
            status = session.get(Subscriber, reader_and_org["reader"]).status
        assert status == ("unsubscribed" if previous else "active")
        keys = services.verify_keys
        assert keys == (NEW, *previous)
        fits = tokens.unsubscribe_tag_fits(keys, reader_and_org["tag"], reader_and_org["reader"],
                                           _link_key(services, reader_and_org["reader"]))
        assert fits == bool(previous)
        verp = f"bounces+{reader_and_org['verp']}@example.jp"
        assert addresses.parse_verp(services.config, keys, verp) == (7 if previous else None)
        # what is made now is signed with the new key alone
        fresh = links.unsubscribe_url(BASE, services.secret_key, reader_and_org["reader"], "k" * 16)
        assert fresh != links.unsubscribe_url(BASE, SECRET, reader_and_org["reader"], "k" * 16)
    finally:
        live.close()
        app.extensions["mailmag"].mailer.close()
        services.close()


def _link_key(services, subscriber_id: int) -> str:  # type: ignore[no-untyped-def]
    with services.session() as session:
        return session.get(Subscriber, subscriber_id).link_key


def test_a_short_previous_key_is_refused_as_a_short_key_is(config):
    services = make_services(_rotated(config, "short"))
    try:
        with pytest.raises(ConfigError, match="MAILMAG_PREVIOUS_SECRET_KEYS has only 5 characters"):
            _ = services.verify_keys
    finally:
        services.close()


def test_a_bounce_of_mail_signed_with_the_old_key_is_matched(config, tmp_path):
    from test_bounces import send_issue, verp, write_maildir

    services = make_services(config)
    try:
        with services.session() as session:
            subscribers.add(session, subscribers.parse_address("user0@example.jp"), Consent("cli"))
            delivery = send_issue(session, 1)["user0@example.jp"]
            bounced = samples.postfix_dsn("user0@example.jp", to=verp(delivery))  # signed with SECRET
        box = write_maildir(tmp_path / "Maildir", [bounced])
        for keys, kind in (((NEW,), "unmatched"), ((NEW, SECRET), "hard")):
            with services.session() as session:
                report = bounces.process_mailbox(session, box, services.config, keys)
                assert (report.hard, len(report.unmatched)) == ((1, 0) if kind == "hard" else (0, 1))
                session.rollback()
    finally:
        services.close()


def test_the_previous_keys_come_from_the_environment_and_doctor_counts_them(config_file):
    from mailmag.config import load_config
    from mailmag.doctor import check

    env = {"MAILMAG_SECRET_KEY": NEW, "MAILMAG_PREVIOUS_SECRET_KEYS": f"{SECRET} {'z' * 40}"}
    config = load_config(config_file, env=env)  # a known name: not refused as a misspelling
    assert config.previous_secret_keys == (SECRET, "z" * 40)
    [said] = [f.message for f in check(config).findings if f.check == "secret key"]
    assert said.endswith("; links signed with 2 previous keys are still read")



def test_a_previous_key_that_is_the_current_one_is_named_and_counted_once(config_file):
    """helper-86: the current key listed as previous was 'ok … 1 previous key'; one listed twice, 2."""
    from mailmag.config import load_config
    from mailmag.doctor import check
    from mailmag.services import Services

    same = load_config(config_file, env={"MAILMAG_SECRET_KEY": NEW, "MAILMAG_PREVIOUS_SECRET_KEYS": NEW})
    [finding] = [f for f in check(same).findings if f.check == "secret key"]
    assert finding.status == "warning" and "the key was not changed" in finding.message
    twice = load_config(config_file, env={"MAILMAG_SECRET_KEY": NEW,
                                          "MAILMAG_PREVIOUS_SECRET_KEYS": f"{SECRET},{SECRET} {NEW}"})
    assert Services(twice).verify_keys == (NEW, SECRET)


def test_run_refuses_a_short_previous_key_before_it_starts(mailmag, config_file):
    """helper-87: `run` started with a short key in MAILMAG_PREVIOUS_SECRET_KEYS, which serve,
    doctor and `bounces process` refuse: the mistake surfaced only when one of them started."""
    import os
    import subprocess

    from clocked import mailmag_command

    env = {**os.environ, "MAILMAG_SECRET_KEY": SECRET, "MAILMAG_PREVIOUS_SECRET_KEYS": "short"}
    # helper-91: `worker` signs links too, and started all the same
    for command in (("run",), ("worker",), ("worker", "--once")):
        done = subprocess.run(mailmag_command("--config", str(config_file), *command), env=env, timeout=60,
                              capture_output=True, text=True)
        assert done.returncode == 1, (command, done.stderr)
        said = "Error: a key in MAILMAG_PREVIOUS_SECRET_KEYS has only 5 characters: a link signed with it " \
            "could be forged; drop it"
        assert done.stderr.strip().endswith(said), command
