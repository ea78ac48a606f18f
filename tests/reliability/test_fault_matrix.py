"""The fault matrix (issue 11 item 1, docs/reliability.md): every way the upstream or the
client can fail at every stage of a transaction, over real sockets and real TLS.

Each case sends one message and asserts, for that message, one of the two outcomes
that lose nothing: the client got ``250`` and the upstream holds exactly one copy, or
the client got the exact reply the docs promise at the stage that failed and the
upstream holds no complete copy. After each fault the same gateway delivers the next
message (nothing is left broken: no stuck session, no poisoned pooled connection).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from smtpgate.reserved_port import ReservedPort
from smtpgate.smtp import Reply
from tests.peers import wait_until
from tests.peers.scripted_upstream import Fault, ScriptedUpstream
from tests.proxy.helpers import (
    NO_VALID_RECIPIENTS,
    UPSTREAM_LOST,
    UPSTREAM_TLS_UNAVAILABLE,
    UPSTREAM_UNAVAILABLE,
    GatewayHarness,
    RawClient,
    insecure_client_context,
    rule,
    server_context,
)

MakeRaw = Callable[..., ScriptedUpstream]

#: Short timeouts, so that every stall below runs into one within the test's time.
#: Every timeout short, the handshake's too (it has its own setting since issue 11 item 3).
FAST = {"command_timeout": "2s", "data_timeout": "2s", "tls_handshake_timeout": "2s"}
PREFERRED = [rule(recipient_encryption="preferred")]
REQUIRED = [rule(recipient_encryption="required")]
CLIENT_TIMEOUT = "421 4.4.2 Timeout, closing connection"

#: The steps of one transaction, in order, as :func:`send_one` names them.
STEPS = ("EHLO", "MAIL", "RCPT", "DATA", "dot")


def body(marker: str, lines: int = 3) -> bytes:
    """A message that carries ``marker`` (so each copy upstream can be counted)."""
    return (
        f"Subject: fault matrix\r\nMessage-Id: <{marker}@client.test>\r\n\r\n".encode()
        + b"a line of the body, long enough to take some room on the wire\r\n" * lines
    )


def send_one(port: int, marker: str, *, lines: int = 3) -> list[tuple[str, Reply]]:
    """EHLO, MAIL, RCPT, DATA, body and dot, stopping at the first reply that is not the
    one that lets the transaction go on; returns ``(step, reply)`` for every step taken."""
    taken: list[tuple[str, Reply]] = []
    expected = {"EHLO": 250, "MAIL": 250, "RCPT": 250, "DATA": 354}
    with RawClient(port) as client:
        for step in STEPS:
            if step == "EHLO":
                answer = client.ehlo()
            elif step == "MAIL":
                answer = client.cmd("MAIL FROM:<a@sender.example>")
            elif step == "RCPT":
                answer = client.cmd(f"RCPT TO:<{marker}@rcpt.example>")
            elif step == "DATA":
                answer = client.cmd("DATA")
            else:
                client.send(body(marker, lines))
                answer = client.cmd(b".")
            taken.append((step, answer))
            if answer.code != expected.get(step, 250):
                break
        with contextlib.suppress(OSError):
            client.cmd("QUIT")
    return taken


def copies(upstream: ScriptedUpstream, marker: str) -> int:
    """Complete messages the upstream accepted that carry ``marker``."""
    return sum(f"<{marker}@client.test>".encode() in m.wire for m in upstream.messages)


def assert_delivered_once(
    taken: list[tuple[str, Reply]], upstream: ScriptedUpstream, marker: str
) -> None:
    assert [step for step, _ in taken] == list(STEPS), taken
    assert taken[-1][1].code == 250, taken
    wait_until(lambda: copies(upstream, marker) >= 1, lambda: f"{marker} upstream", timeout=5)
    assert copies(upstream, marker) == 1


def assert_refused(
    taken: list[tuple[str, Reply]],
    upstream: ScriptedUpstream,
    marker: str,
    step: str,
    reply: str,
) -> None:
    """The client got exactly ``reply`` at ``step``, and the upstream accepted no copy;
    refused before the dot, the upstream did not even see an end of data."""
    assert (taken[-1][0], str(taken[-1][1])) == (step, reply), taken
    assert copies(upstream, marker) == 0
    if step != "dot":
        for transcript in upstream.transcripts:
            assert b"\r\n.\r\n" not in bytes(transcript).partition(b"DATA\r\n")[2]


def then_delivers(gate: GatewayHarness, upstream: ScriptedUpstream, marker: str) -> None:
    """With the upstream behaving again, the same gateway delivers the next message."""
    upstream.faults = {}
    upstream.dot_reply = b"250 2.0.0 Ok queued\r\n"
    upstream.drop_after_body_bytes = None
    assert_delivered_once(send_one(gate.port, marker), upstream, marker)


# --- the upstream fails -----------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamCase:
    """``faults`` of the scripted upstream, the rules, and what the client must get:
    ``step`` and ``reply`` (None: ``250`` at the dot, one copy upstream)."""

    faults: Mapping[str, Fault | bytes]
    step: str | None = None
    reply: str | None = None
    rules: list[dict[str, Any]] = field(default_factory=lambda: PREFERRED)
    options: Mapping[str, Any] = field(default_factory=dict)


UPSTREAM_CASES: dict[str, UpstreamCase] = {
    # Closes the connection without a word.
    "close-at-connect": UpstreamCase({"connect": Fault.CLOSE}, "RCPT", UPSTREAM_UNAVAILABLE),
    "close-after-greeting": UpstreamCase({"greeting": Fault.CLOSE}, "RCPT", UPSTREAM_UNAVAILABLE),
    "close-at-EHLO": UpstreamCase({"EHLO": Fault.CLOSE}, "RCPT", UPSTREAM_UNAVAILABLE),
    "close-at-STARTTLS": UpstreamCase({"STARTTLS": Fault.CLOSE}, "RCPT", UPSTREAM_UNAVAILABLE),
    "close-at-STARTTLS-required": UpstreamCase(
        {"STARTTLS": Fault.CLOSE}, "RCPT", UPSTREAM_UNAVAILABLE, REQUIRED
    ),
    # preferred: a handshake failure means a new connection in clear (SPEC 2.2).
    "close-in-handshake": UpstreamCase({"handshake": Fault.CLOSE}),
    "close-in-handshake-required": UpstreamCase(
        {"handshake": Fault.CLOSE}, "RCPT", UPSTREAM_TLS_UNAVAILABLE, REQUIRED
    ),
    "close-at-MAIL": UpstreamCase({"MAIL": Fault.CLOSE}, "RCPT", UPSTREAM_LOST),
    "close-at-RCPT": UpstreamCase({"RCPT": Fault.CLOSE}, "RCPT", UPSTREAM_LOST),
    "close-at-DATA": UpstreamCase({"DATA": Fault.CLOSE}, "DATA", UPSTREAM_LOST),
    "close-mid-body": UpstreamCase(
        {}, "dot", UPSTREAM_LOST, options={"drop_after_body_bytes": 20_000}
    ),
    "close-after-dot": UpstreamCase({"dot": Fault.CLOSE}, "dot", UPSTREAM_LOST),
    # Answers with a refusal: connection-level ones become 451 4.4.1 (always temporary,
    # docs/proxy.md); the transaction's own are relayed verbatim.
    "421-greeting": UpstreamCase(
        {"connect": b"421 4.3.2 Not now\r\n"}, "RCPT", UPSTREAM_UNAVAILABLE
    ),
    "554-greeting": UpstreamCase(
        {"connect": b"554 5.3.2 No service\r\n"}, "RCPT", UPSTREAM_UNAVAILABLE
    ),
    # EHLO refused: HELO, which offers no STARTTLS: clear under preferred.
    "550-EHLO": UpstreamCase({"EHLO": b"550 5.5.1 No EHLO\r\n"}),
    "550-EHLO-required": UpstreamCase(
        {"EHLO": b"550 5.5.1 No EHLO\r\n"}, "RCPT", UPSTREAM_TLS_UNAVAILABLE, REQUIRED
    ),
    "421-EHLO-and-HELO": UpstreamCase(
        {"EHLO": b"421 4.3.2 Busy\r\n", "HELO": b"421 4.3.2 Busy\r\n"},
        "RCPT",
        UPSTREAM_UNAVAILABLE,
    ),
    "454-STARTTLS": UpstreamCase({"STARTTLS": b"454 4.7.0 TLS not available\r\n"}),
    "454-STARTTLS-required": UpstreamCase(
        {"STARTTLS": b"454 4.7.0 TLS not available\r\n"}, "RCPT", UPSTREAM_TLS_UNAVAILABLE, REQUIRED
    ),
    "554-STARTTLS": UpstreamCase({"STARTTLS": b"554 5.7.0 No TLS for you\r\n"}),
    "554-STARTTLS-required": UpstreamCase(
        {"STARTTLS": b"554 5.7.0 No TLS for you\r\n"}, "RCPT", UPSTREAM_TLS_UNAVAILABLE, REQUIRED
    ),
    "451-MAIL": UpstreamCase(
        {"MAIL": b"451 4.3.0 Sender check failed\r\n"}, "RCPT", "451 4.3.0 Sender check failed"
    ),
    "550-MAIL": UpstreamCase(
        {"MAIL": b"550 5.7.1 Sender refused\r\n"}, "RCPT", "550 5.7.1 Sender refused"
    ),
    "450-RCPT": UpstreamCase(
        {"RCPT": b"450 4.2.1 Mailbox busy\r\n"}, "RCPT", "450 4.2.1 Mailbox busy"
    ),
    "550-RCPT": UpstreamCase(
        {"RCPT": b"550 5.1.1 No such user\r\n"}, "RCPT", "550 5.1.1 No such user"
    ),
    "451-DATA": UpstreamCase({"DATA": b"451 4.3.0 Not now\r\n"}, "DATA", "451 4.3.0 Not now"),
    "554-DATA": UpstreamCase(
        {"DATA": b"554 5.5.1 No valid recipients\r\n"}, "DATA", "554 5.5.1 No valid recipients"
    ),
    "451-dot": UpstreamCase({"dot": b"451 4.3.0 Queue full\r\n"}, "dot", "451 4.3.0 Queue full"),
    "554-dot": UpstreamCase({"dot": b"554 5.7.1 Spam\r\n"}, "dot", "554 5.7.1 Spam"),
    # Stalls past the timeout (FAST: 2 s).
    "stall-at-connect": UpstreamCase({"connect": Fault.STALL}, "RCPT", UPSTREAM_UNAVAILABLE),
    "stall-at-EHLO": UpstreamCase({"EHLO": Fault.STALL}, "RCPT", UPSTREAM_UNAVAILABLE),
    "stall-at-STARTTLS": UpstreamCase({"STARTTLS": Fault.STALL}, "RCPT", UPSTREAM_UNAVAILABLE),
    # preferred: the handshake times out, then a new connection in clear.
    "stall-in-handshake": UpstreamCase({"handshake": Fault.STALL}),
    "stall-in-handshake-required": UpstreamCase(
        {"handshake": Fault.STALL}, "RCPT", UPSTREAM_TLS_UNAVAILABLE, REQUIRED
    ),
    "stall-at-MAIL": UpstreamCase({"MAIL": Fault.STALL}, "RCPT", UPSTREAM_LOST),
    "stall-at-RCPT": UpstreamCase({"RCPT": Fault.STALL}, "RCPT", UPSTREAM_LOST),
    "stall-at-DATA": UpstreamCase({"DATA": Fault.STALL}, "DATA", UPSTREAM_LOST),
    "stall-mid-body": UpstreamCase({"body": Fault.STALL}, "dot", UPSTREAM_LOST),
    "stall-after-dot": UpstreamCase({"dot": Fault.STALL}, "dot", UPSTREAM_LOST),
}


@pytest.mark.parametrize("case", list(UPSTREAM_CASES), ids=str)
def test_upstream_fault(
    make_gate: Any, make_scripted_upstream: MakeRaw, upstream_cert: Any, case: str
) -> None:
    spec = UPSTREAM_CASES[case]
    upstream = make_scripted_upstream(
        starttls_context=server_context(upstream_cert), faults=spec.faults, **spec.options
    )
    gate = make_gate(upstream.port, rules=spec.rules, general=FAST)
    # Big enough that a drop in the middle of the body happens in the middle.
    taken = send_one(gate.port, "m1", lines=2000)
    if spec.step is None:
        assert_delivered_once(taken, upstream, "m1")
    else:
        assert spec.reply is not None
        assert_refused(taken, upstream, "m1", spec.step, spec.reply)
        if spec.step == "RCPT" and spec.reply[0] == "4":
            # Nothing was accepted: DATA has nothing to send.
            assert len(taken) == 3
    then_delivers(gate, upstream, "m2")


def test_upstream_refuses_the_connection(make_gate: Any) -> None:
    with ReservedPort() as closed:  # bound, never listening: the connect is refused
        gate = make_gate(closed.port, general=FAST)
        taken = send_one(gate.port, "m1")
        assert (taken[-1][0], str(taken[-1][1])) == ("RCPT", UPSTREAM_UNAVAILABLE)
    record = gate.wait_record("rcpt_rejected")[0]
    assert record["reply"] == 451
    with RawClient(gate.port) as client:  # DATA after the refused recipient
        client.ehlo()
        client.cmd("MAIL FROM:<a@sender.example>")
        client.cmd("RCPT TO:<b@rcpt.example>")
        assert str(client.cmd("DATA")) == NO_VALID_RECIPIENTS


def test_a_pooled_connection_that_died_while_parked(
    make_gate: Any, make_scripted_upstream: MakeRaw, loop: Any
) -> None:
    """The upstream cuts its idle connections (as on its own idle timeout) while the
    leg is parked in the pool: the next message goes out on a new connection, once."""
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="none")])
    assert_delivered_once(send_one(gate.port, "m1"), upstream, "m1")
    wait_until(lambda: len(gate.records("session_end")) == 1, lambda: "session 1 ended", timeout=5)
    loop.run(upstream.hang_up())
    assert_delivered_once(send_one(gate.port, "m2"), upstream, "m2")
    assert upstream.connections == 2
    assert [r["outcome"] for r in gate.records("transaction")] == ["delivered", "delivered"]


# --- the client goes away -----------------------------------------------------------------------


def client_hello() -> bytes:
    """The first bytes of a real TLS ClientHello (what a client sends first)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = insecure_client_context().wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


