"""Member organizations and their private submission links, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SECRET

import mailmag
from mailmag import tokens
from mailmag.content import orgs
from mailmag.errors import NotFound
from mailmag.models import Org

BASE = "https://news.example.jp"


def _orgs(mailmag) -> list[dict]:
    return json.loads(mailmag.ok("orgs", "list", "--json").stdout)


def test_add_and_list(mailmag):
    result = mailmag.ok("orgs", "add", "hiroshima-u", "広島大学", "--short-name", "広島大",
                        "--contact", "Sangaku@Hiroshima-U.example.JP")
    assert result.stdout == "added org hiroshima-u (広島大学)\n"
    mailmag.ok("orgs", "add", "CEF", "中国経済連合会")
    assert _orgs(mailmag) == [
        {"code": "cef", "name": "中国経済連合会", "short_name": "", "contact": "", "items": 0,
         "created_at": _orgs(mailmag)[0]["created_at"]},
        {"code": "hiroshima-u", "name": "広島大学", "short_name": "広島大",
         "contact": "Sangaku@hiroshima-u.example.jp", "items": 0,
         "created_at": _orgs(mailmag)[1]["created_at"]},
    ]
    text = mailmag.ok("orgs", "list").stdout
    assert "hiroshima-u\t広島大学\t広島大\tSangaku@hiroshima-u.example.jp\t0 items" in text


def test_pasted_names_are_normalized(mailmag):
    mailmag.ok("orgs", "add", "smrj-chugoku", "中⼩企業基盤整備機構\u200b 中国本部")
    assert _orgs(mailmag)[0]["name"] == "中小企業基盤整備機構 中国本部"


@pytest.mark.parametrize(("args", "message"), [
    (("cef", "別の名前"),
     "Error: the org code cef is already taken; choose another or use the existing org\n"),
    (("中経連", "中国経済連合会"),
     "Error: invalid org code '中経連': "
     "use up to 32 ASCII letters, digits and hyphens, e.g. hiroshima-u\n"),
    (("new", "  "), "Error: the org's name is empty: give its name, e.g. 広島大学\n"),
    (("new", "名前", "--contact", "office at example"),
     "Error: invalid e-mail address 'office at example': An email address must have an @-sign.\n"),
])
def test_bad_orgs_are_refused_and_nothing_is_stored(mailmag, args, message):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    before = _orgs(mailmag)
    result = mailmag("orgs", "add", *args)
    assert result.exit_code == 1
    assert result.stderr == message
    assert _orgs(mailmag) == before


def test_submission_link_leads_back_to_its_org_until_rotated(mailmag, services):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("orgs", "add", "chugoku-meti", "中国経済産業局")
    link = mailmag.ok("orgs", "token", "cef").stdout.strip()
    assert link.startswith(f"{BASE}/submit/")
    token = link.rsplit("/", 1)[1]
    with services.session() as session:
        assert orgs.from_submission_token(session, SECRET, token).code == "cef"

    rotated = mailmag.ok("orgs", "token", "cef", "--rotate")
    assert "the previous link of cef no longer works" in rotated.stderr
    new_token = rotated.stdout.strip().rsplit("/", 1)[1]
    with services.session() as session:
        with pytest.raises(NotFound, match="this submission link is not valid"):
            orgs.from_submission_token(session, SECRET, token)
        assert orgs.from_submission_token(session, SECRET, new_token).code == "cef"
        # The other org's link is untouched by the rotation.
        meti = orgs.get(session, "chugoku-meti")
        other = orgs.submission_link(BASE, SECRET, meti).rsplit("/", 1)[1]
        assert orgs.from_submission_token(session, SECRET, other).code == "chugoku-meti"


def test_wrong_foreign_and_forged_tokens_are_not_found(session):
    org = orgs.add(session, "cef", "中国経済連合会")
    good = orgs.submission_link(BASE, SECRET, org).rsplit("/", 1)[1]
    wrong = [
        "nonsense",
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),                    # tampered
        tokens.make(SECRET, "unsubscribe", {"s": org.id}),                          # another purpose
        tokens.make("another-installation-key", "org-submit", {"o": org.id, "v": 1}),  # another key
        tokens.make(SECRET, "org-submit", {"o": org.id + 1, "v": 1}),               # no such org
        tokens.make(SECRET, "org-submit", [org.id, 1]),                             # malformed payload
    ]
    for token in wrong:
        with pytest.raises(NotFound) as error:
            orgs.from_submission_token(session, SECRET, token)
        assert str(error.value) == "this submission link is not valid"


def test_token_of_an_unknown_org_names_the_known_codes(mailmag):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    mailmag.ok("orgs", "add", "ciic", "ちゅうごく産業創造センター")
    result = mailmag("orgs", "token", "hiroshima")
    assert result.exit_code == 1
    assert result.stderr == "Error: no org with the code 'hiroshima'; known codes: cef, ciic\n"


def test_token_without_a_secret_key_says_how_to_set_one(mailmag):
    mailmag.ok("orgs", "add", "cef", "中国経済連合会")
    result = mailmag("orgs", "token", "cef", "--rotate", env={"MAILMAG_SECRET_KEY": None})
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: MAILMAG_SECRET_KEY is not set")
    # The failed rotation did not happen: the org's link version is unchanged.
    link = mailmag.ok("orgs", "token", "cef").stdout.strip()
    assert tokens.read(SECRET, "org-submit", link.rsplit("/", 1)[1]) == {"o": 1, "v": 1}


def test_demo_orgs_file_registers_the_council(session):
    path = Path(mailmag.__file__).parent / "data" / "demo_orgs.toml"
    added = orgs.add_file(session, path)
    assert [o.code for o in added] == [
        "cef", "hiroshima-u", "aist-chugoku", "chugoku-meti", "ciic", "smrj-chugoku", "cnbc", "soumu-chugoku",
    ]
    assert all(o.name and o.short_name and "@" in o.contact for o in added)
    assert session.get(Org, added[0].id).name == "中国経済連合会"
