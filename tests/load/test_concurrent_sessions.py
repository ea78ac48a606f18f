"""Load, bounded: 1,000 concurrent TLS sessions for 60 s lose and duplicate nothing (issue 11).

smtpgate runs as ``smtpgate serve`` (its own process, as in production); the
clients and the receiving server share this test's event loop. Every client
holds one STARTTLS session open for the whole run and sends messages on it one
after another; the receiving server (STARTTLS, its certificate verified by
smtpgate under recipient encryption ``required``) keeps every message. At the
end, every message a client got ``250`` for is at the receiving server exactly
once, no client got anything else, and the proxy's own log shows the 1,000
sessions were open at the same time. Throughput and memory are the benchmark's
business (``make bench``: ``bench/proxy.py``, ``bench/idle.py``), not asserted here.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.peers.certs import TestPKI
from tests.peers.gate_config import gate_config, rule
from tests.peers.mailsender import OpenSession, OutgoingMessage, open_session
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.peers.smtpgate_proc import SmtpgateProcess

SESSIONS = 1000
SECONDS = 60.0
#: Sessions whose handshakes run at once while the load builds up.
OPENING = 100


def _raise_open_files(needed: int) -> None:
    """This process holds both ends' sockets (clients, receiving server); smtpgate,
    started afterwards, inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            pytest.fail(f"needs {needed} open files; the hard limit is {hard} (not root?)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _max_concurrent_sessions(records: list[dict[str, object]]) -> int:
    open_now = peak = 0
    for record in records:
        if record["event"] == "session_start":
            open_now += 1
            peak = max(peak, open_now)
        elif record["event"] == "session_end":
            open_now -= 1
    return peak


@pytest.mark.timeout(SECONDS + 300)
def test_thousand_concurrent_tls_sessions_for_a_minute_lose_and_duplicate_nothing(
    tmp_path: Path,
) -> None:
    _raise_open_files(4 * SESSIONS + 1024)
    asyncio.run(_run(tmp_path, TestPKI(tmp_path / "pki")))


async def _run(tmp_path: Path, pki: TestPKI) -> None:
    leaf = pki.loopback_leaf
    upstream = ScriptedUpstream(
        ehlo_keywords=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
        starttls_context=pki.server_context(leaf),
        idle_timeout=600,
    )
    port = await upstream.start()
    config = gate_config(
        port,
        rules=[rule(recipient_encryption="required")],
        profile={"ca_file": str(pki.ca_file)},
        server_cert=leaf,  # the clients trust the test CA
        # Every client comes from 127.0.0.1: the connection limits are not under test here.
        gateway={"max_connections": 2 * SESSIONS, "max_connections_per_client": 2 * SESSIONS},
    )
    gate = SmtpgateProcess(tmp_path / "gate", config)
    # Started from a thread: the upstream in this loop must answer while smtpgate starts.
    await asyncio.to_thread(gate.start)
    try:
        await _load(gate, upstream, pki)
    finally:
        await asyncio.to_thread(gate.stop)
        await upstream.stop()


async def _load(gate: SmtpgateProcess, upstream: ScriptedUpstream, pki: TestPKI) -> None:
    context = pki.client_context()
    context.check_hostname = False
    opening = asyncio.Semaphore(OPENING)
    all_open = asyncio.Event()
    opened = 0
    acknowledged: list[str] = []
    failures: list[str] = []

    async def client(number: int) -> None:
        nonlocal opened
        async with opening:
            session: OpenSession = await open_session(
                "127.0.0.1", gate.port(), starttls=context, require_starttls=True, timeout=120
            )
        opened += 1
        if opened == SESSIONS:
            all_open.set()
        try:
            await all_open.wait()  # the run starts when every session stands
            deadline = time.monotonic() + SECONDS
            sequence = 0
            while time.monotonic() < deadline:
                tag = f"{number}.{sequence}"
                sequence += 1
                message = OutgoingMessage(
                    f"client{number}@sender.test",
                    ["rcpt@receiver.test"],
                    f"Subject: load {tag}\r\nX-Load-Tag: {tag}\r\n\r\nbody {tag}\r\n".encode(),
                )
                result = await session.send(message)
                if result.accepted:
                    acknowledged.append(tag)
                else:
                    failures.append(f"{tag}: {result}")
            await session.quit()
        finally:
            session.close()

    await asyncio.wait_for(
        asyncio.gather(*(client(n) for n in range(SESSIONS))), timeout=SECONDS + 240
    )
    assert failures == []
    received = Counter(
        line.split(b":", 1)[1].strip().decode()
        for message in upstream.messages
        for line in message.content.split(b"\r\n")
        if line.startswith(b"X-Load-Tag:")
    )
    duplicated = [tag for tag, count in received.items() if count > 1]
    assert duplicated == []
    assert sorted(received) == sorted(acknowledged)  # nothing lost, nothing extra
    assert len(acknowledged) >= SESSIONS  # every session carried mail
    # The 1,000 sessions were open at the same time (the proxy's own records say so).
    assert _max_concurrent_sessions(await asyncio.to_thread(gate.records)) >= SESSIONS
