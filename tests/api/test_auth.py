"""Who may use the API of a running ``smtpgate serve``: 401, 429 back-off, tokens, the
first administrator, and no secret in any record (docs/api.md, "Authentication")."""

from __future__ import annotations

import json
import time

from tests.api.helpers import ConsoleUnderTest

WHOAMI = "/api/v1/whoami"


def test_no_credentials_get_401_with_both_challenges(console: ConsoleUnderTest) -> None:
    with console.client() as client:
        reply = client.get(WHOAMI)
    assert reply.status_code == 401
    assert reply.json() == {"detail": "credentials required"}
    assert reply.headers["WWW-Authenticate"] == (
        'Basic realm="smtpgate", charset="UTF-8", Bearer realm="smtpgate"'
    )


def test_first_administrator_password_is_printed_once_and_works(
    console: ConsoleUnderTest,
) -> None:
    with console.admin() as client:
        assert client.get(WHOAMI).json() == {"name": "admin", "kind": "user", "role": "admin"}
    stderr = console.gate.stderr()
    assert stderr.count(console.admin_password) == 1
    stored = (console.gate.state_dir / "admins.json").read_text()
    assert console.admin_password not in stored
    assert json.loads(stored)["accounts"][0]["hash"].startswith("$argon2id$")
    assert (console.gate.state_dir / "admins.json").stat().st_mode & 0o777 == 0o600
    # A second start finds the administrator and prints no password.
    console.gate.stop()
    console.gate.stderr_file.unlink()
    console.gate.start()
    console.gate.wait_record("console_listening", count=2)
    assert "password" not in console.gate.stderr()
    with console.admin() as client:
        assert client.get(WHOAMI).status_code == 200


def test_back_off_per_user_name_after_three_failures(console: ConsoleUnderTest) -> None:
    console.add_user("alice", "alice-password-1")
    with console.client(("alice", "wrong-password")) as wrong:
        assert [wrong.get(WHOAMI).status_code for _ in range(3)] == [401, 401, 401]
        blocked = wrong.get(WHOAMI)
    assert blocked.status_code == 429
    assert blocked.headers["Retry-After"] == "1"
    assert blocked.json() == {"detail": "too many failed logins; try again in 1 s"}
    # The right password from another address is not looked at either: the name is locked.
    with console.client(("alice", "alice-password-1"), source="127.0.0.2") as right:
        assert right.get(WHOAMI).status_code == 429
        time.sleep(1.1)
        assert right.get(WHOAMI).status_code == 200
    # The success cleared the name; another user from the first address was never locked.
    with console.admin() as client:
        assert client.get(WHOAMI).status_code == 200


def test_back_off_doubles_and_is_per_address(console: ConsoleUnderTest) -> None:
    """Guessing different names from one address locks the address, for 1 s, then 2 s."""
    source = "127.0.0.3"
    for name in ("x1", "x2", "x3"):
        with console.client((name, "guess-guess-guess"), source=source) as client:
            assert client.get(WHOAMI).status_code == 401
    with console.client(("admin", console.admin_password), source=source) as client:
        first = client.get(WHOAMI)
        assert (first.status_code, first.headers["Retry-After"]) == (429, "1")
        time.sleep(1.1)
    with console.client(("x4", "guess-guess-guess"), source=source) as client:
        assert client.get(WHOAMI).status_code == 401  # the fourth failure: 2 s
        second = client.get(WHOAMI)
        assert (second.status_code, second.headers["Retry-After"]) == (429, "2")
    # Other addresses are not affected.
    with console.client(("admin", console.admin_password), source="127.0.0.4") as client:
        assert client.get(WHOAMI).status_code == 200
    blocked = console.gate.records("login_blocked")
    assert {r["address"] for r in blocked} == {source}
    failed = console.gate.records("login_failed")
    assert [r["user"] for r in failed] == ["x1", "x2", "x3", "x4"]


def test_tokens_from_the_command_work_until_removed(console: ConsoleUnderTest) -> None:
    token = console.add_token("deploy", role="auditor")
    assert token.startswith("smtpgate_")
    with console.client(token=token) as client:
        assert client.get(WHOAMI).json() == {"name": "deploy", "kind": "token", "role": "auditor"}
    with console.client(token=token + "x") as client:
        reply = client.get(WHOAMI)
        assert (reply.status_code, reply.json()) == (401, {"detail": "unknown token"})
    removed = console.command("admin", "remove", "deploy", "--token")
    assert removed.returncode == 0, removed.stderr
    with console.client(token=token) as client:
        assert client.get(WHOAMI).status_code == 401


def test_no_secret_in_any_record(console: ConsoleUnderTest) -> None:
    """Passwords and tokens, right or wrong, appear in no log record, audit record or file."""
    console.add_user("bob", "bob-password-12", role="auditor")
    token = console.add_token("ci")
    wrong = "wrong-secret-for-bob"
    console.secrets.append(wrong)
    with console.client(("bob", "bob-password-12")) as client:
        assert client.get(WHOAMI).status_code == 200
    with console.client(("bob", wrong)) as client:
        assert client.get(WHOAMI).status_code == 401
    with console.client(token=token) as client:
        assert client.get(WHOAMI).status_code == 200
    assert console.gate.records("login_failed")
    texts = {
        "log": console.gate.log_file.read_text(),
        "audit": (console.gate.state_dir / "audit.jsonl").read_text(),
        "accounts": (console.gate.state_dir / "admins.json").read_text(),
        "stdout": console.gate.stdout(),
    }
    for where, text in texts.items():
        for secret in console.secrets:
            assert secret not in text, f"a secret in the {where}"
    audit = [json.loads(line) for line in texts["audit"].splitlines()]
    assert [(r["action"], r["target"], r["via"]) for r in audit] == [
        ("admin.add", "admin", "serve"),
        ("admin.add", "bob", "command"),
        ("admin.token", "token:ci", "command"),
    ]
