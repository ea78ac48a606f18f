"""End to end over real sockets: what the SMTP core's checks mean for what the upstream gets
(issue 6: line length with stuffing dots, the EHLO name in Received:, SMTPUTF8, write
back-pressure on the client leg)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from smtpgate.proxy.session import _token
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import TIMEOUT, RawClient

MakeRaw = Callable[..., ScriptedUpstream]


def open_transaction(port: int, ehlo: str = "client.test") -> RawClient:
    client = RawClient(port)
    assert client.ehlo(ehlo).code == 250
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
    assert client.cmd("DATA").code == 354
    return client


# --- RFC 5321 4.5.3.1.6: the stuffing dot is not part of the line ---------------------------


@pytest.mark.parametrize(("length", "legal"), [(998, True), (999, False)])
def test_dot_line_at_the_limit_is_relayed_stuffed(
    make_gate: Any, make_scripted_upstream: MakeRaw, length: int, legal: bool
) -> None:
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port)
    line = b"." + b"d" * (length - 1)  # the content line, CRLF not counted
    with open_transaction(gate.port) as client:
        final = client.cmd(b"Subject: dots\r\n\r\n." + line + b"\r\n.")
        if legal:
            assert str(final) == "250 2.0.0 Ok queued"
        else:
            assert str(final) == "550 5.6.0 Message line too long"
        assert client.cmd("QUIT").code == 221
    if legal:
        (delivered,) = upstream.messages
        # On the wire upstream: stuffed again, 999 octets plus CRLF.
        assert delivered.wire.endswith(b"\r\nSubject: dots\r\n\r\n." + line + b"\r\n")
    else:
        assert upstream.messages == []


# --- write back-pressure on the client leg ---------------------------------------------------


def test_a_client_that_does_not_read_its_replies_is_not_read_either(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    """Pipelined EHLOs, no reply read: once the proxy's write buffer is over its high-water
    mark it stops reading, so the client's sends block within a bound (kernel buffers plus
    smtpgate's 256 KiB read limit); without back-pressure it would read on forever,
    queueing every reply in memory. Then the client reads: every reply is there
    (max_commands raised: that limit is not what this is about)."""
    gate = make_gate(make_scripted_upstream().port, general={"max_commands": 10_000_000})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Small kernel buffers on our side keep the bound tight and the test fast.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect(("127.0.0.1", gate.port))
    with sock:
        ehlo = b"EHLO " + b"c" * 60 + b"." + b"d" * 60 + b".example\r\n"  # 136 octets
        sock.setblocking(False)
        batch = ehlo * 256
        sent, cap = 0, 64 * 1024 * 1024
        while sent < cap:
            try:
                sent += sock.send(batch[sent % len(batch) :])  # lines continue where it stopped
            except BlockingIOError:
                # Blocked: is the proxy still reading (it would on main), or has it stopped?
                _, writable, _ = select.select([], [sock], [], 2.0)
                if not writable:
                    break
        assert sent < cap, "the proxy kept reading a client that never read its replies"
        # Now read, and meanwhile finish the last line and say QUIT: every EHLO is answered.
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        received = bytearray()

        def read_to_quit() -> None:
            while not received.endswith(b"221 2.0.0 Bye\r\n"):
                data = sock.recv(1 << 20)
                if not data:
                    return
                received.extend(data)

        reader = threading.Thread(target=read_to_quit)
        reader.start()
        sock.sendall(ehlo[sent % len(ehlo) :] + b"QUIT\r\n" if sent % len(ehlo) else b"QUIT\r\n")
        reader.join(TIMEOUT)
        commands = -(-sent // len(ehlo))
    assert received.startswith(b"220 ") and received.endswith(b"221 2.0.0 Bye\r\n")
    assert received.count(b"\r\n250 ") == commands  # one reply per EHLO, none lost


def test_a_client_that_never_takes_its_replies_is_cut_after_command_timeout(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    """The proxy does not wait forever for a client to read: after command_timeout of not
    taking replies the session ends (no "421 4.4.2 Timeout", which is for a client that
    sends nothing, and would be queued behind what this one is not reading).
    max_commands is raised, so that limit is not what ends it."""
    gate = make_gate(
        make_scripted_upstream().port, general={"command_timeout": "1s", "max_commands": 10_000_000}
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect(("127.0.0.1", gate.port))
    with sock:
        sock.setblocking(False)
        batch = b"EHLO client.example\r\n" * 4096
        sent, cap = 0, 16 * 1024 * 1024
        with contextlib.suppress(ConnectionError):
            while sent < cap:
                try:
                    sent += sock.send(batch[sent % len(batch) :])
                except BlockingIOError:
                    _, writable, _ = select.select([], [sock], [], 2.0)
                    if not writable:
                        break
        assert sent < cap, "the proxy kept reading a client that never read its replies"
        (end,) = gate.wait_record("session_end")
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        received = bytearray()
        with contextlib.suppress(ConnectionError):
            while data := sock.recv(1 << 20):
                received += data
    assert end["session"] == gate.records("session_start")[0]["session"]
    assert b"421 4.4.2" not in received


# --- the EHLO name in the Received: header upstream -----------------------------------------


def test_hostile_ehlo_names_are_refused_and_never_reach_the_upstream(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        assert str(client.cmd(b"EHLO x\r.\rMAIL")) == "501 5.5.4 Syntax: EHLO hostname"
        assert str(client.cmd(b"HELO a\x00b")) == "501 5.5.4 Syntax: HELO hostname"
        assert str(client.cmd("MAIL FROM:<a@sender.example>")) == ("503 5.5.1 Send HELO/EHLO first")
        assert client.ehlo("[IPv6:2001:db8::25]").code == 250
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: s\r\n\r\nbody\r\n.").code == 250
        assert client.cmd("QUIT").code == 221
    (delivered,) = upstream.messages
    header, found, _ = delivered.wire.partition(b"\r\nSubject: s\r\n")
    assert header.startswith(b"Received: from [IPv6:2001:db8::25] ([127.0.0.1])\r\n\tby ")
    assert found and header.isascii() and b"\x00" not in header
    # Every CR is followed by LF and every LF preceded by CR: no bare line ends anywhere.
    (transcript,) = upstream.transcripts
    assert transcript.count(b"\r") == transcript.count(b"\n") == transcript.count(b"\r\n")


def test_received_header_tokens_are_header_safe_whatever_they_hold() -> None:
    assert _token("mx.example.test") == "mx.example.test"
    assert _token("[IPv6:2001:db8::1]") == "[IPv6:2001:db8::1]"
    assert _token("TLS_AES_256_GCM_SHA384") == "TLS_AES_256_GCM_SHA384"
    assert _token("x\r.\rMAIL") == "x?.?MAIL"
    assert _token("a\x00b (c); d\r\n\tX-Injected: 1") == "a?b?c?d?X-Injected:?1"
    assert _token("bücher") == "b?cher"
    assert _token("") == "?"


# --- MAIL/RCPT parameters the upstream does not offer ----------------------------------------


@pytest.mark.parametrize(
    "sender", ["<a@sender.example>", "<ü@sender.example>"], ids=["ascii", "utf8"]
)
def test_smtputf8_envelope_is_refused_for_an_upstream_without_smtputf8(
    make_gate: Any, make_scripted_upstream: MakeRaw, sender: str
) -> None:
    upstream = make_scripted_upstream(ehlo_keywords=("PIPELINING", "8BITMIME"))
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        assert client.ehlo().code == 250
        assert client.cmd(f"MAIL FROM:{sender} SMTPUTF8").code == 250
        refusal = "553 5.6.7 SMTPUTF8 is required, but the upstream server does not offer it"
        assert str(client.cmd("RCPT TO:<b@rcpt.example>")) == refusal
        assert str(client.cmd("RCPT TO:<c@rcpt.example>")) == refusal
        assert str(client.cmd("DATA")) == "554 5.5.1 No valid recipients"
        # Without SMTPUTF8 the same session relays as usual.
        assert client.cmd("RSET").code == 250
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert client.cmd("QUIT").code == 221
    mails = [c for c in upstream.commands if c.upper().startswith(b"MAIL")]
    assert mails == [b"MAIL FROM:<a@sender.example>"]
    rejected = gate.wait_record("rcpt_rejected", count=2)
    assert [(r["reply"], r["reason"]) for r in rejected] == [
        (553, "upstream does not offer SMTPUTF8")
    ] * 2


def test_smtputf8_envelope_is_relayed_to_an_upstream_with_smtputf8(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream(ehlo_keywords=("PIPELINING", "8BITMIME", "SMTPUTF8"))
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        assert client.ehlo().code == 250
        assert client.cmd("MAIL FROM:<ü@sender.example> SMTPUTF8").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert client.cmd("QUIT").code == 221
    assert "MAIL FROM:<ü@sender.example> SMTPUTF8".encode() in upstream.commands


def test_parameters_the_upstream_does_not_offer_are_left_out_and_logged(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    # An upstream without DSN and without 8BITMIME: the DSN parameters are left out
    # (RFC 3461 4), BODY=8BITMIME too and the body is relayed as it is (docs/proxy.md).
    upstream = make_scripted_upstream(ehlo_keywords=("PIPELINING", "SIZE 1000000"))
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        assert client.ehlo().code == 250
        mail = "MAIL FROM:<a@sender.example> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=q1"
        assert client.cmd(mail).code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example> NOTIFY=NEVER").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd("Subject: s\r\n\r\nb\xc3\xa4dy\r\n.".encode("latin-1")).code == 250
        assert client.cmd("QUIT").code == 221
    assert upstream.commands[1:3] == [
        b"MAIL FROM:<a@sender.example> SIZE=100",
        b"RCPT TO:<b@rcpt.example>",
    ]
    (delivered,) = upstream.messages
    assert delivered.wire.endswith(b"\r\nSubject: s\r\n\r\nb\xc3\xa4dy\r\n")
    dropped = gate.wait_record("parameter_dropped", count=4)
    assert [(r["parameter"], r["reason"]) for r in dropped] == [
        ("BODY", "upstream does not offer 8BITMIME"),
        ("RET", "upstream does not offer DSN"),
        ("ENVID", "upstream does not offer DSN"),
        ("NOTIFY", "upstream does not offer DSN"),
    ]
    assert all(r["session"] == dropped[0]["session"] for r in dropped)
