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

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.peers.gate_config import gate_config
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.proxy.helpers import LoopThread
from tests.reliability.load import (
    CLIENTS,
    MESSAGES,
    NOT_SERVED,
    SESSIONS,
    Load,
    MakeRaw,
    make_load,
    start_load,
    upstream_copies,
    wait_accepted,
)


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def started(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    loop: LoopThread,
    make_scripted_upstream: MakeRaw,
) -> tuple[SmtpgateProcess, ScriptedUpstream, Load]:
    """serve as one process, and as a supervisor of two workers whatever the cores:
    the signals reach the sessions through the supervisor there."""
    upstream = make_scripted_upstream()
    config = gate_config(
        upstream.port,
        general={"command_timeout": "10s", "data_timeout": "10s"},
        gateway={"workers": request.param},
    )
    gate = SmtpgateProcess(tmp_path, config).start()
    load = loop.run(make_load())
    return gate, upstream, load


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
