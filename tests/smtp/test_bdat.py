"""BDAT / CHUNKING and BINARYMIME (RFC 3030) in the server role.

A BDAT chunk is framed by its octet count: the core reads exactly that many
octets, however the reads split them, and what follows is the next command.
Every BDAT that is refused still has its octets read and dropped before the
reply, so message content is never taken for commands.
"""

from __future__ import annotations

import pytest

from smtpgate.smtp import (
    BodyChunk,
    BodyEnd,
    BodyInvalid,
    ChunkEnd,
    ChunkRequested,
    ConnectionClosed,
    MailFrom,
    Reset,
    ServerConnection,
    ServerLimits,
)
from smtpgate.smtp.server import State

from .conversation import AcceptAll, body_of, converse, new_server, pump

KEYWORDS = ("PIPELINING", "SIZE 10485760", "8BITMIME", "CHUNKING", "BINARYMIME")
POLICY = AcceptAll(keywords=KEYWORDS)


def ready(**limits: object) -> ServerConnection:
    """A server after EHLO (offering CHUNKING and BINARYMIME)."""
    server = new_server(limits=ServerLimits(**limits))  # type: ignore[arg-type]
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        S: 250-mx.test
        S: 250-PIPELINING
        S: 250-SIZE 10485760
        S: 250-8BITMIME
        S: 250-CHUNKING
        S: 250 BINARYMIME
        """,
        POLICY,
    )
    return server


def envelope(server: ServerConnection, mail_params: str = "") -> None:
    converse(
        server,
        f"""
        C: MAIL FROM:<alice@example.com>{mail_params}
        C: RCPT TO:<bob@example.org>
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        """,
        POLICY,
    )


def feed(
    server: ServerConnection, data: bytes, step: int | None = None, policy: AcceptAll = POLICY
) -> list[object]:
    events: list[object] = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        server.receive_data(data[i : i + step])
        events += pump(server, policy)
    return events


def test_chunks_then_last_make_one_message() -> None:
    server = ready()
    envelope(server)
    events = feed(server, b"BDAT 14\r\nSubject: a\r\n\r\nBDAT 8 LAST\r\nbody\r\n\r\n")
    assert events[0] == ChunkRequested(14, False)
    assert ChunkEnd(14) in events and ChunkRequested(8, True) in events
    assert isinstance(events[-1], BodyEnd)
    assert body_of(events) == b"Subject: a\r\n\r\nbody\r\n\r\n"
    assert server.data_to_send() == b"250 2.0.0 Ok: 14 octets\r\n250 2.0.0 Ok: queued\r\n"
    assert server.state is State.READY


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13, 1000])
def test_any_split_gives_the_same_events_and_replies(step: int) -> None:
    # Chunks whose octets look like commands and like an end of data, pipelined with what
    # follows: the octet count alone decides where a chunk ends.
    first, last = b"QUIT\r\nRSET\r\n.\r\nDATA\r\n", b"x\r\n.\r\n"
    stream = b"BDAT %d\r\n" % len(first) + first + b"BDAT 6 LAST\r\n" + last + b"NOOP\r\n"
    whole = ready()
    envelope(whole)
    expected = feed(whole, stream)
    expected_out = whole.data_to_send()
    assert body_of(expected) == first + last
    assert expected_out == b"250 2.0.0 Ok: 21 octets\r\n250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n"
    split = ready()
    envelope(split)
    events = feed(split, stream, step)
    assert [type(e) for e in events if not isinstance(e, BodyChunk)] == [
        type(e) for e in expected if not isinstance(e, BodyChunk)
    ]
    assert body_of(events) == body_of(expected)
    assert split.data_to_send() == expected_out


def test_a_chunk_larger_than_the_pipelining_buffer_is_read_not_refused() -> None:
    server = ready(max_buffer=1024)
    envelope(server)
    line = b"x" * 998 + b"\r\n"
    content = line * 50
    # The driver reads at most half the buffer while a command is expected, any size after.
    stream = b"BDAT %d LAST\r\n" % len(content) + content
    events = feed(server, stream[:512])
    events += feed(server, stream[512:], step=16384)
    assert body_of(events) == content
    assert server.data_to_send() == b"250 2.0.0 Ok: queued\r\n"


def test_chunk_views_are_not_copies() -> None:
    server = ready()
    envelope(server)
    events = feed(server, b"BDAT 5 LAST\r\nab\r\nNOOP\r\n")
    [chunk] = [e for e in events if isinstance(e, BodyChunk)]
    assert isinstance(chunk.data, memoryview)  # a view of the read, not a copy


def test_bdat_zero_last_is_an_empty_message() -> None:
    server = ready()
    envelope(server)
    events = feed(server, b"BDAT 0 LAST\r\n")
    assert events == [ChunkRequested(0, True), BodyEnd()]
    assert server.data_to_send() == b"250 2.0.0 Ok: queued\r\n"


def test_bdat_without_mail_or_rcpt_drops_its_octets() -> None:
    server = ready()
    events = feed(server, b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
    assert not any(isinstance(e, ConnectionClosed) for e in events)
    assert server.data_to_send() == b"503 5.5.1 Need MAIL command\r\n250 2.0.0 Ok\r\n"
    converse(
        server,
        """
        C: MAIL FROM:<alice@example.com>
        S: 250 2.1.0 Ok
        """,
        POLICY,
    )
    feed(server, b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert server.data_to_send() == b"554 5.5.1 No valid recipients\r\n250 2.0.0 Ok\r\n"
    assert server.errors == 2


@pytest.mark.parametrize(
    "command",
    [
        b"BDAT",
        b"BDAT x",
        b"BDAT -1",
        b"BDAT 1.5",
        b"BDAT 10 NOTLAST",
        b"BDAT 10 LAST x",
        b"BDAT  10",
    ],
)
def test_bdat_with_a_bad_size_is_a_syntax_error(command: bytes) -> None:
    server = ready()
    envelope(server)
    events = feed(server, command + b"\r\nNOOP\r\n")
    assert events == []
    assert server.data_to_send() == b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n250 2.0.0 Ok\r\n"
    assert server.state is State.RCPT


def test_bdat_when_chunking_was_not_offered_is_not_implemented() -> None:
    server = new_server()
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        S: 250-mx.test
        S: 250 8BITMIME
        C: BDAT 4 LAST
        S: 502 5.5.1 Command not implemented
        """,
        AcceptAll(keywords=["8BITMIME"]),
    )


