"""``smtpgate admin`` against real files (docs/api.md, "Accounts")."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from smtpgate.console.admins import AdminStore, Role
from tests.peers.smtpgate_proc import smtpgate_binary


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "smtpgate.toml"
    path.write_text('[gateway]\nstate_dir = "state"\n')
    return path


def admin(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [smtpgate_binary(), "admin", *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_add_passwd_list_remove(config: Path) -> None:
    state = config.parent / "state"
    added = admin(config, "add", "alice", "--password-stdin", stdin="first-password\n")
    assert (added.returncode, added.stdout) == (0, "added user alice (admin)\n")
    added = admin(
        config, "add", "bob", "--role", "auditor", "--password-stdin", stdin="bobs-password\n"
    )
    assert added.returncode == 0, added.stderr
    store = AdminStore(state)
    assert store.verify_password("alice", "first-password") is not None
    assert (state / "admins.json").stat().st_mode & 0o777 == 0o600
    changed = admin(config, "passwd", "alice", "--password-stdin", stdin="second-password\n")
    assert changed.returncode == 0, changed.stderr
    assert store.verify_password("alice", "first-password") is None
    account = store.verify_password("alice", "second-password")
    assert account is not None and account.role is Role.ADMIN
    listed = json.loads(admin(config, "list", "--json").stdout)
    assert [(a["name"], a["kind"], a["role"]) for a in listed] == [
        ("alice", "user", "admin"),
        ("bob", "user", "auditor"),
    ]
    table = admin(config, "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "KIND", "ROLE", "CREATED"]
    removed = admin(config, "remove", "bob")
    assert (removed.returncode, removed.stdout) == (0, "removed user bob\n")
    text = (state / "admins.json").read_text()
    assert "password" not in text and "bob" not in text
    audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert [(r["action"], r["target"], r["via"], r["address"]) for r in audit] == [
        ("admin.add", "alice", "command", "local"),
        ("admin.add", "bob", "command", "local"),
        ("admin.passwd", "alice", "command", "local"),
        ("admin.remove", "bob", "command", "local"),
    ]
    assert all(r["who"].startswith("cli:") for r in audit)


def test_refusals_name_the_reason_and_change_nothing(config: Path) -> None:
    short = admin(config, "add", "alice", "--password-stdin", stdin="short\n")
    assert (short.returncode, short.stderr) == (
        1,
        "error: a password needs at least 12 characters\n",
    )
    assert not (config.parent / "state" / "admins.json").exists()
    assert (
        admin(config, "add", "alice", "--password-stdin", stdin="long-enough-1\n").returncode == 0
    )
    twice = admin(config, "add", "alice", "--password-stdin", stdin="long-enough-2\n")
    assert twice.stderr == "error: a user named 'alice' exists (change it with admin passwd)\n"
    last = admin(config, "remove", "alice")
    assert last.stderr == "error: 'alice' is the last user with the admin role; add another first\n"
    unknown = admin(config, "passwd", "zed", "--password-stdin", stdin="long-enough-3\n")
    assert unknown.stderr == "error: no user named 'zed' (there are: alice)\n"
    bad_name = admin(config, "token", "no spaces")
    assert bad_name.returncode == 1
    assert "a name is 1 to 64 letters" in bad_name.stderr


def test_a_token_is_printed_once_and_stored_hashed(config: Path) -> None:
    made = admin(config, "token", "deploy", "--role", "auditor")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("smtpgate_") and len(token) > 40
    assert made.stderr == "token deploy (auditor); shown only now, stored hashed:\n"
    state = config.parent / "state"
    assert token not in (state / "admins.json").read_text()
    account = AdminStore(state).verify_token(token)
    assert account is not None and (account.principal, account.role) == (
        "token:deploy",
        Role.AUDITOR,
    )
    assert token not in admin(config, "list", "--json").stdout
    assert token not in (state / "audit.jsonl").read_text()
