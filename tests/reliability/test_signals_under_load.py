"""SIGTERM, SIGHUP and SIGKILL in the middle of a bounded load against ``smtpgate serve``
(issue 11 item 1, docs/reliability.md).

Twelve clients (the project's sending MTA, :mod:`tests.peers.mailsender`) each open
sessions of three messages, one after the other, against the real process; every
message carries a marker, so each copy at the scripted upstream is counted. What may
happen to a message depends on the signal:

- SIGTERM: smtpgate stops accepting and finishes the sessions in progress, then exits 0.
  A message is either answered 250 and at the upstream once, or its connection was never
  served (refused, or closed before its EHLO was answered: nothing sent); nothing else.
- SIGHUP: nothing changes for the clients: every message 250, every one upstream once.
- SIGKILL: every message a client saw 250 for is at the upstream; none is there twice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smtpgate.smtp import UpstreamProtocolError
from tests.peers import wait_until
from tests.peers.gate_config import gate_config
from tests.peers.mailsender import OutgoingMessage, SendError, open_session
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.proxy.helpers import LoopThread

MakeRaw = Callable[..., ScriptedUpstream]

CLIENTS = 12
SESSIONS = 10  # per client, at most
MESSAGES = 3  # per session
#: The outcome of a message whose connection smtpgate never served.
NOT_SERVED = "not served"


@dataclass
class Load:
    """What every client saw, per message marker."""

    replies: dict[str, str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def acknowledged(self) -> set[str]:
        return {marker for marker, reply in self.replies.items() if reply.startswith("250")}


async def session(port: int, markers: list[str], load: Load) -> bool:
    """One session of ``len(markers)`` messages, sent by the project's sending MTA
    (:mod:`tests.peers.mailsender`); False when smtpgate did not serve it (refused, or
    closed before the session could start: nothing was sent)."""
    try:
        opened = await open_session("127.0.0.1", port, timeout=30)
    except (OSError, SendError, UpstreamProtocolError):
        for marker in markers:
            load.replies[marker] = NOT_SERVED
        return False
    for marker in markers:
        load.replies[marker] = "no reply"  # until one comes
    try:
        for marker in markers:
            result = await opened.send(message(marker))
            answer = result.end or result.data or (result.rcpts or [result.mail])[-1]
            load.replies[marker] = str(answer)
        await opened.quit()
    except (OSError, TimeoutError, UpstreamProtocolError):
        pass  # cut: what each message got is recorded
    finally:
        opened.close()
    return True


def message(marker: str) -> OutgoingMessage:
    body = f"Subject: load\r\nMessage-Id: <{marker}@client.test>\r\n\r\n".encode()
    return OutgoingMessage(
        "load@sender.example", [f"{marker}@rcpt.example"], body + b"some body text\r\n" * 50
    )


async def client(port: int, number: int, load: Load) -> None:
    for s in range(SESSIONS):
        if load.stop.is_set():
            return
        markers = [f"c{number}s{s}m{m}" for m in range(MESSAGES)]
        if not await session(port, markers, load):
            return  # smtpgate no longer serves: a real MTA would queue and retry later


async def run_load(port: int, load: Load) -> None:
    await asyncio.gather(*(client(port, n, load) for n in range(CLIENTS)))


def upstream_copies(upstream: ScriptedUpstream) -> Counter[str]:
    found: Counter[str] = Counter()
    for message in upstream.messages:
        marker = message.wire.partition(b"Message-Id: <")[2].partition(b"@")[0]
        found[marker.decode()] += 1
    return found


@pytest.fixture
def started(
    tmp_path: Path, loop: LoopThread, make_scripted_upstream: MakeRaw
) -> tuple[SmtpgateProcess, ScriptedUpstream, Load]:
    upstream = make_scripted_upstream()
    config = gate_config(upstream.port, general={"command_timeout": "10s", "data_timeout": "10s"})
    gate = SmtpgateProcess(tmp_path, config).start()
    load = loop.run(make_load())
    return gate, upstream, load


async def make_load() -> Load:
    return Load()  # its Event belongs to the loop thread


def start_load(loop: LoopThread, gate: SmtpgateProcess, load: Load) -> Any:
    return asyncio.run_coroutine_threadsafe(run_load(gate.port(), load), loop.loop)


def wait_accepted(upstream: ScriptedUpstream, count: int) -> None:
    wait_until(
        lambda: upstream.accepted >= count,
        lambda: f"{upstream.accepted} of {count} messages upstream",
        timeout=30,
    )


def test_sigterm_mid_load_finishes_sessions_in_progress_and_exits_0(
    loop: LoopThread, started: tuple[SmtpgateProcess, ScriptedUpstream, Load]
) -> None:
    gate, upstream, load = started
    assert gate.proc is not None
    running = start_load(loop, gate, load)
    try:
        wait_accepted(upstream, 40)
        gate.proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        returncode = gate.proc.wait(40)
        took = time.monotonic() - began
        running.result(60)
    finally:
        loop.loop.call_soon_threadsafe(load.stop.set)
        gate.stop()
    assert returncode == 0, gate.diagnostics()
    assert took < 30, "the drain is bounded (30 s)"
    (stopping,) = gate.records("stopping")
    assert stopping["sessions"] > 0, "SIGTERM came while sessions were in progress"
    outcomes = Counter(load.replies.values())
    assert set(outcomes) <= {"250 2.0.0 Ok queued", NOT_SERVED}, outcomes
    assert outcomes[NOT_SERVED] > 0, "the load went on past the stop"
    copies = upstream_copies(upstream)
    assert set(copies) == load.acknowledged()
    assert set(copies.values()) == {1}
    assert gate.records("stopped")


def test_sighup_mid_load_drops_no_session_and_loses_nothing(
    loop: LoopThread, started: tuple[SmtpgateProcess, ScriptedUpstream, Load]
) -> None:
    gate, upstream, load = started
    assert gate.proc is not None
    running = start_load(loop, gate, load)
    try:
        for reloads in (1, 2, 3):
            wait_accepted(upstream, 25 * reloads)
            gate.proc.send_signal(signal.SIGHUP)
            gate.wait_record("reloaded", count=reloads)
        running.result(120)
    finally:
        loop.loop.call_soon_threadsafe(load.stop.set)
    assert gate.stop() == 0, gate.diagnostics()
    assert len(load.replies) == CLIENTS * SESSIONS * MESSAGES
    assert Counter(load.replies.values()) == {"250 2.0.0 Ok queued": len(load.replies)}
    copies = upstream_copies(upstream)
    assert set(copies) == set(load.replies)
    assert set(copies.values()) == {1}
    # The reloads happened while sessions were open, not between them.
    assert len(gate.records("reloaded")) == 3
    assert upstream.accepted > 75


def test_sigkill_mid_load_loses_no_acknowledged_message(
    loop: LoopThread, started: tuple[SmtpgateProcess, ScriptedUpstream, Load]
) -> None:
    gate, upstream, load = started
    assert gate.proc is not None
    running = start_load(loop, gate, load)
    try:
        wait_accepted(upstream, 40)
        gate.proc.send_signal(signal.SIGKILL)
        gate.proc.wait(10)
        running.result(60)
    finally:
        loop.loop.call_soon_threadsafe(load.stop.set)
        gate.stop()
    copies = upstream_copies(upstream)
    assert load.acknowledged() <= set(copies), "a message answered 250 is not upstream"
    assert set(copies.values()) == {1}
    # The kill cut sessions in the middle: some messages got no reply at all.
    assert Counter(load.replies.values())["no reply"] > 0