def test_a_message_over_the_size_limit_is_refused_at_the_chunk_that_breaks_it() -> None:
    server = ready(max_message_size=10)
    envelope(server)
    stream = b"BDAT 6\r\n123456BDAT 5\r\n789abBDAT 3 LAST\r\nxyzNOOP\r\n"
    events = feed(server, stream)
    assert [e for e in events if isinstance(e, BodyInvalid)] == [
        BodyInvalid(552, "5.3.4 Message size exceeds fixed maximum message size")
    ]
    assert not any(isinstance(e, BodyEnd) for e in events)
    # The refused chunk's octets are dropped; the transaction is over, so the pipelined
    # BDAT after it is out of sequence (its octets dropped too).
    assert server.data_to_send() == (
        b"250 2.0.0 Ok: 6 octets\r\n"
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        b"503 5.5.1 Need MAIL command\r\n"
        b"250 2.0.0 Ok\r\n"
    )
    assert server.state is State.READY


def test_binarymime_needs_bdat_and_its_octets_pass_unchanged() -> None:
    server = ready()
    envelope(server, " BODY=BINARYMIME")
    converse(
        server,
        """
        C: DATA
        S: 503 5.5.1 BODY=BINARYMIME requires BDAT
        """,
        POLICY,
    )
    binary = b"\x00\x01\r\n.\r\n\n.\n\r\xff" * 100
    events = feed(server, b"BDAT %d LAST\r\n" % len(binary) + binary, step=7)
    assert body_of(events) == binary
    assert not any(isinstance(e, BodyInvalid) for e in events)
    assert server.data_to_send() == b"250 2.0.0 Ok: queued\r\n"


