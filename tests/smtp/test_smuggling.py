"""SMTP smuggling regressions (SEC Consult, 2023): a fake end of data never starts a second message.

Each case hides a second transaction behind a line ending (or a NUL byte) that
some MTA might read as the end of data (tests/peers/smuggling.py: the published
variants and every combination around the dot). The server role must see
exactly one message (one BodyEnd, or one rejection with the promised reply) and
no MailFrom from the smuggled part, however the bytes are split, in every
combination of ``bare_newline`` and ``nul_bytes``; what the client role then
sends upstream holds exactly one end of data, even for a receiver that drops
NUL bytes and takes a dot between any CR or LF as the end.
The end-to-end version against a recording upstream: tests/proxy/test_e2e_smuggling.py.
"""

from __future__ import annotations

import pytest

from smtpgate.smtp import (
    BodyEnd,
    BodyInvalid,
    ClientConnection,
    DataDecoder,
    MailFrom,
    RcptTo,
    ServerLimits,
)
from tests.peers.smuggling import (
    FAKE_ENDS,
    canonical,
    carrier,
    content_refusal,
    expected_refusal,
    lenient_ends,
)

from .conversation import AcceptAll, body_of, converse, new_server, pump, wire

# The fake end after some text, and right at the start of the body.
STREAMS = [carrier(end) for end in FAKE_ENDS] + [
    carrier(b".\n", before=b""),
    carrier(b".\r", before=b""),
    carrier(b"\x00.\r\n", before=b""),
    carrier(b".\x00\r\n", before=b""),
    carrier(b"\r\n.\r\r\n", before=b"x"),
]
MODES = [
    ("reject", "reject"),
    ("reject", "strip"),
    ("normalize", "reject"),
    ("normalize", "strip"),
]


def session(bare_newline: str, nul_bytes: str) -> object:
    limits = ServerLimits(bare_newline=bare_newline, nul_bytes=nul_bytes)  # type: ignore[arg-type]
    server = new_server(limits=limits)
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        C: MAIL FROM:<alice@example.com>
        C: RCPT TO:<bob@example.com>
        C: DATA
        S: 250 mx.test
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 354 End data with <CR><LF>.<CR><LF>
        """,
        AcceptAll(keywords=[]),
    )
    return server


def run(server: object, stream: bytes, step: int) -> tuple[list[object], bytes]:
    events: list[object] = []
    for i in range(0, len(stream), step):
        server.receive_data(stream[i : i + step])  # type: ignore[attr-defined]
        events += pump(server, AcceptAll(keywords=[]))  # type: ignore[arg-type]
    return events, server.data_to_send()  # type: ignore[attr-defined]


def relayed(body: bytes, step: int) -> bytes:
    """What the client role writes upstream for ``body``, handed over in ``step`` pieces."""
    client = ClientConnection()
    client.send_data()
    wire(client)
    for i in range(0, len(body), step):
        client.send_body(body[i : i + step])
    client.send_end_of_data()
    return wire(client)


@pytest.mark.parametrize(("bare_newline", "nul_bytes"), MODES)
@pytest.mark.parametrize("stream", STREAMS, ids=repr)
@pytest.mark.parametrize("step", [1, 3, 7, 10_000])
def test_one_message_or_one_refusal(
    bare_newline: str, nul_bytes: str, stream: bytes, step: int
) -> None:
    events, out = run(session(bare_newline, nul_bytes), stream + b"NOOP\r\n", step)
    assert not any(isinstance(e, MailFrom | RcptTo) for e in events)
    refusal = expected_refusal(stream, bare_newline, nul_bytes)
    if refusal is not None:
        assert not any(isinstance(e, BodyEnd) for e in events)
        code, text = refusal.split(" ", 1)
        assert [e for e in events if isinstance(e, BodyInvalid)] == [BodyInvalid(int(code), text)]
        assert out == refusal.encode() + b"\r\n250 2.0.0 Ok\r\n"
        return
    assert not any(isinstance(e, BodyInvalid) for e in events)
    assert sum(isinstance(e, BodyEnd) for e in events) == 1
    assert out == b"250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n"
    body = body_of(events)
    assert b"wire the money" in body
    assert canonical(body)

    # What the client role sends upstream, decoded by a fresh decoder: exactly one message,
    # and nothing a lenient receiver could take for an end before the real one.
    upstream = relayed(body, step)
    decoder = DataDecoder(max_size=1 << 20, max_line_length=1000, bare_newline="reject")
    chunks, done, trailing = decoder.feed(upstream)
    assert done and trailing == b"" and decoder.violation is None
    assert b"".join(bytes(c) for c in chunks) == body
    assert lenient_ends(upstream[:-3]) == []


def bdat_session(bare_newline: str, nul_bytes: str) -> object:
    limits = ServerLimits(bare_newline=bare_newline, nul_bytes=nul_bytes)  # type: ignore[arg-type]
    server = new_server(limits=limits)
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        C: MAIL FROM:<alice@example.com>
        C: RCPT TO:<bob@example.com>
        S: 250-mx.test
        S: 250 CHUNKING
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        """,
        AcceptAll(keywords=["CHUNKING"]),
    )
    return server


