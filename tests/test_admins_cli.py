"""`mailmag admins …`: accounts made at the terminal, passwords never shown, the audit log exported."""

from __future__ import annotations

import json

from sqlalchemy import create_engine, select

from mailmag.access import accounts
from mailmag.models import Admin

PASSWORD = "a long enough password"


def _hash_of(config_file, name: str) -> str:  # type: ignore[no-untyped-def]
    import tomllib

    url = tomllib.loads(config_file.read_text())["database"]["url"]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(Admin.password_hash).where(Admin.name == name)).scalar_one()
    finally:
        engine.dispose()


def test_add_list_reset_remove_and_audit(mailmag, config_file):
    added = mailmag.ok("admins", "add", "alice", "--email", "alice@example.jp", "--role", "owner",
                       "--password-stdin", input=PASSWORD + "\n")
    assert PASSWORD not in added.output and "/admin/" in added.output
    stored = _hash_of(config_file, "alice")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    mailmag.ok("admins", "add", "bob", "--email", "bob@example.jp", "--role", "editor", "--totp",
               "--password-stdin", input=PASSWORD + "\n")
    listed = json.loads(mailmag.ok("admins", "list", "--json").stdout)
    assert [(a["name"], a["role"], a["totp"]) for a in listed] == [
        ("alice", "owner", False), ("bob", "editor", True)]
    mailmag.ok("admins", "reset-password", "bob", "--password-stdin", input="another long one\n")
    assert _hash_of(config_file, "bob") != stored
    mailmag.ok("admins", "remove", "bob")
    assert [a["name"] for a in json.loads(mailmag.ok("admins", "list", "--json").stdout)] == ["alice"]
    log = json.loads(mailmag.ok("admins", "audit", "--json").stdout)
    assert [e["action"] for e in log] == ["admin.remove", "admin.reset-password", "admin.add", "admin.add"]
    assert all(PASSWORD not in json.dumps(e) for e in log)


def test_bad_input_is_one_line_and_changes_nothing(mailmag):
    add = ("admins", "add", "alice", "--email", "a@example.jp", "--role", "owner", "--password-stdin")
    short = mailmag(*add, input="short\n")
    assert short.exit_code == 1 and "at least" in short.stderr and "Traceback" not in short.output
    bad_name = mailmag("admins", "add", "a b", *add[3:], input=PASSWORD + "\n")
    assert bad_name.exit_code == 1 and "account name" in bad_name.stderr
    assert json.loads(mailmag.ok("admins", "list", "--json").stdout) == []
    mailmag.ok(*add, input=PASSWORD + "\n")
    last = mailmag("admins", "remove", "alice")
    assert last.exit_code == 1 and "last owner" in last.stderr
    missing = mailmag("admins", "reset-password", "nobody", "--password-stdin", input=PASSWORD + "\n")
    assert missing.exit_code == 1 and "no console account" in missing.stderr


def test_a_role_changes_at_the_terminal_and_the_last_owner_stays_one(mailmag, config_file):
    """helper-70: a role could only be changed by removing the account and adding it again (its
    audit entries then named someone gone, and its password had to be handed out again)."""
    for name, role in [("alice", "owner"), ("bob", "editor")]:
        mailmag.ok("admins", "add", name, "--email", f"{name}@example.jp", "--role", role,
                   "--password-stdin", input=PASSWORD + "\n")
    bob_hash = _hash_of(config_file, "bob")
    assert mailmag.ok("admins", "role", "bob", "owner").stdout == "bob is now owner (was editor)\n"
    assert mailmag.ok("admins", "role", "alice", "sender").stdout == "alice is now sender (was owner)\n"
    assert mailmag.ok("admins", "role", "alice", "sender").stdout == "alice is sender already\n"
    last = mailmag("admins", "role", "bob", "editor")
    assert last.exit_code == 1 and "bob is the last owner: add another owner before changing its role" in \
        last.stderr
    unknown = mailmag("admins", "role", "bob", "admin")
    assert unknown.exit_code == 2 and "'admin' is not one of" in unknown.stderr
    listed = json.loads(mailmag.ok("admins", "list", "--json").stdout)
    assert [(a["name"], a["role"]) for a in listed] == [("alice", "sender"), ("bob", "owner")]
    assert _hash_of(config_file, "bob") == bob_hash  # the same account: its password stays
    log = json.loads(mailmag.ok("admins", "audit", "--json").stdout)
    assert [e["detail"] for e in log if e["action"] == "admin.role"] == ["alice: owner → sender",
                                                                         "bob: editor → owner"]
    config_file.write_text(config_file.read_text() + "\n[admin]\nrequire_totp = true\n")
    warned = mailmag.ok("admins", "role", "alice", "owner")
    assert ("warning: [admin] require_totp asks owners and senders for a one-time code, and alice has "
            "none: it cannot log in until `mailmag admins totp alice`") in warned.stderr


def test_passwords_are_argon2_and_checked(session):
    admin = accounts.add(session, "carol", "c@example.jp", "sender", PASSWORD)
    assert accounts.verify_password(admin, PASSWORD)
    assert not accounts.verify_password(admin, PASSWORD + "x")
    assert not accounts.verify_password(None, PASSWORD)


def test_two_owners_demoted_at_once_leave_one_owner(services):
    """helper-72: two `admins role … editor` at the same moment on PostgreSQL each saw the other
    still an owner, and both went through: no owner was left to manage the console."""
    import threading

    with services.session() as session:
        for name in ("alice", "bob"):
            accounts.add(session, name, f"{name}@example.jp", "owner", PASSWORD)
    outcome: list[str] = []

    def demote_bob() -> None:
        try:
            with services.session() as session:
                accounts.set_role(session, "bob", "editor")
            outcome.append("bob demoted")
        except Exception as exc:  # the test reads what it was
            outcome.append(str(exc))

    with services.session() as first:
        accounts.set_role(first, "alice", "editor")
        second = threading.Thread(target=demote_bob)
        second.start()
        second.join(timeout=1)  # it must wait for this transaction, not read around it
        assert second.is_alive()
    second.join(timeout=30)
    assert outcome == ["bob is the last owner: add another owner before changing its role"]
    with services.session() as session:
        roles = [(a.name, a.role) for a in accounts.listing(session)]
    assert roles == [("alice", "editor"), ("bob", "owner")]


def test_an_account_removed_while_another_command_waits_is_gone_for_it(services):
    """helper-74: `admins role bob editor` waiting on `admins remove bob` died with a traceback
    (StaleDataError), and two `admins remove bob` at once both said removed, audited twice."""
    import threading

    with services.session() as session:
        for name in ("alice", "bob", "carol"):
            accounts.add(session, name, f"{name}@example.jp", "owner", PASSWORD)
    outcome: list[str] = []

    def then(change) -> threading.Thread:  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                with services.session() as session:
                    change(session)
                outcome.append("done")
            except Exception as exc:  # the test reads what it was
                outcome.append(str(exc))
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    with services.session() as first:
        accounts.remove(first, "bob")
        waiting = [then(lambda s: accounts.set_role(s, "bob", "editor")),
                   then(lambda s: accounts.remove(s, "bob"))]
        for thread in waiting:
            thread.join(timeout=1)
    for thread in waiting:
        thread.join(timeout=30)
    assert outcome == ["there is no console account 'bob': see which there are"] * 2
    with services.session() as session:
        assert [a.name for a in accounts.listing(session)] == ["alice", "carol"]
