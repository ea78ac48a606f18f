"""Out of memory (issue 11 item 3): a real ``smtpgate serve`` whose address-space
limit is lowered from outside (``prlimit``, as systemd's ``LimitAS=`` sets it) to
what it has mapped, so no new mapping can be made.

Why it is deterministic: clients then open TLS sessions, each sending a message
and staying open, so each holds what it allocated (its TLS state, buffers, the
upstream leg); with no new mapping to be had, the memory already mapped runs out
after a bounded number of sessions, and the test goes on until several have
failed. Where they fail (the TLS layer's 256 KiB read buffer usually, smtpgate's
own code sometimes) may vary; what each failure looks like may not: closed
without a word where nothing can be said any more (inside TLS), otherwise
``421 4.3.0 Insufficient system resources, try again later``. The failures are
logged as ``out_of_memory`` records, one a second at most with how many there
were, no traceback reaches standard error, serve keeps running, and once the limit
is raised again it serves new sessions by itself; every message a client got
``250`` for is at the upstream."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path

from tests.peers.certs import client_context
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream

#: Sessions opened at most while the limit holds (each holds tens of KiB: memory
#: runs out long before), and how many failures to see before raising it again.
MAX_SESSIONS = 1000
FAILURES = 5
OUT_OF_MEMORY = b"421 4.3.0 Insufficient system resources, try again later\r\n"


def mapped_bytes(pid: int) -> int:
    """The process's address space now (what RLIMIT_AS is compared with)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def message(subject: str) -> bytes:
    return f"Subject: {subject}\r\n\r\nhello\r\n".encode()


def held_session(
    port: int, subject: str, *, tls: bool = True
) -> tuple[socket.socket | None, bytes]:
    """A TLS session that sends one message and stays open: (its socket, and the
    last thing smtpgate said: the reply to the final dot, or the reply that broke
    off, or b"" when it closed without one)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn: socket.socket = sock

    def say(line: bytes, expect: bytes) -> bytes:
        if line:
            conn.sendall(line)
        try:
            answer = conn.recv(4096)
        except OSError:
            answer = b""
        if not answer.startswith(expect):
            raise _BrokeOff(answer)
        return answer

    try:
        say(b"", b"220 ")
        say(b"EHLO client.example\r\n", b"250")
        say(b"STARTTLS\r\n", b"220 ")
        try:
            conn = client_context(verify=False).wrap_socket(sock)
        except OSError:
            raise _BrokeOff(b"") from None
        say(b"EHLO client.example\r\n", b"250")
        say(b"MAIL FROM:<a@sender.example>\r\n", b"250")
        say(b"RCPT TO:<b@rcpt.example>\r\n", b"250")
        say(b"DATA\r\n", b"354")
        return conn, say(message(subject) + b".\r\n", b"250")
    except _BrokeOff as broke:
        conn.close()
        return None, broke.answer


class _BrokeOff(Exception):
    def __init__(self, answer: bytes) -> None:
        super().__init__(answer)
        self.answer = answer


def test_out_of_memory_is_logged_and_smtpgate_recovers(
    tmp_path: Path, upstream: AiosmtpdUpstream
) -> None:
    config = {
        "gateway": {"max_connections": 10_000, "max_connections_per_client": 10_000},
        "policies": [{"name": "p", "upstream": f"127.0.0.1:{upstream.port}"}],
    }
    with SmtpgateProcess(tmp_path, config) as gate:
        assert gate.proc is not None
        port = gate.port()
        held, accepted, failures = [], [], []
        first, _ = held_session(port, "before")
        assert first is not None
        held.append(first)
        accepted.append("before")
        # Every process that takes connections (each worker, or serve itself).
        limits = {pid: resource.prlimit(pid, resource.RLIMIT_AS) for pid in gate.serving_pids()}
        for pid, (_, hard) in limits.items():
            resource.prlimit(pid, resource.RLIMIT_AS, (mapped_bytes(pid), hard))
        started = time.monotonic()
        try:
            for n in range(MAX_SESSIONS):
                sock, answer = held_session(port, f"m{n}")
                if sock is not None:
                    held.append(sock)
                    accepted.append(f"m{n}")
                else:
                    failures.append(answer)
                    if len(failures) == FAILURES:
                        break
        finally:
            for pid, limit in limits.items():
                resource.prlimit(pid, resource.RLIMIT_AS, limit)
            elapsed = time.monotonic() - started
            for sock in held:
                sock.close()
        assert len(failures) == FAILURES, f"memory never ran out in {MAX_SESSIONS} sessions"
        assert set(failures) <= {b"", OUT_OF_MEMORY}, failures
        gate.wait_record("out_of_memory")
        records = gate.records("out_of_memory")
        assert {r["where"] for r in records} <= {"transport", "session", "accept"}
        # One record a second at most per process, each with how many failed since the
        # one before.
        assert len(records) <= (int(elapsed) + 1) * len(limits)
        assert sum(r["count"] for r in records) >= 1
        # Some session ended for want of memory (its record may reach the log after
        # its client saw the close).
        gate.wait_record("session_end", lambda r: r["reason"] == "out_of_memory")
        assert "Traceback" not in gate.stderr(), gate.stderr()[-2000:]
        assert gate.proc.poll() is None

        # Memory to be had again: served by itself, and nothing a client got 250 for lost.
        last, reply = held_session(port, "after")
        assert last is not None, reply
        last.close()
        accepted.append("after")
        received = upstream.wait_messages(len(accepted))
        subjects = sorted(
            m.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in received
        )
        assert subjects == sorted(accepted)