def test_binarymime_not_offered_is_an_unsupported_parameter() -> None:
    server = new_server()
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        S: 250-mx.test
        S: 250-8BITMIME
        S: 250 CHUNKING
        C: MAIL FROM:<alice@example.com> BODY=BINARYMIME
        S: 555 5.5.4 Unsupported parameter BODY
        C: MAIL FROM:<alice@example.com> BODY=8BITMIME
        S: 250 2.1.0 Ok
        """,
        AcceptAll(keywords=["8BITMIME", "CHUNKING"]),
    )


def test_data_rcpt_after_bdat_are_out_of_sequence_rset_ends_it() -> None:
    server = ready()
    envelope(server)
    events = feed(server, b"BDAT 4\r\nab\r\n")
    assert isinstance(events[-1], ChunkEnd)
    converse(
        server,
        """
        S: 250 2.0.0 Ok: 4 octets
        C: DATA
        C: RCPT TO:<carol@example.org>
        C: MAIL FROM:<alice@example.com>
        S: 503 5.5.1 DATA not allowed after BDAT
        S: 503 5.5.1 RCPT not allowed after BDAT
        S: 503 5.5.1 Nested MAIL command
        C: RSET
        S: 250 2.0.0 Ok
        """,
        AcceptAll(keywords=KEYWORDS, answers={}),
    )
    assert server.state is State.READY
    events = feed(server, b"BDAT 2 LAST\r\nab")
    assert server.data_to_send() == b"503 5.5.1 Need MAIL command\r\n"


def test_rset_between_chunks_is_a_reset_event() -> None:
    server = ready(bare_newline="normalize")
    envelope(server)
    events = feed(server, b"BDAT 3\r\nab\nRSET\r\n")
    assert isinstance(events[-1], Reset)
    assert server.data_to_send() == b"250 2.0.0 Ok: 3 octets\r\n250 2.0.0 Ok\r\n"


@pytest.mark.parametrize(
    ("content", "bare_newline", "nul_bytes", "reply", "relayed"),
    [
        (
            b"a\nb\r\n",
            "reject",
            "reject",
            "550 5.6.0 Message contains bare CR or LF; use CRLF line endings",
            None,
        ),
        (b"a\nb\r\n", "normalize", "reject", None, b"a\r\nb\r\n"),
        (b"a\x00\r\n", "reject", "reject", "550 5.6.0 Message contains NUL bytes", None),
        (b"a\x00\r\n", "reject", "strip", None, b"a\r\n"),
        (
            b"a\r\n\x00.\r\nMAIL FROM:<x@y>\r\n",
            "reject",
            "strip",
            None,
            b"a\r\n.\r\nMAIL FROM:<x@y>\r\n",
        ),
        (
            b"end with a bare CR\r",
            "reject",
            "reject",
            "550 5.6.0 Message contains bare CR or LF; use CRLF line endings",
            None,
        ),
        (b"end with a bare CR\r", "normalize", "reject", None, b"end with a bare CR\r\n"),
        (b"x" * 1001 + b"\r\n", "reject", "reject", "550 5.6.0 Message line too long", None),
    ],
)
@pytest.mark.parametrize("chunk", [1, 2, 4, 1000])
def test_text_by_bdat_follows_the_same_content_policy_as_data(
    content: bytes,
    bare_newline: str,
    nul_bytes: str,
    reply: str | None,
    relayed: bytes | None,
    chunk: int,
) -> None:
    server = ready(bare_newline=bare_newline, nul_bytes=nul_bytes)
    envelope(server)
    pieces = [content[i : i + chunk] for i in range(0, len(content), chunk)]
    stream = b"".join(
        b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == len(pieces) - 1 else b"") + p
        for i, p in enumerate(pieces)
    )
    events = feed(server, stream + b"NOOP\r\n")
    out = server.data_to_send()
    if reply is None:
        assert body_of(events) == relayed
        assert out.endswith(b"250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n")
        return
    code, text = reply.split(" ", 1)
    assert [e for e in events if isinstance(e, BodyInvalid)] == [BodyInvalid(int(code), text)]
    assert not any(isinstance(e, BodyEnd) for e in events)
    assert reply.encode() + b"\r\n" in out
    assert b"queued" not in out
    assert server.state is State.READY


def test_a_crlf_split_between_chunks_is_a_crlf() -> None:
    server = ready()
    envelope(server)
    events = feed(server, b"BDAT 2\r\na\rBDAT 3 LAST\r\n\nb\r")
    # The CR ending the first chunk joined the LF opening the second; the final CR is bare.
    assert [e for e in events if isinstance(e, BodyInvalid)] == [
        BodyInvalid(550, "5.6.0 Message contains bare CR or LF; use CRLF line endings")
    ]
    server = ready()
    envelope(server)
    events = feed(server, b"BDAT 2\r\na\rBDAT 4 LAST\r\n\nb\r\n")
    assert body_of(events) == b"a\r\nb\r\n"


def test_refused_chunk_is_answered_after_its_octets_and_ends_the_transaction() -> None:
    server = ready()
    envelope(server)
    policy = AcceptAll(keywords=KEYWORDS, answers={ChunkRequested: (451, "4.4.2 Upstream lost")})
    events = feed(server, b"BDAT 10 LAST\r\nQUIT\r\nNOOP", step=3, policy=policy)
    assert events == [ChunkRequested(10, True)]
    assert server.data_to_send() == b"451 4.4.2 Upstream lost\r\n"
    assert server.state is State.READY
    events = feed(server, b"NOOP\r\n")
    assert server.data_to_send() == b"250 2.0.0 Ok\r\n"


def test_a_refused_intermediate_chunk_ends_the_transaction() -> None:
    server = ready()
    envelope(server)
    policy = AcceptAll(keywords=KEYWORDS, answers={ChunkEnd: (554, "5.6.0 upstream says no")})
    events = feed(server, b"BDAT 4\r\nab\r\nBDAT 1 LAST\r\nx", policy=policy)
    assert not any(isinstance(e, BodyEnd) for e in events)
    assert server.data_to_send() == b"554 5.6.0 upstream says no\r\n503 5.5.1 Need MAIL command\r\n"
    assert server.state is State.READY


def test_mail_after_a_finished_bdat_transaction_starts_anew() -> None:
    server = ready()
    envelope(server)
    feed(server, b"BDAT 4 LAST\r\nab\r\n")
    assert server.data_to_send() == b"250 2.0.0 Ok: queued\r\n"
    envelope(server)
    events = feed(server, b"DATA\r\n")
    assert server.data_to_send() == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    assert not any(isinstance(e, MailFrom) for e in events)
