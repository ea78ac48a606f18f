"""BDAT / CHUNKING and BINARYMIME (RFC 3030) end to end: a real gateway, TLS on
both legs (STARTTLS), the recording upstream.

The client's chunks are relayed as BDAT when the upstream offers CHUNKING and
converted to DATA (dot-stuffed) when it does not; a BINARYMIME message goes only
to an upstream with BINARYMIME and CHUNKING (``554 5.6.3`` otherwise). The reply
to ``BDAT ... LAST`` is the upstream's verdict; any upstream failure on the way
is an exact ``4xx`` and leaves no complete copy upstream.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from tests.peers.scripted_upstream import Fault, ScriptedUpstream
from tests.proxy.helpers import (
    UPSTREAM_LOST,
    GatewayHarness,
    RawClient,
    insecure_client_context,
    server_context,
)

MakeRaw = Callable[..., ScriptedUpstream]

CHUNKING = ("PIPELINING", "8BITMIME", "CHUNKING")
WITH_BINARYMIME = {"keywords": ["8BITMIME", "PIPELINING", "SIZE", "CHUNKING", "BINARYMIME"]}
FAST = {"command_timeout": "3s", "data_timeout": "3s"}
NO_BINARYMIME_UPSTREAM = (
    "554 5.6.3 BINARYMIME message cannot be relayed: the upstream server does not offer "
    "BINARYMIME and CHUNKING"
)


def chunk(data: bytes, *, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def envelope(gate: GatewayHarness, mail_params: str = "") -> RawClient:
    """EHLO (CHUNKING offered), STARTTLS, EHLO, MAIL, RCPT."""
    client = RawClient(gate.port)
    assert "CHUNKING" in [line.decode() for line in client.ehlo().lines]
    client.starttls(insecure_client_context())
    client.ehlo()
    assert client.cmd(f"MAIL FROM:<a@sender.example>{mail_params}").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
    return client


def received_header_and(content: bytes, relayed: bytes) -> bool:
    """``relayed`` is smtpgate's Received: header, then ``content`` exactly."""
    return relayed.startswith(b"Received: from client.test") and relayed.endswith(content)


@pytest.fixture
def tls_upstream(
    make_scripted_upstream: MakeRaw, upstream_cert: Any
) -> Callable[..., ScriptedUpstream]:
    def make(**kwargs: Any) -> ScriptedUpstream:
        return make_scripted_upstream(starttls_context=server_context(upstream_cert), **kwargs)

    return make


