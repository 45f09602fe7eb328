"""Upgrading an installation keeps every row: a table rebuilt by a migration loses no child rows."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from mailmag import db

ROWS = [
    "INSERT INTO orgs (id, code, name, short_name, contact, token_version, created_at) "
    "VALUES (1, 'cef', '中国経済連合会', '中経連', 'a@example.jp', 1, CURRENT_TIMESTAMP)",
    "INSERT INTO items (id, org_id, kind, title, body, time_text, venue, url, fee, event_name, how_to_apply, "
    "status, reject_reason, channel, created_at, updated_at) VALUES (1, 1, 'news', '会議報告', "
    "'本文', '', '', '', '', '', '', 'published', '', 'cli', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO issues (id, number, title, status, created_at) "
    "VALUES (1, 1, '第1号', 'sending', CURRENT_TIMESTAMP)",
    "INSERT INTO issues (id, number, title, status, created_at) "
    "VALUES (2, 2, '第2号', 'draft', CURRENT_TIMESTAMP)",
    "INSERT INTO issue_items (issue_id, item_id, position) VALUES (1, 1, 0)",
    "INSERT INTO renderings (issue_id, lang, subject, html, text, rendered_at) "
    "VALUES (1, 'ja', '件名', '<p>本文</p>', '本文', CURRENT_TIMESTAMP)",
    "INSERT INTO subscribers (id, email, email_key, name, organization, lang, topics, status, status_reason, "
    "created_at, updated_at) VALUES (1, 'taro@example.jp', 'taro@example.jp', '太郎', '', "
    "'ja', '[]', 'active', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO deliveries (issue_id, subscriber_id, email, lang, message_id, status, attempts, "
    "lease_expiries, next_attempt_at, last_reply, created_at) "
    "VALUES (1, 1, 'taro@example.jp', 'ja', '<1.1@example.jp>', 'queued', 0, 0, "
    "CURRENT_TIMESTAMP, '', CURRENT_TIMESTAMP)",
    # being retried when the upgrade comes: its lifetime keeps counting from when it was queued
    "INSERT INTO deliveries (issue_id, subscriber_id, email, lang, message_id, status, attempts, "
    "lease_expiries, next_attempt_at, last_reply, created_at) "
    "VALUES (2, 1, 'taro@example.jp', 'ja', '<2.1@example.jp>', 'queued', 1, 0, "
    "CURRENT_TIMESTAMP, '451 4.3.0 try later', CURRENT_TIMESTAMP)",
    "INSERT INTO consent_events (subscriber_id, email_hash, action, channel, source, at) "
    "VALUES (1, 'h', 'opt_in', 'import', 'test', CURRENT_TIMESTAMP)",
]
COUNTED = ("orgs", "items", "issues", "issue_items", "renderings", "subscribers", "deliveries",
           "consent_events")


def test_upgrading_from_the_first_release_keeps_every_row_and_link(db_url):
    engine = db.make_engine(db_url)
    try:
        command.upgrade(db.alembic_config(engine), "0002")
        with engine.begin() as conn:
            for statement in ROWS:
                conn.execute(text(statement))
        assert db.init_db(engine) == "upgraded"
        with engine.connect() as conn:
            counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in COUNTED}
            links = conn.execute(text("SELECT d.subscriber_id, c.subscriber_id FROM deliveries d, "
                                      "consent_events c WHERE d.issue_id = 1")).one()
            retrying = conn.execute(text("SELECT issue_id, retrying_since = created_at FROM deliveries "
                                         "WHERE retrying_since IS NOT NULL")).all()
            if engine.dialect.name == "sqlite":
                assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1  # on again afterwards
    finally:
        engine.dispose()
    assert counts == {"orgs": 1, "items": 1, "issues": 2, "issue_items": 1, "renderings": 1, "subscribers": 1,
                      "deliveries": 2, "consent_events": 1}
    assert tuple(links) == (1, 1)
    assert [tuple(row) for row in retrying] == [(2, True)]
