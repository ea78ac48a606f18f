"""SMTP smuggling regressions (SEC Consult, 2023): a fake end of data never starts a second message.

Each case hides a second transaction behind a line ending that some MTA might
read as the end of data. The server role must see exactly one message (one
BodyEnd, or one rejection) and no MailFrom from the smuggled part, however the
bytes are split and in both bare_newline modes; in normalize mode, what the
client role would send upstream must contain exactly one end of data too.
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

from .conversation import AcceptAll, body_of, converse, new_server, pump, wire

FAKE_ENDS = [b"\n.\n", b"\r.\r", b"\r\n.\r", b"\n.\r\n", b"\r\n.\n"]
SMUGGLED = (
    b"MAIL FROM:<evil@attacker.example>\r\n"
    b"RCPT TO:<victim@example.com>\r\n"
    b"DATA\r\n"
    b"From: ceo@example.com\r\n\r\nwire the money\r\n"
)

# Body prefixes: the fake end after some text, and right at the start of the body.
CASES = [(b"Subject: hi\r\n\r\nhello" + end, end) for end in FAKE_ENDS] + [
    (b".\n", b".\n"),
    (b".\r", b".\r"),
    (b"x\r\n.\r\r\n", b"\r\n.\r\r\n"),
]


def session(mode: str) -> object:
    server = new_server(limits=ServerLimits(bare_newline=mode))  # type: ignore[arg-type]
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


@pytest.mark.parametrize(("prefix", "fake_end"), CASES, ids=[repr(c[1]) for c in CASES])
@pytest.mark.parametrize("step", [1, 3, 7, 10_000])
def test_reject_mode_refuses_the_whole_thing_once(
    prefix: bytes, fake_end: bytes, step: int
) -> None:
    stream = prefix + SMUGGLED + b".\r\nNOOP\r\n"
    events, out = run(session("reject"), stream, step)
    assert not any(isinstance(e, MailFrom | RcptTo | BodyEnd) for e in events)
    assert [e for e in events if isinstance(e, BodyInvalid)] == [
        BodyInvalid(550, "5.6.0 Message contains bare CR or LF; use CRLF line endings")
    ]
    assert out == (
        b"550 5.6.0 Message contains bare CR or LF; use CRLF line endings\r\n250 2.0.0 Ok\r\n"
    )


@pytest.mark.parametrize(("prefix", "fake_end"), CASES, ids=[repr(c[1]) for c in CASES])
@pytest.mark.parametrize("step", [1, 3, 7, 10_000])
def test_normalize_mode_sees_one_message_and_relays_one(
    prefix: bytes, fake_end: bytes, step: int
) -> None:
    stream = prefix + SMUGGLED + b".\r\nNOOP\r\n"
    events, out = run(session("normalize"), stream, step)
    assert not any(isinstance(e, MailFrom | RcptTo | BodyInvalid) for e in events)
    assert sum(isinstance(e, BodyEnd) for e in events) == 1
    assert out == b"250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n"
    body = body_of(events)
    assert b"wire the money" in body
    assert body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")  # canonical

    # What the client role sends upstream, decoded by a fresh decoder: exactly one message.
    client = ClientConnection()
    client.send_data()
    wire(client)
    for i in range(0, len(body), step):
        client.send_body(body[i : i + step])
    client.send_end_of_data()
    upstream = wire(client)
    decoder = DataDecoder(max_size=1 << 20, max_line_length=1000, bare_newline="reject")
    chunks, done, trailing = decoder.feed(upstream)
    assert done and trailing == b"" and decoder.violation is None
    assert b"".join(bytes(c) for c in chunks) == body
    end = upstream.find(b"\r\n.\r\n")
    assert end == len(upstream) - 5 or (end == -1 and upstream == b".\r\n")


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
