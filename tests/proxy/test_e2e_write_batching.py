"""Writes per message on each leg, over real sockets and real TLS (docs/performance.md).

Every write on a TLS leg is a TLS record and a system call, the largest share of
the relay's CPU after the handshake. With PIPELINING on both legs a message needs
two writes on each: on the client leg the replies to MAIL, RCPT and DATA in one
and the final reply; on the upstream leg MAIL, RCPT and DATA in one, and the
``Received:`` header, the body and the final dot in one. The writes are counted
where the proxy makes them (:class:`Stream`, one transport write per call).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from smtpgate.proxy.stream import Stream
from tests.peers import wait_until
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import RawClient, insecure_client_context, rule, server_context

MakeScripted = Callable[..., ScriptedUpstream]

BODY = b"Subject: batching\r\n\r\n" + b"a line of the body\r\n" * 500


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Counter[Stream]:
    """Writes made on each of the proxy's streams (both legs), from now on."""
    counted: Counter[Stream] = Counter()
    write, writelines = Stream.write, Stream.writelines

    def counting_write(self: Stream, data: bytes) -> None:
        counted[self] += 1
        write(self, data)

    def counting_writelines(self: Stream, data: list[bytes | memoryview]) -> None:
        counted[self] += 1
        writelines(self, data)

    monkeypatch.setattr(Stream, "write", counting_write)
    monkeypatch.setattr(Stream, "writelines", counting_writelines)
    return counted


def send_pipelined(client: RawClient, n: int) -> None:
    """One message as a pipelining sender sends it: the envelope in one write, the
    body with its dot in another."""
    client.send(f"MAIL FROM:<a@sender.example>\r\nRCPT TO:<b{n}@rcpt.example>\r\nDATA\r\n".encode())
    assert [client.reply().code for _ in range(3)] == [250, 250, 354]
    client.send(BODY + b".\r\n")
    assert client.reply().code == 250


def test_two_writes_per_message_on_each_leg(
    make_gate: Any,
    make_scripted_upstream: MakeScripted,
    upstream_cert: Any,
    writes: Counter[Stream],
) -> None:
    upstream = make_scripted_upstream(starttls_context=server_context(upstream_cert))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="required")])
    with RawClient(gate.port) as client:
        assert client.ehlo().code == 250
        client.starttls(insecure_client_context())
        assert client.ehlo().code == 250
        send_pipelined(client, 0)  # opens the upstream leg: EHLO, STARTTLS, EHLO
        before = dict(writes)
        for n in range(1, 6):
            send_pipelined(client, n)
        after = dict(writes)
        assert client.cmd("QUIT").code == 221
    per_stream = sorted(after[stream] - before.get(stream, 0) for stream in after)
    assert per_stream == [10, 10]  # five messages, two writes each, on each leg
    wait_until(lambda: len(upstream.messages) == 6, lambda: "six messages upstream", timeout=5)
    for message in upstream.messages:
        assert message.wire.startswith(b"Received: from client.test ")
        assert message.wire.endswith(BODY)
        assert message.tls_version != "none"


def test_an_empty_body_still_gets_the_received_header(
    make_gate: Any, make_scripted_upstream: MakeScripted
) -> None:
    """The header waits for the body's first bytes; with none, it leaves with the dot."""
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="none")])
    with RawClient(gate.port) as client:
        assert client.ehlo().code == 250
        client.send(b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<b@rcpt.example>\r\nDATA\r\n")
        assert [client.reply().code for _ in range(3)] == [250, 250, 354]
        client.send(b".\r\n")
        assert client.reply().code == 250
    wait_until(lambda: len(upstream.messages) == 1, lambda: "the message upstream", timeout=5)
    wire = upstream.messages[0].wire
    assert wire.startswith(b"Received: from client.test ") and wire.endswith(b"\r\n")
    assert wire.count(b"\r\n") == 3  # the header's three lines, nothing after them


def test_the_received_header_follows_a_new_hello_within_the_session(
    make_gate: Any, make_scripted_upstream: MakeScripted
) -> None:
    """The header is made once per session and again when what it names changes."""
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="none")])
    with RawClient(gate.port) as client:
        assert client.ehlo("first.test").code == 250
        send_pipelined(client, 1)
        send_pipelined(client, 2)
        assert client.ehlo("second.test").code == 250
        send_pipelined(client, 3)
    wait_until(lambda: len(upstream.messages) == 3, lambda: "three messages upstream", timeout=5)
    names = [m.wire.split(b" ", 3)[2] for m in upstream.messages]
    assert names == [b"first.test", b"first.test", b"second.test"]
    assert all(b" with ESMTP\r\n\tid " in m.wire for m in upstream.messages)
