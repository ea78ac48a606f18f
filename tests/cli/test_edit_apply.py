"""A rule changed through a command reaches a running ``smtpgate serve``
(issue 8 item 4): the save signals the server through its pid file; the next
SMTP session has the new rule, a session in progress keeps the old ones."""

from __future__ import annotations

import json
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.peers.smtpgate_proc import SmtpgateProcess, smtpgate_binary
from tests.peers.upstream import AiosmtpdUpstream

CONFIG = """\
[gateway]
hostname = "mx.apply.test"
state_dir = "state"
[[policies]]
name = "inbound"
listen = "127.0.0.1:2525"
upstream = "127.0.0.1:2526"
proxy_action = "Inbound"
[[proxy_actions]]
name = "Inbound"
"""


def gate_config(upstream_port: int) -> dict[str, Any]:
    """One policy in front of ``upstream_port``, action ``Inbound`` without rules
    (SmtpgateProcess picks the listening port, the state_dir and the log)."""
    return {
        "policies": [
            {"name": "inbound", "upstream": f"127.0.0.1:{upstream_port}", "proxy_action": "Inbound"}
        ],
        "proxy_actions": [{"name": "Inbound"}],
    }


def smtpgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [smtpgate_binary(), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_a_rule_added_by_command_applies_to_the_next_session_only(tmp_path: Path) -> None:
    with AiosmtpdUpstream() as upstream:
        with SmtpgateProcess(tmp_path, gate_config(upstream.port)) as gate:
            assert gate.proc is not None
            pid_path = gate.state_dir / "smtpgate.pid"
            # written once the signal handlers are in place, just after "listening"
            deadline = time.monotonic() + 10
            while not pid_path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            pid_file = json.loads(pid_path.read_text())
            assert pid_file == {"pid": gate.proc.pid, "config": str(gate.config_file.resolve())}

            in_progress = smtplib.SMTP("127.0.0.1", gate.port(), timeout=10)
            assert in_progress.ehlo()[0] == 250
            assert in_progress.mail("a@other.example")[0] == 250

            added = smtpgate(
                "rules", "add", "-c", str(gate.config_file), "-a", "Inbound",
                "--name", "other-tls", "--sender", "other.example",
                "--sender-encryption", "required",
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            assert added.stdout.splitlines()[-1] == (
                f"signalled the running server (pid {gate.proc.pid}) to reload"
            )
            gate.wait_record("reloaded")

            new = smtplib.SMTP("127.0.0.1", gate.port(), timeout=10)
            new.ehlo()
            assert new.mail("a@other.example")[0] == 250
            assert new.rcpt("b@corp.example") == (
                530,
                b"5.7.0 Must issue a STARTTLS command first",
            )
            new.quit()
            rejected = gate.wait_record("rcpt_rejected")
            assert rejected[0]["rule"] == "1 (other-tls)"

            # the session that began before the save still runs under no rules
            assert in_progress.rcpt("b@corp.example")[0] == 250
            in_progress.data(b"Subject: old rules\r\n\r\nstill accepted\r\n")
            in_progress.quit()
            gate.transactions(rule="default")
        assert not pid_path.exists()  # removed when serve stops
    assert len(upstream.messages) == 1


def test_a_stale_pid_file_is_not_signalled(tmp_path: Path) -> None:
    path = tmp_path / "smtpgate.toml"
    path.write_text(CONFIG)  # nothing listens in this test
    state = tmp_path / "state"
    state.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (state / "smtpgate.pid").write_text(json.dumps({"pid": gone.pid, "config": str(path)}))
    out = smtpgate("rules", "add", "-c", str(path), "-a", "Inbound", "--sender", "x.example")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == (
        f"no running server found (removed stale pid file {state / 'smtpgate.pid'})"
    )
    assert not (state / "smtpgate.pid").exists()
    # a pid that now belongs to another program is stale too, and is not signalled
    other = subprocess.Popen(["sleep", "30"])
    try:
        (state / "smtpgate.pid").write_text(json.dumps({"pid": other.pid, "config": str(path)}))
        out = smtpgate("rules", "add", "-c", str(path), "-a", "Inbound", "--sender", "y.example")
        assert "removed stale pid file" in out.stdout
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_serve_runs_on_when_its_pid_file_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "state" / "smtpgate.pid").mkdir(parents=True)  # in the way, even for root
    with (
        AiosmtpdUpstream() as upstream,
        SmtpgateProcess(tmp_path, gate_config(upstream.port)) as gate,
    ):
        failed = gate.wait_record("pid_file_failed")[0]
        assert failed["file"] == str(gate.state_dir / "smtpgate.pid")
        assert failed["reason"] == "cannot write: Is a directory"
        with smtplib.SMTP("127.0.0.1", gate.port(), timeout=10) as client:
            assert client.ehlo()[0] == 250
        added = smtpgate(
            "rules", "add", "-c", str(gate.config_file), "-a", "Inbound", "--sender", "x.example"
        )
        assert added.stdout.splitlines()[-1] == (
            "no running server found (no pid file in state_dir)"
        )
    assert not list((tmp_path / "state").glob(".smtpgate.pid.*"))