def test_chunks_are_relayed_as_bdat_to_an_upstream_with_chunking(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = tls_upstream(ehlo_keywords=CHUNKING)
    gate = make_gate(upstream.port)
    first = b"Subject: chunked\r\n\r\nline one\r\n.\r\n"  # a dot line: content, not an end
    second = b"QUIT\r\nline two\r\n"
    with envelope(gate) as client:
        client.send(chunk(first) + chunk(second, last=True))  # pipelined, one packet
        assert client.reply("BDAT") == client_reply(250, b"2.0.0 Ok: %d octets" % len(first))
        final = client.reply("BDAT")
        assert (final.code, final.lines) == (250, (b"2.0.0 Ok queued",))
        assert client.cmd("QUIT").code == 221
    [message] = upstream.messages
    assert message.bdat and message.tls_version == "TLSv1.3"
    assert received_header_and(first + second, message.content)
    assert message.chunks[-1] == b"BDAT 0 LAST"
    record = gate.transaction()
    assert record["body_transfer"] == "bdat"
    assert (record["outcome"], record["reply"], record["size"]) == (
        "delivered",
        250,
        len(first + second),
    )
    assert record["upstream_tls"] == "TLSv1.3" and record["client_tls"] == "TLSv1.3"


def client_reply(code: int, text: bytes) -> Any:
    from smtpgate.smtp import Reply

    return Reply(code, (text,), "BDAT")


def test_chunks_are_converted_to_data_for_an_upstream_without_chunking(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = tls_upstream(ehlo_keywords=("PIPELINING", "8BITMIME"))
    gate = make_gate(upstream.port)
    content = b"Subject: converted\r\n\r\n.leading dot\r\n.\r\nafter a dot line\r\n"
    with envelope(gate) as client:
        client.send(chunk(content[:25]) + chunk(content[25:], last=True))
        assert client.reply("BDAT").code == 250
        final = client.reply("BDAT")
        assert (final.code, final.lines) == (250, (b"2.0.0 Ok queued",))
    [message] = upstream.messages
    assert not message.bdat
    # Dot-stuffed on the wire, the same content after unstuffing.
    assert message.wire.endswith(b"\r\n..leading dot\r\n..\r\nafter a dot line\r\n")
    assert received_header_and(content, message.content)
    assert b"BDAT" not in b"".join(upstream.commands)
    assert gate.transaction()["body_transfer"] == "bdat-to-data"


def test_data_is_recorded_as_data(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = tls_upstream(ehlo_keywords=CHUNKING)
    gate = make_gate(upstream.port)
    with envelope(gate) as client:
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: plain\r\n\r\nhi\r\n.").code == 250
    [message] = upstream.messages
    assert not message.bdat  # DATA stays DATA, whatever the upstream offers
    assert gate.transaction()["body_transfer"] == "data"


def test_binarymime_goes_by_bdat_unchanged(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = tls_upstream(ehlo_keywords=(*CHUNKING, "BINARYMIME"))
    gate = make_gate(upstream.port, esmtp=WITH_BINARYMIME)
    binary = b"Content-Type: application/octet-stream\r\n\r\n" + bytes(range(256)) * 40
    with envelope(gate, " BODY=BINARYMIME") as client:
        assert client.cmd("DATA").code == 503
        client.send(chunk(binary[:3000]) + chunk(binary[3000:], last=True))
        assert client.reply("BDAT").code == 250
        assert client.reply("BDAT").code == 250
    [message] = upstream.messages
    assert message.bdat and message.mail_from.endswith(b"BODY=BINARYMIME")
    assert received_header_and(binary, message.content)


def test_binarymime_towards_an_upstream_without_it_is_refused_at_rcpt(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = tls_upstream(ehlo_keywords=CHUNKING)
    gate = make_gate(upstream.port, esmtp=WITH_BINARYMIME)
    client = RawClient(gate.port)
    client.ehlo()
    assert client.cmd("MAIL FROM:<a@sender.example> BODY=BINARYMIME").code == 250
    refusal = client.cmd("RCPT TO:<b@rcpt.example>")
    assert f"{refusal.code} {refusal.text}" == NO_BINARYMIME_UPSTREAM
    client.send(chunk(b"\x00binary", last=True))
    assert client.reply("BDAT").code == 554  # no valid recipients; the octets dropped
    assert client.cmd("NOOP").code == 250
    client.close()
    record = gate.wait_record("rcpt_rejected")[0]
    assert record["reply"] == 554
    assert "BINARYMIME" in record["reason"]
    assert upstream.mail_commands == 0


# --- faults: no loss, no duplicate ------------------------------------------------------------


def test_upstream_closes_mid_chunk(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = tls_upstream(ehlo_keywords=CHUNKING, drop_after_body_bytes=1)
    gate = make_gate(upstream.port, general=FAST)
    body = b"Subject: x\r\n\r\n" + (b"y" * 98 + b"\r\n") * 2000
    with envelope(gate) as client:
        client.send(chunk(body[:100_000]) + chunk(body[100_000:], last=True))
        first = client.reply("BDAT")
        assert f"{first.code} {first.text}" == UPSTREAM_LOST
        # The transaction is over: the pipelined LAST is out of sequence, its octets dropped.
        assert client.reply("BDAT").code == 503
        assert client.cmd("NOOP").code == 250
    assert upstream.messages == []
    record = gate.transaction()
    assert (record["outcome"], record["reply"], record["body_transfer"]) == (
        "tempfail",
        451,
        "bdat",
    )


def test_upstream_closes_after_last_before_its_reply(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = tls_upstream(ehlo_keywords=CHUNKING, faults={"dot": Fault.CLOSE})
    gate = make_gate(upstream.port, general=FAST)
    with envelope(gate) as client:
        client.send(chunk(b"Subject: x\r\n\r\nhello\r\n", last=True))
        final = client.reply("BDAT")
        assert f"{final.code} {final.text}" == UPSTREAM_LOST
    assert upstream.messages == []
    assert gate.transaction()["outcome"] == "tempfail"


def test_upstream_refuses_a_chunk_and_the_client_gets_its_reply(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    refusal = b"552 5.3.4 Message too big for this mailbox\r\n"
    upstream = tls_upstream(ehlo_keywords=CHUNKING, faults={"chunk": refusal})
    gate = make_gate(upstream.port, general=FAST)
    with envelope(gate) as client:
        client.send(chunk(b"Subject: x\r\n\r\n"))
        reply = client.reply("BDAT")
        assert (reply.code, reply.lines) == (552, (b"5.3.4 Message too big for this mailbox",))
        client.send(chunk(b"rest\r\n", last=True))  # a client that goes on anyway
        assert client.reply("BDAT").code == 503
    assert upstream.messages == []
    record = gate.transaction()
    assert (record["outcome"], record["reply"]) == ("rejected", 552)


def test_upstream_refuses_data_for_a_converted_bdat(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = tls_upstream(data_reply=b"451 4.3.0 Try later\r\n")
    gate = make_gate(upstream.port, general=FAST)
    with envelope(gate) as client:
        client.send(chunk(b"Subject: x\r\n\r\nhello\r\n", last=True) + b"NOOP\r\n")
        reply = client.reply("BDAT")
        assert (reply.code, reply.lines) == (451, (b"4.3.0 Try later",))
        assert client.reply("NOOP").code == 250
        # The upstream's envelope was reset: the next transaction starts anew.
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert upstream.messages == []
    assert b"RSET" in upstream.commands


def test_client_disconnects_mid_chunk(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream], loop: Any
) -> None:
    upstream = tls_upstream(ehlo_keywords=CHUNKING)
    gate = make_gate(upstream.port, general=FAST)
    with envelope(gate) as client:
        client.send(b"BDAT 100000 LAST\r\n" + b"Subject: x\r\n\r\n" + (b"z" * 98 + b"\r\n") * 500)
    record = gate.transaction()
    assert record["outcome"] == "aborted"
    assert upstream.messages == []
    # The upstream never saw the LAST chunk: no complete copy.
    assert all(not c.startswith(b"BDAT") or b"LAST" not in c for c in upstream.commands)
    assert gate.wait_record("session_end")[0]["reason"] == "client_disconnected"


def test_rset_between_chunks_leaves_nothing_upstream(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = tls_upstream(ehlo_keywords=CHUNKING)
    gate = make_gate(upstream.port, general=FAST)
    with envelope(gate) as client:
        client.send(chunk(b"Subject: x\r\n\r\n"))
        assert client.reply("BDAT").code == 250
        assert client.cmd("RSET").code == 250
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        client.send(chunk(b"Subject: second\r\n\r\nok\r\n", last=True))
        assert client.reply("BDAT").code == 250
    [message] = upstream.messages
    assert message.content.endswith(b"Subject: second\r\n\r\nok\r\n")
    assert [r["outcome"] for r in gate.records("transaction")] == ["aborted", "delivered"]


@pytest.mark.parametrize(
    "keywords", [CHUNKING, ("8BITMIME", "CHUNKING")], ids=["pipelining", "no-pipelining"]
)
def test_a_large_message_in_large_chunks_arrives_exactly(
    make_gate: Any, tls_upstream: Callable[..., ScriptedUpstream], keywords: tuple[str, ...]
) -> None:
    # Many reads per chunk: more pieces in flight than the window of 32 (with PIPELINING),
    # or each piece awaited (without it, RFC 2920 forbids sending the next one blindly).
    upstream = tls_upstream(ehlo_keywords=keywords)
    gate = make_gate(upstream.port, general={"max_message_size": "20MB"})
    line = b"0123456789" * 9 + b"\r\n"
    content = b"Subject: big\r\n\r\n" + line * 60_000  # 5.5 MB
    cuts = [0, 2_000_000, 4_500_000, len(content)]
    with envelope(gate) as client:
        for start, stop in itertools.pairwise(cuts):
            client.send(chunk(content[start:stop], last=stop == len(content)))
        replies = [client.reply("BDAT") for _ in range(3)]
    assert [r.code for r in replies] == [250, 250, 250]
    [message] = upstream.messages
    assert message.bdat and received_header_and(content, message.content)
    assert len(message.chunks) > 3  # the upstream's chunks are smtpgate's pieces, not the client's
    assert gate.transaction()["size"] == len(content)
