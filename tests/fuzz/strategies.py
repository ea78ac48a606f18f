"""Inputs shaped like what each parser meets, with the bytes that break parsers (CR,
LF, NUL, dots, 8-bit, overlong runs) over-represented, and random splits into reads."""

from __future__ import annotations

from hypothesis import strategies as st

#: Bytes that matter to SMTP framing, much likelier than in uniform random bytes.
NASTY = [b"\r", b"\n", b"\r\n", b".", b"\x00", b" ", b":", b"<", b">", b"\xff", b"\xc3\xa9"]

nasty_bytes = st.lists(
    st.one_of(st.sampled_from(NASTY), st.binary(min_size=1, max_size=8)), max_size=40
).map(b"".join)

cut_lists = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=16)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in pieces at the positions ``cuts`` name (modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


VERBS = [
    b"EHLO",
    b"HELO",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"RSET",
    b"NOOP",
    b"VRFY",
    b"EXPN",
    b"HELP",
    b"BDAT",
    b"AUTH",
    b"XCLIENT",
    b"mail from:",
    b"",
]

#: One command line without its line ending: a verb, maybe an argument of anything but
#: CR and LF (those end the line), maybe far too long.
command_lines = st.builds(
    lambda verb, arg, long: verb + arg + (b"x" * 3000 if long else b""),
    st.sampled_from(VERBS),
    st.one_of(
        st.sampled_from([b" client.test", b"<a@b.example>", b"<>", b" <a@b.example> SIZE=10"]),
        nasty_bytes.map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    st.integers(min_value=0, max_value=9).map(lambda n: n == 0),
)