@pytest.mark.parametrize(("bare_newline", "nul_bytes"), MODES)
@pytest.mark.parametrize("stream", STREAMS, ids=repr)
@pytest.mark.parametrize("chunk", [1, 3, 7, 10_000])
def test_bdat_text_one_message_or_one_refusal(
    bare_newline: str, nul_bytes: str, stream: bytes, chunk: int
) -> None:
    # The same content sent by BDAT (no end marker, no stuffing) in chunks of ``chunk``
    # octets: the same policy applies, and what is relayed is safe to convert to DATA.
    content = stream[:-3]
    pieces = [content[i : i + chunk] for i in range(0, len(content), chunk)]
    wire_in = b"".join(
        b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == len(pieces) - 1 else b"") + p
        for i, p in enumerate(pieces)
    )
    server = bdat_session(bare_newline, nul_bytes)
    events, out = run(server, wire_in + b"NOOP\r\n", 5)
    assert not any(isinstance(e, MailFrom | RcptTo) for e in events)
    refusal = content_refusal(content, bare_newline, nul_bytes)
    if refusal is not None:
        assert not any(isinstance(e, BodyEnd) for e in events)
        code, text = refusal.split(" ", 1)
        assert [e for e in events if isinstance(e, BodyInvalid)] == [BodyInvalid(int(code), text)]
        # The chunks pipelined after the refused one are dropped (RFC 3030 section 2).
        after = out.split(refusal.encode() + b"\r\n", 1)[1]
        assert set(after.splitlines()) <= {b"503 5.5.1 Need MAIL command", b"250 2.0.0 Ok"}
        assert after.endswith(b"250 2.0.0 Ok\r\n")
        return
    assert sum(isinstance(e, BodyEnd) for e in events) == 1
    assert out.endswith(b"250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n")
    body = body_of(events)
    assert canonical(body) and b"wire the money" in body
    upstream = relayed(body, chunk)  # converted to DATA for an upstream without CHUNKING
    decoder = DataDecoder(max_size=1 << 20, max_line_length=1000, bare_newline="reject")
    chunks, done, trailing = decoder.feed(upstream)
    assert done and trailing == b"" and decoder.violation is None
    assert b"".join(bytes(c) for c in chunks) == body
    assert lenient_ends(upstream[:-3]) == []


def test_the_client_role_never_writes_a_bare_line_ending_dot() -> None:
    # Content handed to send_body is canonical; a line holding only a dot is stuffed
    # however the chunks fall, including a CRLF split between two chunks.
    client = ClientConnection()
    client.send_data()
    wire(client)
    for piece in (b"a\r", b"\n", b".\r\n", b"b\r", b"\n.", b"\r\n"):
        client.send_body(piece)
    client.send_end_of_data()
    assert wire(client) == b"a\r\n..\r\nb\r\n..\r\n.\r\n"
