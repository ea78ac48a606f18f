"""Hypothesis properties of the core: codec round trip, split invariance, no crash on garbage."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpgate.smtp import (
    BodyChunk,
    BodyInvalid,
    DataDecoder,
    DataEncoder,
    ServerConnection,
    ServerLimits,
)
from smtpgate.smtp.server import State
from tests.peers.smuggling import canonical, lenient_ends

from .conversation import AcceptAll, pump

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- helpers ---------------------------------------------------------------------------------

line_text = st.lists(
    # No NUL: the decoder refuses it by default (strip mode: the next property).
    st.sampled_from([b".", b"..", b"a", b"Z", b" ", b"\t", b"\xc3\xa9", b"MAIL"]),
    max_size=12,
).map(b"".join)


@st.composite
def canonical_bodies(draw: st.DrawFn) -> bytes:
    """Canonical CRLF text: lines (often starting with dots, often empty), maybe no final CRLF."""
    lines = draw(st.lists(line_text, max_size=30))
    body = b"".join(line + b"\r\n" for line in lines)
    if draw(st.booleans()):
        body += draw(line_text)  # a last line without its CRLF
    return body


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


cut_lists = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=20)

# -- DATA codec round trip -------------------------------------------------------------------


@SETTINGS
@given(body=canonical_bodies(), encode_cuts=cut_lists, decode_cuts=cut_lists)
def test_encoder_then_decoder_round_trips_byte_identical(
    body: bytes, encode_cuts: list[int], decode_cuts: list[int]
) -> None:
    encoder = DataEncoder()
    wire = b"".join(bytes(p) for piece in split(body, encode_cuts) for p in encoder.encode(piece))
    wire += encoder.end()

    # On the wire: stuffed, so the only end-of-data marker is the last one.
    assert wire.endswith(b".\r\n")
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3

    decoder = DataDecoder(max_size=1 << 20, max_line_length=1 << 20, bare_newline="reject")
    content: list[bytes] = []
    finished_at = None
    for i, piece in enumerate(split(wire, decode_cuts)):
        assert finished_at is None or piece == b""
        chunks, done, trailing = decoder.feed(piece)
        content += [bytes(c) for c in chunks]
        if done:
            finished_at = i
            assert trailing == b""
    assert finished_at is not None and decoder.violation is None
    expected = body if body == b"" or body.endswith(b"\r\n") else body + b"\r\n"
    assert b"".join(content) == expected


@SETTINGS
@given(noise=st.binary(max_size=300), cuts=cut_lists)
def test_decoder_output_reencodes_to_one_message(noise: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes after 354 in normalize and strip mode: whatever is decoded
    re-encodes safely, even for a receiver that drops NUL and ends data at any CR/LF dot."""
    stream = noise + b"\r\n.\r\n"
    decoder = DataDecoder(
        max_size=1 << 20, max_line_length=1 << 20, bare_newline="normalize", nul_bytes="strip"
    )
    encoder = DataEncoder()
    content, wire = [], []
    for piece in split(stream, cuts):
        chunks, done, _ = decoder.feed(piece)
        for chunk in chunks:
            content.append(bytes(chunk))
            wire += [bytes(p) for p in encoder.encode(chunk)]
        if done:
            break
    assert done
    body = b"".join(content)
    assert canonical(body)
    assert lenient_ends(b"".join(wire)) == []
    wire.append(encoder.end())
    again = DataDecoder(max_size=1 << 20, max_line_length=1 << 20, bare_newline="reject")
    chunks, done, trailing = again.feed(b"".join(wire))
    assert done and trailing == b"" and again.violation is None
    assert b"".join(bytes(c) for c in chunks) == body


# -- the server's input, split anywhere ------------------------------------------------------

commands = st.sampled_from(
    [
        b"EHLO client.example\r\n",
        b"HELO client.example\n",
        b"MAIL FROM:<a@example.com> SIZE=100\r\n",
        b"MAIL FROM:<>\r\n",
        b"RCPT TO:<b@example.com>\r\n",
        b"RCPT TO:<postmaster>\r\n",
        b"RCPT TO:<bad@>\r\n",
        b"DATA\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY x\r\n",
        b"HELP\r\n",
        b"STARTTLS\r\n",
        b"FROB\r\n",
        b"NOOP " + b"x" * 600 + b"\r\n",
        b"line of body text\r\n",
        b".dotted\r\n",
        b"bare\nlf\r\n",
        b"cr\ronly\r\n",
        b"nul\x00byte\r\n",
        b"\x00.\r\n",
        b".\r\n",
        b"\r\n.\r\n",
        b"QUIT\r\n",
    ]
)


def run_server(pieces: list[bytes], mode: tuple[str, str]) -> tuple[list[object], bytes]:
    limits = ServerLimits(bare_newline=mode[0], nul_bytes=mode[1])  # type: ignore[arg-type]
    server = ServerConnection("mx.test", limits)
    server.greet()
    policy = AcceptAll(starttls=True)
    events: list[object] = []
    out = [server.data_to_send()]
    for piece in pieces:
        server.receive_data(piece)
        events += pump(server, policy)
        out.append(server.data_to_send())
    return normalize(events), b"".join(out)


def normalize(events: list[object]) -> list[object]:
    """Merge BodyChunk runs into bytes; drop the content of a message that became invalid."""
    merged: list[object] = []
    for event in events:
        if isinstance(event, BodyChunk):
            if merged and isinstance(merged[-1], bytes):
                merged[-1] += bytes(event.data)
            else:
                merged.append(bytes(event.data))
        else:
            if isinstance(event, BodyInvalid) and merged and isinstance(merged[-1], bytes):
                merged.pop()  # partial content before the violation depends on the split
            merged.append(event)
    return merged


@SETTINGS
@given(
    script=st.lists(commands, max_size=40),
    cuts=cut_lists,
    mode=st.sampled_from(
        [("reject", "reject"), ("reject", "strip"), ("normalize", "reject"), ("normalize", "strip")]
    ),
)
def test_any_split_of_the_input_gives_the_same_events(
    script: list[bytes], cuts: list[int], mode: tuple[str, str]
) -> None:
    stream = b"".join(script)
    whole = run_server([stream], mode)
    pieces = run_server(split(stream, cuts), mode)
    bytewise = run_server([stream[i : i + 1] for i in range(len(stream))], mode)
    assert pieces == whole
    assert bytewise == whole


# -- garbage in ------------------------------------------------------------------------------

REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*\r\n")

garbage = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.one_of(commands, st.binary(max_size=20), st.sampled_from([b"\r", b"\n", b"."])),
        max_size=60,
    ).map(b"".join),
)


@SETTINGS
@given(data=garbage, cuts=cut_lists)
def test_random_bytes_never_raise_and_every_answer_is_a_reply(data: bytes, cuts: list[int]) -> None:
    server = ServerConnection("mx.test", ServerLimits(max_errors=5))
    server.greet()
    out = [server.data_to_send()]
    for piece in split(data, cuts):
        server.receive_data(piece)
        pump(server, AcceptAll(starttls=True))
        out.append(server.data_to_send())
    wire = b"".join(out)
    assert REPLY_LINE.sub(b"", wire) == b""  # nothing but well-formed reply lines
    if server.state is State.CLOSED:
        assert wire.endswith((b"221 2.0.0 Bye\r\n", b" closing connection\r\n"))
