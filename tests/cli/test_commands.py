"""The commands of SPEC section 6, run as a user runs them: as processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from smtpgate.reserved_port import ReservedPort
from tests.peers import complete_lines

SMTPGATE = str(Path(sys.executable).with_name("smtpgate"))


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMTPGATE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def rules_test(
    path: str, sender: str, recipient: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    """``smtpgate rules test`` for the action of :data:`CONFIG`."""
    return run(
        "rules",
        "test",
        "--config",
        path,
        "--action",
        "Inbound.Custom",
        "--from",
        sender,
        "--to",
        recipient,
        *flags,
    )


#: Ports handed out by :func:`free_port`, held until the test that asked ends.
HELD_PORTS = contextlib.ExitStack()


@pytest.fixture(autouse=True)
def release_held_ports() -> Iterator[None]:
    """Autouse here and in every module that imports it with :func:`free_port`."""
    with HELD_PORTS:
        yield


def free_port() -> int:
    """A loopback port that stays reserved (:class:`ReservedPort`) until the test ends,
    so nothing else can take it before the serve under test binds it."""
    return HELD_PORTS.enter_context(ReservedPort()).port


CONFIG = """\
[gateway]
hostname = "mx.cli.test"
state_dir = "state"
[logging]
file = "smtpgate.log"
[[policies]]
name = "inbound"
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{upstream}"
proxy_action = "Inbound.Custom"
[[proxy_actions]]
name = "Inbound.Custom"
[proxy_actions.starttls]
require_tls_for_envelope = {envelope}
[[proxy_actions.starttls.rules]]
sender = "partner.example"
sender_encryption = "required"
recipient_encryption = "required"
[[proxy_actions.starttls.rules]]
recipient = "*.legacy.example"
recipient_encryption = "none"
"""


def write_config(tmp_path: Path, *, envelope: bool = False, listen: int = 0) -> Path:
    path = tmp_path / "smtpgate.toml"
    path.write_text(
        CONFIG.format(
            listen=listen or free_port(), upstream=free_port(), envelope=str(envelope).lower()
        )
    )
    return path


def test_check_accepts_a_valid_file(tmp_path: Path) -> None:
    result = run("check", "--config", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_names_the_key_path_and_exits_1(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    text = path.read_text()
    path.write_text(text.replace('sender = "partner.example"', 'sender = "bad..example"'))
    result = run("check", "--config", str(path))
    assert result.returncode == 1
    assert "proxy_actions[1].starttls.rules[1].sender" in result.stderr
    path.write_text(text.replace('proxy_action = "Inbound.Custom"', 'proxy_action = "Missing"'))
    dangling = run("check", "--config", str(path))
    assert dangling.returncode == 1
    assert "policies[1].proxy_action" in dangling.stderr and "Missing" in dangling.stderr


def test_serve_with_bad_config_listens_on_nothing(tmp_path: Path) -> None:
    with ReservedPort() as reserved:  # nobody else listens there meanwhile
        listen = reserved.port
        path = write_config(tmp_path, listen=listen)
        path.write_text(path.read_text().replace('recipient_encryption = "none"', "x = 1"))
        result = run("serve", "--config", str(path), timeout=20)
        assert result.returncode == 1
        assert "proxy_actions[1].starttls.rules[2].x" in result.stderr
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", listen)) != 0


def test_rules_test_reports_rule_and_both_legs(tmp_path: Path) -> None:
    path = str(write_config(tmp_path))
    clear = rules_test(path, "alice@Partner.Example", "bob@corp.example", "--json")
    assert clear.returncode == 0, clear.stderr
    decision = json.loads(clear.stdout)["results"][0]
    assert decision["rule"] == "1"
    assert decision["client_leg"].startswith("530 at RCPT")
    assert decision["upstream_mode"] == "required"
    legacy = json.loads(
        rules_test(path, "x@other.example", "t@a.legacy.example", "--client-tls", "--json").stdout
    )["results"][0]
    assert legacy["rule"] == "2" and legacy["upstream_mode"] == "none"
    fallback = rules_test(path, "x@other.example", "t@legacy.example")
    assert "default" in fallback.stdout and "STARTTLS if offered" in fallback.stdout


def test_rules_test_with_envelope_switch_rejects_at_mail(tmp_path: Path) -> None:
    path = str(write_config(tmp_path, envelope=True))
    report = json.loads(rules_test(path, "a@partner.example", "b@x.example", "--json").stdout)
    result = report["results"][0]
    assert result["client_leg"].startswith("530 at MAIL FROM")


def test_ca_export_prints_the_ca_that_signed_the_server_certificate(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert run("ca", "init", "--config", str(path)).returncode == 0  # as serve's first start
    result = run("ca", "export", "--config", str(path))
    assert result.returncode == 0, result.stderr
    ca = x509.load_pem_x509_certificate(result.stdout.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    again = run("ca", "export", "--config", str(path))
    assert again.stdout == result.stdout


def _wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _records(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in complete_lines(log) if line.strip()]


def test_serve_sighup_reloads_and_sigterm_lets_a_session_finish(tmp_path: Path) -> None:
    reserved = ReservedPort()
    listen = reserved.port
    path = write_config(tmp_path, listen=listen)
    log = tmp_path / "smtpgate.log"
    proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(path)], stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: any(r["event"] == "listening" for r in _records(log)))
        reserved.release()
        client = smtplib.SMTP("127.0.0.1", listen, timeout=10)
        assert client.ehlo()[0] == 250
        # SIGHUP with the envelope switch turned on: new sessions see it, this one keeps going.
        path.write_text(
            path.read_text().replace(
                "require_tls_for_envelope = false", "require_tls_for_envelope = true"
            )
        )
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: any(r["event"] == "reloaded" for r in _records(log)))
        second = smtplib.SMTP("127.0.0.1", listen, timeout=10)
        second.ehlo()
        code, _ = second.mail("a@partner.example")
        assert code == 530
        second.quit()
        # SIGTERM: stop accepting, but the open session still gets its answers.
        proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: any(r["event"] == "stopping" for r in _records(log)))
        assert client.noop()[0] == 250
        client.quit()
        assert proc.wait(20) == 0
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", listen)) != 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
