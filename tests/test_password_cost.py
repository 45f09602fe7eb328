"""The production cost of console passwords, which the in-process tests do not pay.

conftest.py hashes with argon2-cffi's CHEAPEST profile in the test processes (the real cost
was a fifth of the suite's time); a real `mailmag` process must still use the full one.
"""

from __future__ import annotations

import os
import subprocess
import sys

from clocked import mailmag_command
from conftest import SECRET, one_database
from test_admins_cli import PASSWORD, _hash_of


@one_database
def test_a_real_process_hashes_at_the_full_argon2id_cost(mailmag, config_file):
    done = subprocess.run(
        mailmag_command("--config", str(config_file), "admins", "add", "dave", "--email", "d@example.jp",
                        "--role", "owner", "--password-stdin"),
        input=PASSWORD + "\n", env={**os.environ, "MAILMAG_SECRET_KEY": SECRET}, capture_output=True,
        text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert _hash_of(config_file, "dave").startswith("$argon2id$v=19$m=65536,t=3,p=4$")


def test_no_command_pays_for_a_login_before_it_starts():
    """The unknown-name hash was made at import: 0.15–0.2 s of CPU before every `mailmag` command,
    worker and process had done anything."""
    probe = ("import argon2\n"
             "made = []\n"
             "real = argon2.PasswordHasher.hash\n"
             "argon2.PasswordHasher.hash = lambda self, *a, **k: made.append(1) or real(self, *a, **k)\n"
             "import mailmag.cli, mailmag.web\n"
             "print(len(made))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
