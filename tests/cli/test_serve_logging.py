"""``smtpgate serve`` and SIGHUP for ``[logging]``: logrotate without ``copytruncate``,
format / file / addresses applied, a file that cannot be opened refused."""

from __future__ import annotations

import signal
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpgate.config import toml_writer
from tests.peers import complete_lines
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream


@pytest.fixture
def upstream() -> Iterator[AiosmtpdUpstream]:
    server = AiosmtpdUpstream(data_reply="250 2.0.0 Ok: queued as 7QUEUE").start()
    yield server
    server.stop()


@pytest.fixture
def gate(tmp_path: Path, upstream: AiosmtpdUpstream) -> Iterator[SmtpgateProcess]:
    config = {
        "logging": {"file": "smtpgate.log", "format": "json"},
        "policies": [{"name": "p", "upstream": f"127.0.0.1:{upstream.port}"}],
    }
    with SmtpgateProcess(tmp_path, config) as proc:
        yield proc


def send(gate: SmtpgateProcess, subject: str) -> None:
    content = f"Message-ID: <{subject}@sender.example>\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", gate.port(), timeout=10) as client:
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], content) == {}


def sighup(gate: SmtpgateProcess, config: dict[str, Any]) -> None:
    gate.config = config
    gate.text = toml_writer.dumps(config)
    gate.config_file.write_text(gate.text)
    assert gate.proc is not None
    gate.proc.send_signal(signal.SIGHUP)


def test_sighup_reopens_the_log_file_that_logrotate_renamed(gate: SmtpgateProcess) -> None:
    send(gate, "before")
    gate.wait_record("session_end")
    rotated = gate.log_file.with_name("smtpgate.log.1")
    gate.log_file.rename(rotated)
    sighup(gate, gate.config)  # configuration unchanged
    gate.wait_record("reloaded")  # in a new file at the configured path
    send(gate, "after")
    gate.wait_record("session_end")
    (after,) = gate.transactions(message_id="<after@sender.example>")
    assert after["upstream_reply"] == "250 2.0.0 Ok: queued as 7QUEUE"
    assert [r["event"] for r in gate.records()] == [
        "reloaded",
        "session_start",
        "upstream_connected",
        "transaction",
        "session_end",
    ]
    # Nothing more went to the renamed file once the new one was open.
    old = rotated.read_text().splitlines()
    assert '"event":"transaction"' in old[-2] and '"event":"session_end"' in old[-1]


def test_sighup_applies_logging_format_file_and_addresses(gate: SmtpgateProcess) -> None:
    send(gate, "json")
    (first,) = gate.transactions()
    assert (first["sender"], first["recipients"]) == ("a@sender.example", ["b@rcpt.example"])
    config = dict(gate.config)
    config["logging"] = {"file": "text.log", "format": "text", "addresses": False}
    old_file = gate.log_file
    sighup(gate, config)
    text_log = gate.workdir / "text.log"
    wait_for_line(text_log, " reloaded ")
    send(gate, "text")
    line = wait_for_line(text_log, " transaction ")
    assert " sender_domain=sender.example recipient_domains=rcpt.example " in line
    assert " message_id=<text@sender.example> " in line
    assert " sender=" not in line and " recipients=" not in line
    assert line.endswith(' upstream_reply="250 2.0.0 Ok: queued as 7QUEUE"')
    assert "reloaded" not in old_file.read_text()


def test_sighup_refuses_a_log_file_it_cannot_open(gate: SmtpgateProcess) -> None:
    config = dict(gate.config)
    missing = gate.workdir / "no-such-dir" / "smtpgate.log"
    config["logging"] = {"file": str(missing), "format": "text"}
    sighup(gate, config)
    (failed,) = gate.wait_record("reload_failed")
    assert failed["reason"] == f"logging.file: {missing}: cannot open: No such file or directory"
    # Nothing of the new configuration applies: still JSON, still here.
    send(gate, "still-json")
    gate.transactions(message_id="<still-json@sender.example>")


def test_sighup_keeps_logging_where_it_did_when_the_file_cannot_be_reopened(
    gate: SmtpgateProcess,
) -> None:
    path = gate.log_file
    rotated = path.with_name("smtpgate.log.1")
    path.rename(rotated)
    path.mkdir()  # something that is not a file now sits at the configured path
    sighup(gate, gate.config)
    gate.log_file = rotated
    (failed,) = gate.wait_record("log_reopen_failed")
    assert (failed["file"], failed["reason"]) == (
        str(path),
        "cannot open: Is a directory",
    )
    gate.wait_record("reloaded")
    send(gate, "kept")
    gate.transactions(message_id="<kept@sender.example>")


def wait_for_line(path: Path, needle: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in complete_lines(path):
            if needle in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line with {needle!r} in {path} after {timeout}s")
