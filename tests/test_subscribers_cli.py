"""`mailmag subscribers …` on SQLite and PostgreSQL: what the secretariat sees."""

from __future__ import annotations

import json


def test_add_then_list_json(mailmag):
    mailmag.ok("subscribers", "add", "Taro.Yamada@Example.JP", "--name", "山田太郎",
               "--org", "広島大学", "--topic", "events")
    listed = json.loads(mailmag.ok("subscribers", "list", "--json").stdout)
    assert listed == [
        {
            "email": "Taro.Yamada@example.jp", "name": "山田太郎", "organization": "広島大学",
            "status": "active", "status_reason": "", "lang": "ja", "topics": ["events"],
            "created_at": listed[0]["created_at"],
        }
    ]


def test_duplicate_detected_case_insensitively_and_fullwidth_at_repaired(mailmag):
    mailmag.ok("subscribers", "add", "taro@example.jp")
    result = mailmag.ok("subscribers", "add", " TARO＠EXAMPLE.JP ")
    assert result.stdout.startswith("unchanged")
    assert len(json.loads(mailmag.ok("subscribers", "list", "--json").stdout)) == 1
