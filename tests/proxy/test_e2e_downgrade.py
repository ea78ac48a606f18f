"""Downgrade attacks on the upstream leg (issue 11 item 2): a man in the middle
between smtpgate and a real STARTTLS upstream strips STARTTLS from the EHLO
reply, answers it 454, or breaks the handshake (tests/peers/mitm.py); or
injects plaintext replies behind the upstream's 220 to STARTTLS.

Under recipient encryption ``required`` the client gets ``451 4.7.5`` and, on
the wire the man in the middle captured, not one byte of the envelope or the
body went out in clear: smtpgate said EHLO and STARTTLS (and QUIT) and nothing
else. Under ``preferred`` the message is delivered, and the log says the leg
was in clear and why (``upstream_fallback``, SPEC 2.2 / RFC 7435).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.peers.mitm import Attack, Mitm
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import (
    UPSTREAM_TLS_UNAVAILABLE,
    GatewayHarness,
    LoopThread,
    RawClient,
    insecure_client_context,
    rule,
    server_context,
)

MakeRaw = Callable[..., ScriptedUpstream]

SENDER = b"alice@secret-sender.example"
RECIPIENT = b"bob@secret-rcpt.example"
BODY = b"Subject: quarterly figures\r\n\r\nthe figures nobody may read in transit\r\n"
#: Pieces of the envelope and the body, any of which on the wire in clear is a leak.
SECRETS = (SENDER, RECIPIENT, b"MAIL FROM", b"RCPT TO", b"DATA", b"quarterly", b"nobody may read")

#: What a ``preferred`` leg's log says about each attack.
FALLBACK = {
    "strip": "upstream does not offer STARTTLS",
    "454": "STARTTLS refused: 454 4.7.0 TLS not available due to temporary reason",
    "break": "TLS handshake failed",
}
ATTACKS: list[Attack] = ["strip", "454", "break"]


@pytest.fixture
def make_mitm(loop: LoopThread) -> Iterator[Callable[[int, Attack], Mitm]]:
    started: list[Mitm] = []

    def make(upstream_port: int, attack: Attack) -> Mitm:
        mitm = Mitm(upstream_port, attack)
        loop.run(mitm.start())
        started.append(mitm)
        return mitm

    yield make
    for mitm in started:
        loop.run(mitm.stop())


def send(gate: GatewayHarness, *, client_tls: bool) -> tuple[str, str]:
    """One message; the replies to RCPT and (if it was taken) to the final dot."""
    with RawClient(gate.port) as client:
        client.ehlo()
        if client_tls:
            client.starttls(insecure_client_context())
            client.ehlo()
        assert client.cmd(b"MAIL FROM:<" + SENDER + b">").code == 250
        rcpt = str(client.cmd(b"RCPT TO:<" + RECIPIENT + b">"))
        final = ""
        if rcpt.startswith("250"):
            assert client.cmd("DATA").code == 354
            final = str(client.cmd(BODY + b"."))
        client.cmd("QUIT")
    return rcpt, final


def clear_lines(wire: bytes) -> list[bytes]:
    """The command lines smtpgate sent before any TLS (up to a ClientHello)."""
    hello = wire.find(b"\x16\x03")
    text = wire if hello < 0 else wire[:hello]
    return [line for line in text.split(b"\r\n") if line]


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("client_tls", [False, True], ids=["client-clear", "client-tls"])
def test_required_sends_nothing_in_clear_through_a_downgrading_mitm(
    make_gate: Any,
    make_scripted_upstream: MakeRaw,
    make_mitm: Callable[[int, Attack], Mitm],
    upstream_cert: Any,
    attack: Attack,
    client_tls: bool,
) -> None:
    upstream = make_scripted_upstream(starttls_context=server_context(upstream_cert))
    mitm = make_mitm(upstream.port, attack)
    gate = make_gate(mitm.port, rules=[rule(recipient_encryption="required")])
    rcpt, _ = send(gate, client_tls=client_tls)
    assert rcpt == UPSTREAM_TLS_UNAVAILABLE
    assert mitm.from_smtpgate, "smtpgate never connected"
    for wire in mitm.from_smtpgate:
        leaked = [s for s in SECRETS if s in bytes(wire)]
        assert leaked == [], f"{attack}: in clear on the wire: {leaked}"
        assert {line.split(b" ")[0] for line in clear_lines(bytes(wire))} <= {
            b"EHLO",
            b"STARTTLS",
            b"QUIT",
        }
    assert upstream.mail_commands == 0 and upstream.messages == []
    (refused,) = gate.wait_record("rcpt_rejected")
    assert refused["reply"] == 451
    summary = gate.transaction()
    assert (summary["outcome"], summary["upstream_tls"]) == ("rejected", "none")


@pytest.mark.parametrize("attack", ATTACKS)
def test_preferred_delivers_and_logs_the_clear_leg_and_why(
    make_gate: Any,
    make_scripted_upstream: MakeRaw,
    make_mitm: Callable[[int, Attack], Mitm],
    upstream_cert: Any,
    attack: Attack,
) -> None:
    upstream = make_scripted_upstream(starttls_context=server_context(upstream_cert))
    mitm = make_mitm(upstream.port, attack)
    gate = make_gate(mitm.port, rules=[rule(recipient_encryption="preferred")])
    rcpt, final = send(gate, client_tls=True)
    assert (rcpt, final) == ("250 2.1.5 Ok", "250 2.0.0 Ok queued")
    (received,) = upstream.messages
    assert received.tls_version == "none"
    summary = gate.transaction()
    assert (summary["outcome"], summary["upstream_tls"], summary["upstream_verify"]) == (
        "delivered",
        "none",
        "not-checked",
    )
    assert summary["upstream_fallback"].startswith(FALLBACK[str(attack)]), summary
    (connected,) = gate.wait_record("upstream_connected", lambda r: r["upstream_tls"] == "none")
    assert connected["upstream_fallback"] == summary["upstream_fallback"]
    assert connected["mode"] == "opportunistic"


def test_replies_injected_before_the_handshake_are_never_taken(
    make_gate: Any,
    make_scripted_upstream: MakeRaw,
    make_mitm: Callable[[int, Attack], Mitm],
    upstream_cert: Any,
) -> None:
    """STARTTLS response injection: plaintext after the 220 is thrown away, never read
    inside TLS as the answers to EHLO, MAIL or RCPT (RFC 3207 section 5)."""
    upstream = make_scripted_upstream(starttls_context=server_context(upstream_cert))
    mitm = make_mitm(upstream.port, "inject")
    gate = make_gate(mitm.port, rules=[rule(recipient_encryption="required")])
    assert send(gate, client_tls=False) == ("250 2.1.5 Ok", "250 2.0.0 Ok queued")
    (received,) = upstream.messages
    assert received.tls_version == "TLSv1.3"
    assert received.rcpt_tos == [b"<" + RECIPIENT + b">"]
    (wire,) = mitm.from_smtpgate
    assert [s for s in SECRETS if s in bytes(wire)] == []
    # smtpgate's EHLO after TLS was answered by the upstream, not by the injection.
    assert upstream.commands.count(b"EHLO mx.example.test") == 2


def test_the_relay_itself_is_faithful(
    make_gate: Any,
    make_scripted_upstream: MakeRaw,
    make_mitm: Callable[[int, Attack], Mitm],
    upstream_cert: Any,
) -> None:
    """The control: without an attack, the same path is TLS end to end and the man in
    the middle sees only ciphertext after STARTTLS."""
    upstream = make_scripted_upstream(starttls_context=server_context(upstream_cert))
    mitm = make_mitm(upstream.port, None)
    gate = make_gate(mitm.port, rules=[rule(recipient_encryption="required")])
    assert send(gate, client_tls=False) == ("250 2.1.5 Ok", "250 2.0.0 Ok queued")
    (received,) = upstream.messages
    assert received.tls_version == "TLSv1.3"
    (wire,) = mitm.from_smtpgate
    assert [s for s in SECRETS if s in bytes(wire)] == []
    assert clear_lines(bytes(wire)) == [b"EHLO mx.example.test", b"STARTTLS"]
