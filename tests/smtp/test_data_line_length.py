"""RFC 5321 4.5.3.1.6 line length on both legs: 1000 octets with CRLF, not counting
the dot doubled for transparency (so a 998-octet line starting with "." is legal and
is 999 octets plus CRLF on the wire)."""

from __future__ import annotations

import pytest

from smtpgate.smtp import BodyEnd, BodyInvalid, ClientConnection, ServerConnection, ServerLimits
from smtpgate.smtp.data import DataDecoder, DataEncoder

from .conversation import AcceptAll, body_of, converse, new_server, pump, wire

LIMIT = 1000  # ServerLimits().max_data_line, RFC 5321's
TOO_LONG = b"550 5.6.0 Message line too long\r\n"
QUEUED = b"250 2.0.0 Ok: queued\r\n"


def line_of(length: int, *, dot: bool) -> bytes:
    """A content line of ``length`` octets before its CRLF, starting with "." if ``dot``."""
    return (b"." if dot else b"") + b"x" * (length - dot) + b"\r\n"


def stuffed(content: bytes) -> bytes:
    wire_bytes = content.replace(b"\r\n.", b"\r\n..")
    return b"." + wire_bytes if wire_bytes[:1] == b"." else wire_bytes


def in_data(**limits: object) -> ServerConnection:
    server = new_server(limits=ServerLimits(**limits))  # type: ignore[arg-type]
    server.receive_data(
        b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
    )
    pump(server, AcceptAll())
    assert server.data_to_send().endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    return server


CASES = [
    pytest.param(998, False, True, id="998-no-dot"),
    pytest.param(998, True, True, id="998-dot"),
    pytest.param(999, False, False, id="999-no-dot"),
    pytest.param(999, True, False, id="999-dot"),
]


@pytest.mark.parametrize("position", ["first", "later"])
@pytest.mark.parametrize(("length", "dot", "legal"), CASES)
def test_client_leg_counts_the_unstuffed_line(
    length: int, dot: bool, legal: bool, position: str
) -> None:
    content = (b"Subject: x\r\n\r\n" if position == "later" else b"") + line_of(length, dot=dot)
    server = in_data()

    server.receive_data(stuffed(content) + b".\r\n")
    events = pump(server, AcceptAll())

    if legal:
        assert body_of(events) == content
        assert events[-1] == BodyEnd()
        assert server.data_to_send() == QUEUED
    else:
        assert BodyInvalid(550, "5.6.0 Message line too long") in events
        assert server.data_to_send() == TOO_LONG


@pytest.mark.parametrize(("length", "dot", "legal"), CASES)
def test_client_leg_line_length_does_not_depend_on_where_reads_split(
    length: int, dot: bool, legal: bool
) -> None:
    content = b"a\r\n" + line_of(length, dot=dot) + b"b\r\n"
    data = stuffed(content) + b".\r\n"
    # Every split around the stuffing dot and around the line's end.
    for cut in [*range(0, 8), *range(len(data) - 12, len(data))]:
        decoder = DataDecoder(max_size=10_000, max_line_length=LIMIT, bare_newline="reject")
        first, done_first, _ = decoder.feed(data[:cut])
        rest, done, trailing = decoder.feed(data[cut:])
        assert done and not done_first and trailing == b""
        if legal:
            assert decoder.violation is None, cut
            assert b"".join(bytes(c) for c in [*first, *rest]) == content
        else:
            assert decoder.violation is not None, cut
            assert decoder.violation.text == "5.6.0 Message line too long"


def test_message_size_does_not_count_stuffing_dots() -> None:
    # RFC 1870: the size excludes the doubled dots; 100 octets fit a 100-octet limit.
    content = b"a\r\n" + line_of(95, dot=True)
    assert len(content) == 100 and len(stuffed(content)) == 101
    server = in_data(max_message_size=100)
    server.receive_data(stuffed(content) + b".\r\n")
    assert body_of(pump(server, AcceptAll())) == content
    assert server.data_to_send() == QUEUED


@pytest.mark.parametrize("dot", [False, True], ids=["no-dot", "dot"])
def test_upstream_leg_stuffs_a_998_octet_line_to_at_most_999_plus_crlf(dot: bool) -> None:
    content = b"a\r\n" + line_of(998, dot=dot)
    client = ClientConnection()
    converse(client, "S: 220 mx.upstream ESMTP")
    client.send_data()
    assert wire(client) == b"DATA\r\n"
    client.send_body(content)
    client.send_end_of_data()

    sent = wire(client)

    long_line = sent.split(b"\r\n")[1]
    assert long_line == (b".." + b"x" * 997 if dot else b"x" * 998)
    assert sent == b"a\r\n" + long_line + b"\r\n.\r\n"
    # And a receiver counting as RFC 5321 says takes exactly the content back.
    decoder = DataDecoder(max_size=10_000, max_line_length=LIMIT, bare_newline="reject")
    chunks, done, _ = decoder.feed(sent)
    assert done and decoder.violation is None
    assert b"".join(bytes(c) for c in chunks) == content


def test_encoder_stuffs_a_dot_line_split_from_its_crlf() -> None:
    encoder = DataEncoder()
    parts = [*encoder.encode(b"a\r"), *encoder.encode(b"\n." + b"x" * 997 + b"\r\n")]
    assert b"".join(bytes(p) for p in parts) == b"a\r\n.." + b"x" * 997 + b"\r\n"
