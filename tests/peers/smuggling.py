"""The hostile sender's side of SMTP smuggling: the fake ends of data of the
published research, and what a lenient receiver would make of relayed bytes.

SEC Consult's "SMTP Smuggling" (December 2023), Postfix's advisory
(https://www.postfix.org/smtp-smuggling.html) and the scanners written after
them hide a second transaction behind a line ending that some receiver takes
as the end of data: CR or LF alone around the dot, and a NUL byte next to the
dot (receivers that drop NUL bytes then see ``CRLF . CRLF``). Besides the
published ones, :data:`FAKE_ENDS` holds every combination of what may come
before and after the dot, so a variant nobody published yet is covered too.

Used by the core's tests (tests/smtp/test_smuggling.py) and the end-to-end
ones against the recording upstream (tests/proxy/test_e2e_smuggling.py).
"""

from __future__ import annotations

import itertools
import re

#: Published variants: SEC Consult's paper and scanner, the Postfix advisory,
#: smtp_smuggling_checker.
PUBLISHED = (
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\n\n.\r\n",
    b"\r\n\r.\r\n",
    b"\r\n.\r\r\n",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n\x00.\r",
    b"\r\n\x00.\n",
)
_BEFORE = (b"\n", b"\r", b"\r\n", b"\r\n\x00", b"\n\x00", b"\r\x00\n", b"\x00\n", b"\r\n\x00\x00")
_AFTER = (b"\n", b"\r", b"\r\n", b"\x00\r\n", b"\r\x00\n", b"\x00\n", b"\x00\r")
_REAL_END = b"\r\n.\r\n"

#: Every fake end of data tried; none holds the real end ``CRLF . CRLF``.
FAKE_ENDS: tuple[bytes, ...] = tuple(
    dict.fromkeys(
        end
        for end in (*PUBLISHED, *(b + b"." + a for b, a in itertools.product(_BEFORE, _AFTER)))
        if _REAL_END not in end
    )
)

#: The second transaction the attacker hopes a receiver runs.
SMUGGLED = (
    b"MAIL FROM:<evil@attacker.example>\r\n"
    b"RCPT TO:<victim@rcpt.example>\r\n"
    b"DATA\r\n"
    b"From: ceo@rcpt.example\r\nSubject: smuggled\r\n\r\nwire the money\r\n"
)

BARE_NEWLINE_REPLY = "550 5.6.0 Message contains bare CR or LF; use CRLF line endings"
NUL_REPLY = "550 5.6.0 Message contains NUL bytes"

_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# What a lenient receiver takes as the end of data once it dropped NUL bytes:
# a dot alone between any CR or LF.
_LENIENT_END = re.compile(rb"[\r\n]\.[\r\n]")


def carrier(fake_end: bytes, before: bytes = b"Subject: carrier\r\n\r\nbefore") -> bytes:
    """DATA bytes, up to and including the real final dot, hiding :data:`SMUGGLED`
    behind ``fake_end``."""
    return before + fake_end + SMUGGLED + b".\r\n"


def expected_refusal(data: bytes, bare_newline: str, nul_bytes: str) -> str | None:
    """The reply smtpgate promises at the end of ``data`` (DATA bytes ending with the
    real final dot); None: the message is relayed.

    The first offending byte names the refusal (docs/smtp-core.md). A dot right
    after a real CRLF (or first in the body) is a stuffing dot, not content.
    """
    return content_refusal(
        (b"\r\n" + data[:-3]).replace(b"\r\n.", b"\r\n")[2:], bare_newline, nul_bytes
    )


def content_refusal(content: bytes, bare_newline: str, nul_bytes: str) -> str | None:
    """The reply smtpgate promises for message ``content`` (unstuffed: as BDAT carries
    it); None: the message is relayed."""
    bare = _BARE_CR_OR_LF.search(content)
    nul = content.find(b"\x00")
    refusals = []
    if bare is not None and bare_newline == "reject":
        refusals.append((bare.start(), BARE_NEWLINE_REPLY))
    if nul >= 0 and nul_bytes == "reject":
        refusals.append((nul, NUL_REPLY))
    return min(refusals)[1] if refusals else None


def lenient_ends(wire: bytes) -> list[bytes]:
    """What in dot-stuffed ``wire`` (without the final ``.CRLF``) a lenient receiver
    would take as an end of data: NUL bytes dropped, then a dot between any CR or LF."""
    seen = b"\n" + wire.replace(b"\x00", b"")
    return [m.group() for m in _LENIENT_END.finditer(seen)]


def canonical(wire: bytes) -> bool:
    """Every CR and LF is part of a CRLF, and there is no NUL."""
    crlf = wire.count(b"\r\n")
    return wire.count(b"\r") == crlf == wire.count(b"\n") and b"\x00" not in wire