#: How far a client gets before it disconnects (a plain close, FIN).
CLIENT_STAGES = (
    "connect",
    "greeting",
    "EHLO",
    "STARTTLS",
    "mid-handshake",
    "after-handshake",
    "MAIL",
    "RCPT",
    "DATA",
    "mid-body",
    "mid-body-tls",
    "after-dot",
)


def walk_until(client: RawClient, stage: str) -> None:
    """Run the client's side of a transaction up to ``stage``, then return (to close)."""
    if stage == "greeting":
        return
    client.ehlo()
    if stage == "EHLO":
        return
    tls = stage in ("STARTTLS", "mid-handshake", "after-handshake", "mid-body-tls")
    if tls:
        assert client.cmd("STARTTLS").code == 220
        if stage == "STARTTLS":
            return
        if stage == "mid-handshake":
            hello = client_hello()
            client.send(hello[: len(hello) // 2])
            return
        client.sock = insecure_client_context().wrap_socket(client.sock)
        client.ehlo()
        if stage == "after-handshake":
            return
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    if stage == "MAIL":
        return
    assert client.cmd("RCPT TO:<m1@rcpt.example>").code == 250
    if stage == "RCPT":
        return
    assert client.cmd("DATA").code == 354
    if stage == "DATA":
        return
    if stage in ("mid-body", "mid-body-tls"):
        client.send(body("m1", lines=2000))
        return
    client.send(body("m1") + b".\r\n")


@pytest.mark.parametrize("stage", CLIENT_STAGES)
def test_client_disconnects(
    make_gate: Any, make_scripted_upstream: MakeRaw, upstream_cert: Any, stage: str
) -> None:
    upstream = make_scripted_upstream(starttls_context=server_context(upstream_cert))
    gate = make_gate(upstream.port, rules=PREFERRED)
    if stage == "connect":
        with socket.create_connection(("127.0.0.1", gate.port)):
            pass  # closed before the greeting was read
    else:
        client = RawClient(gate.port)
        walk_until(client, stage)
        client.close()
    (end,) = gate.wait_record("session_end")
    if stage == "after-dot":
        # The end of data had arrived: the message goes out, exactly once, although its
        # 250 reaches nobody (the sender retries: a duplicate beats a loss, RFC 5321 6.1).
        wait_until(lambda: copies(upstream, "m1") == 1, lambda: "m1 upstream", timeout=5)
        assert gate.transaction()["outcome"] == "delivered"
    else:
        assert copies(upstream, "m1") == 0
        if stage in ("DATA", "mid-body", "mid-body-tls"):
            assert gate.transaction()["outcome"] == "aborted"
            for transcript in upstream.transcripts:
                assert b"\r\n.\r\n" not in bytes(transcript).partition(b"DATA\r\n")[2]
    assert end["event"] == "session_end"
    then_delivers(gate, upstream, "m2")


@pytest.mark.parametrize("stage", ["RCPT", "mid-body"])
def test_client_stalls_past_the_timeout(
    make_gate: Any, make_scripted_upstream: MakeRaw, stage: str
) -> None:
    """A client that stops talking (between commands: command_timeout; in the body:
    data_timeout) is told so and cut; the upstream transaction is abandoned."""
    upstream = make_scripted_upstream()
    # No minimum data rate: a stalled body would otherwise end by whichever of its
    # budget and data_timeout runs out first, which depends on how late the first body
    # bytes came (tests/proxy/test_e2e_limits.py covers the rate).
    gate = make_gate(upstream.port, general=FAST | {"min_data_rate": 0})
    with RawClient(gate.port) as client:
        walk_until(client, stage)
        assert str(client.reply()) == CLIENT_TIMEOUT
    assert gate.wait_record("session_end")[0]["reason"] == "timeout"
    assert copies(upstream, "m1") == 0
    for transcript in upstream.transcripts:
        assert b"\r\n.\r\n" not in bytes(transcript).partition(b"DATA\r\n")[2]
    then_delivers(gate, upstream, "m2")


def test_clients_that_vanish_mid_handshake_do_not_hold_up_others(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    """Twenty clients stop in the middle of their TLS handshakes and stay connected:
    others are served meanwhile, and the half-open ones end at the timeout."""
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port, general=FAST)
    hello = client_hello()
    stuck = []
    try:
        for _ in range(20):
            client = RawClient(gate.port)
            stuck.append(client)
            client.ehlo()
            assert client.cmd("STARTTLS").code == 220
            client.send(hello[:40])
        assert_delivered_once(send_one(gate.port, "m1"), upstream, "m1")
        # The half-open handshakes end at the timeout (FAST: 2 s), not with the clients.
        gate.wait_record("session_end", count=21, timeout=15)
    finally:
        for client in stuck:
            client.close()


# --- BDAT (RFC 3030): the same guarantees when the client sends chunks -------------------------

CHUNKING = ("PIPELINING", "8BITMIME", "CHUNKING")
NO_CHUNKING = ("PIPELINING", "8BITMIME")


def send_one_bdat(port: int, marker: str, *, lines: int = 2000) -> list[tuple[str, Reply]]:
    """EHLO, MAIL, RCPT, then the message in two BDAT chunks (``chunk``, then ``last``),
    each awaited; stops at the first reply that is not ``250``."""
    content = body(marker, lines)
    half = len(content) // 2
    taken: list[tuple[str, Reply]] = []
    with RawClient(port) as client:
        for step in ("EHLO", "MAIL", "RCPT", "chunk", "last"):
            if step == "EHLO":
                answer = client.ehlo()
            elif step == "MAIL":
                answer = client.cmd("MAIL FROM:<a@sender.example>")
            elif step == "RCPT":
                answer = client.cmd(f"RCPT TO:<{marker}@rcpt.example>")
            elif step == "chunk":
                client.send(b"BDAT %d\r\n" % half + content[:half])
                answer = client.reply("BDAT")
            else:
                client.send(b"BDAT %d LAST\r\n" % (len(content) - half) + content[half:])
                answer = client.reply("BDAT")
            taken.append((step, answer))
            if answer.code != 250:
                break
        with contextlib.suppress(OSError):
            client.cmd("QUIT")
    return taken


@dataclass(frozen=True)
class BdatCase:
    """The upstream's keywords, faults and options, and what the client must get: the
    reply at one of ``steps`` (None: ``250`` to the LAST chunk, one copy upstream)."""

    keywords: tuple[str, ...]
    faults: Mapping[str, Fault | bytes] = field(default_factory=dict)
    steps: tuple[str, ...] = ()
    reply: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


BDAT_CASES: dict[str, BdatCase] = {
    "relayed": BdatCase(CHUNKING),
    "converted": BdatCase(NO_CHUNKING),
    # Relayed as BDAT: a chunk's 250 waits for the upstream's, so a loss shows at that chunk.
    "close-mid-chunk": BdatCase(
        CHUNKING, steps=("chunk",), reply=UPSTREAM_LOST, options={"drop_after_body_bytes": 20_000}
    ),
    "refuse-chunk": BdatCase(
        CHUNKING, {"chunk": b"452 4.3.1 Out of space\r\n"}, ("chunk",), "452 4.3.1 Out of space"
    ),
    "close-after-last": BdatCase(CHUNKING, {"dot": Fault.CLOSE}, ("last",), UPSTREAM_LOST),
    "stall-after-last": BdatCase(CHUNKING, {"dot": Fault.STALL}, ("last",), UPSTREAM_LOST),
    "451-last": BdatCase(
        CHUNKING, {"dot": b"451 4.3.0 Queue full\r\n"}, ("last",), "451 4.3.0 Queue full"
    ),
    "554-last": BdatCase(CHUNKING, {"dot": b"554 5.7.1 Spam\r\n"}, ("last",), "554 5.7.1 Spam"),
    # Converted to DATA: the upstream says nothing before the dot, so a loss shows at the
    # end of whichever client chunk comes after smtpgate noticed it.
    "converted-451-DATA": BdatCase(
        NO_CHUNKING, {"DATA": b"451 4.3.0 Not now\r\n"}, ("chunk",), "451 4.3.0 Not now"
    ),
    "converted-close-mid-body": BdatCase(
        NO_CHUNKING,
        steps=("chunk", "last"),
        reply=UPSTREAM_LOST,
        options={"drop_after_body_bytes": 20_000},
    ),
    "converted-close-after-dot": BdatCase(
        NO_CHUNKING, {"dot": Fault.CLOSE}, ("last",), UPSTREAM_LOST
    ),
}


@pytest.mark.parametrize("case", list(BDAT_CASES), ids=str)
def test_upstream_fault_during_bdat(
    make_gate: Any, make_scripted_upstream: MakeRaw, upstream_cert: Any, case: str
) -> None:
    spec = BDAT_CASES[case]
    upstream = make_scripted_upstream(
        starttls_context=server_context(upstream_cert),
        ehlo_keywords=spec.keywords,
        faults=spec.faults,
        **spec.options,
    )
    gate = make_gate(upstream.port, rules=PREFERRED, general=FAST)
    taken = send_one_bdat(gate.port, "m1")
    if spec.reply is None:
        assert [step for step, _ in taken] == ["EHLO", "MAIL", "RCPT", "chunk", "last"], taken
        assert taken[-1][1].code == 250
        assert copies(upstream, "m1") == 1
    else:
        step, reply = taken[-1]
        assert step in spec.steps and str(reply) == spec.reply, taken
        assert copies(upstream, "m1") == 0
    # Nothing is left broken: the next message goes through, by DATA and by BDAT.
    upstream.faults = {}
    upstream.drop_after_body_bytes = None
    then_delivers(gate, upstream, "m2")
    taken = send_one_bdat(gate.port, "m3")
    assert taken[-1][0] == "last" and taken[-1][1].code == 250, taken
    assert copies(upstream, "m3") == 1


@pytest.mark.parametrize("keywords", [CHUNKING, NO_CHUNKING], ids=["relayed", "converted"])
def test_client_disconnects_mid_chunk(
    make_gate: Any,
    make_scripted_upstream: MakeRaw,
    upstream_cert: Any,
    keywords: tuple[str, ...],
) -> None:
    upstream = make_scripted_upstream(
        starttls_context=server_context(upstream_cert), ehlo_keywords=keywords
    )
    gate = make_gate(upstream.port, rules=PREFERRED)
    content = body("m1", lines=2000)
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<m1@rcpt.example>").code == 250
        client.send(b"BDAT %d LAST\r\n" % len(content) + content[: len(content) // 2])
    assert gate.transaction()["outcome"] == "aborted"
    assert copies(upstream, "m1") == 0
    for transcript in upstream.transcripts:  # no end of data, no LAST chunk reached it
        assert b"\r\n.\r\n" not in bytes(transcript).partition(b"DATA\r\n")[2]
        assert b"LAST" not in bytes(transcript)
    then_delivers(gate, upstream, "m2")
