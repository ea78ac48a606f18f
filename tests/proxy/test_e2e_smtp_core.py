"""End to end over real sockets: what the SMTP core's checks mean for what the upstream gets
(issue 6: line length with stuffing dots, the EHLO name in Received:, SMTPUTF8, write
back-pressure on the client leg)."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import TIMEOUT, RawClient, RawUpstream

MakeRaw = Callable[..., RawUpstream]


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
    make_gate: Any, make_raw_upstream: MakeRaw, length: int, legal: bool
) -> None:
    upstream = make_raw_upstream()
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
    make_gate: Any, make_raw_upstream: MakeRaw
) -> None:
    """Pipelined EHLOs, no reply read: once the proxy's write buffer is over its high-water
    mark it stops reading, so the client's sends block within a bound (kernel buffers plus
    smtpgate's 256 KiB read limit); without back-pressure it would read on forever,
    queueing every reply in memory. Then the client reads: every reply is there."""
    gate = make_gate(make_raw_upstream().port)
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
