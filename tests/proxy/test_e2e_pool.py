"""Upstream connection reuse over real sockets (docs/proxy.md, "upstream connection
reuse"): a leg whose transaction ended cleanly serves the next session; one the
upstream closed while parked is replaced once, and the client never notices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.peers import wait_until
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import rule, smtplib_send

MakeRaw = Callable[..., ScriptedUpstream]
RULES = [rule(recipient_encryption="none")]


def send(port: int, n: int) -> dict[str, tuple[int, bytes]]:
    return smtplib_send(port, "a@sender.example", [f"b{n}@rcpt.example"], starttls=False)


def test_the_next_session_reuses_the_parked_leg(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port, rules=RULES)
    for n in range(3):
        assert send(gate.port, n) == {}
    wait_until(lambda: len(upstream.messages) == 3, lambda: "three messages upstream", timeout=5)
    assert upstream.connections == 1
    assert len(gate.records("upstream_connected")) == 1


def test_a_leg_the_upstream_closed_while_parked_is_replaced_once(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    """The upstream takes one message per connection and answers the next MAIL with
    421 and closes: the second session's recipient goes out on a new connection."""
    upstream = make_scripted_upstream(messages_per_connection=1)
    gate = make_gate(upstream.port, rules=RULES)
    assert send(gate.port, 1) == {}
    assert send(gate.port, 2) == {}
    wait_until(lambda: len(upstream.messages) == 2, lambda: "both messages upstream", timeout=5)
    assert upstream.connections == 2
    assert [m.rcpt_tos for m in upstream.messages] == [
        [b"<b1@rcpt.example>"],
        [b"<b2@rcpt.example>"],
    ]
    assert gate.records("rcpt_rejected") == []
    assert [r["outcome"] for r in gate.records("transaction")] == ["delivered", "delivered"]
