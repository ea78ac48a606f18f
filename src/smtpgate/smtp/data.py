"""The DATA codec: dot-unstuffing with end-of-data detection, and dot-stuffing;
the BDAT framing (RFC 3030), which needs neither; the content checks both share.

Both sides work on whole buffers with ``bytes`` methods that run in C
(``find``, ``count``, ``replace``); nothing loops per line in Python, and a
chunk that needs no change is passed on as a view, not copied.

Smuggling defence (SPEC 2.3): the end of data is *only* ``CRLF . CRLF``.
Bare CR or LF never ends data and never starts a line for unstuffing; with
``bare_newline="reject"`` such a message is refused at its real end, with
``"normalize"`` each bare CR or LF becomes CRLF and the encoder stuffs any
line that now begins with a dot, so the upstream sees exactly the message
boundaries smtpgate saw.

NUL bytes: receivers that drop them would read ``CRLF NUL . CRLF`` as the end
of data. With ``nul_bytes="reject"`` a message holding one is refused at its
real end; with ``"strip"`` they are removed (after bare CR and LF are dealt
with, so the result is still canonical CRLF text) and the encoder stuffs any
line that now begins with a dot.

BDAT (:class:`ChunkDecoder`) has no end marker to forge: a chunk ends after
the octets its command announced. A text message sent by BDAT still passes
the same checks (:class:`ContentFilter`), since the upstream may get it by
DATA and any later hop may relay it by DATA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_END = b"\r\n.\r\n"
# re searches a memoryview without copying it; bytes.find cannot.
_LINE_STARTS_WITH_DOT = re.compile(rb"\r\n\.")
_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# Suffixes of a buffer that may be the start of an end marker or of "CRLF .":
# they are kept back until the next chunk decides what they are.
_END_PREFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")

BareNewlinePolicy = Literal["reject", "normalize"]
NulPolicy = Literal["reject", "strip"]


@dataclass(frozen=True, slots=True)
class DataViolation:
    code: int
    text: str


BARE_NEWLINE = DataViolation(550, "5.6.0 Message contains bare CR or LF; use CRLF line endings")
TOO_BIG = DataViolation(552, "5.3.4 Message size exceeds fixed maximum message size")
LINE_TOO_LONG = DataViolation(550, "5.6.0 Message line too long")
NUL_BYTE = DataViolation(550, "5.6.0 Message contains NUL bytes")


class ContentFilter:
    """The checks every message's content passes, however it was framed (DATA or BDAT).

    ``check(buf, start, stop)`` counts the octets against the size limit,
    applies the line-length limit and the bare CR/LF and NUL policies, and
    returns ``buf[start:stop]`` as the upstream may get it: a view when
    unchanged, canonical CRLF text when ``normalize``/``strip`` changed it,
    None when there is nothing to pass on (empty, or a limit was broken).
    ``violation`` is set once a limit is broken; after that, nothing passes.

    A range must not end between the CR and LF of one CRLF (the framing
    keeps a trailing CR back until the next bytes decide what it is).
    """

    __slots__ = (
        "_carry_line",
        "_max_line",
        "_normalize",
        "_strip_nul",
        "max_size",
        "size",
        "violation",
    )

    def __init__(
        self,
        *,
        max_size: int,
        max_line_length: int,
        bare_newline: BareNewlinePolicy,
        nul_bytes: NulPolicy,
    ) -> None:
        self.max_size = max_size
        self._max_line = max_line_length
        self._normalize = bare_newline == "normalize"
        self._strip_nul = nul_bytes == "strip"
        self._carry_line = 0
        self.size = 0
        self.violation: DataViolation | None = None

    def check(self, buf: bytes, start: int, stop: int) -> bytes | memoryview | None:
        if stop <= start or self.violation is not None:
            return None
        self.size += stop - start
        if self.size > self.max_size:
            self.violation = TOO_BIG
            return None
        crlf = buf.count(b"\r\n", start, stop)
        bare = buf.count(b"\n", start, stop) != crlf or buf.count(b"\r", start, stop) != crlf
        nul = buf.find(b"\0", start, stop)
        refuse_bare = bare and not self._normalize
        refuse_nul = nul >= 0 and not self._strip_nul
        if refuse_bare or refuse_nul:
            # The first offending byte names the refusal, wherever the reads split.
            nul_first = refuse_nul and (not refuse_bare or nul < _first_bare(buf, start, stop))
            self.violation = NUL_BYTE if nul_first else BARE_NEWLINE
            return None
        if not self._lines_fit(buf, start, stop):
            self.violation = LINE_TOO_LONG
            return None
        if nul >= 0:
            # Canonical first: a NUL between CR and LF must not join them into a CRLF
            # (the outcome would then depend on where the reads happened to split).
            content = canonicalize(buf[start:stop]) if bare else buf[start:stop]
            return content.replace(b"\0", b"") or None
        if bare:
            return canonicalize(buf[start:stop])
        if start == 0 and stop == len(buf):
            return buf
        return memoryview(buf)[start:stop]

    def _lines_fit(self, buf: bytes, start: int, stop: int) -> bool:
        """No line longer than the limit (CRLF included), in about len/limit C scans."""
        limit = self._max_line
        pos = start
        room = limit - self._carry_line  # what the partial line from before may still take
        while stop - pos > room:
            newline = buf.rfind(b"\n", pos, pos + room)
            if newline < 0:
                return False
            pos = newline + 1
            room = limit
        last = buf.rfind(b"\n", start, stop)
        self._carry_line = stop - last - 1 if last >= 0 else self._carry_line + stop - start
        return True


class DataDecoder:
    """Turns the bytes after ``354`` into content chunks and finds the end of data.

    ``feed(data)`` returns ``(chunks, done, trailing)``: content chunks to pass
    on, whether the final dot was seen, and the bytes after it (the next
    commands). ``violation`` is set once the body breaks a limit; after that,
    content is discarded until the end.
    """

    __slots__ = ("_at_start", "_filter", "_pending")

    def __init__(
        self,
        *,
        max_size: int,
        max_line_length: int,
        bare_newline: BareNewlinePolicy,
        nul_bytes: NulPolicy = "reject",
    ):
        self._filter = ContentFilter(
            max_size=max_size,
            max_line_length=max_line_length,
            bare_newline=bare_newline,
            nul_bytes=nul_bytes,
        )
        self._pending = b""
        self._at_start = True

    @property
    def size(self) -> int:
        """Content octets so far (unstuffed)."""
        return self._filter.size

    @property
    def violation(self) -> DataViolation | None:
        return self._filter.violation

    def feed(self, data: bytes) -> tuple[list[bytes | memoryview], bool, bytes]:
        buf = self._pending + data if self._pending else data
        self._pending = b""
        start = 0
        if self._at_start:
            if len(buf) < 3 and b".\r\n".startswith(buf[:3]) and buf[:1] == b".":
                self._pending = buf
                return [], False, b""
            if buf[:3] == b".\r\n":
                return [], True, buf[3:]
            if not buf:
                return [], False, b""
            self._at_start = False
            if buf[:1] == b".":
                start = 1  # a stuffed dot on the first line
        end = buf.find(_END, start)
        if end >= 0:
            chunk = self._content(buf, start, end + 2)
            return ([chunk] if chunk else []), True, buf[end + 5 :]
        cut = len(buf)
        for prefix in _END_PREFIXES:
            if buf.endswith(prefix) and cut - len(prefix) >= start:
                cut -= len(prefix)
                break
        self._pending = buf[cut:]
        chunk = self._content(buf, start, cut)
        return ([chunk] if chunk else []), False, b""

    def _content(self, buf: bytes, start: int, stop: int) -> bytes | memoryview | None:
        """Check ``buf[start:stop]`` and return it unstuffed (a view when unchanged).

        Limits apply to the unstuffed content: RFC 5321 4.5.3.1.6 does not count
        the dot doubled for transparency in a line's length, nor RFC 1870 in the
        message size. A chunk never ends inside "CRLF .", so unstuffing one chunk
        at a time removes every stuffing dot before the line lengths are counted.
        """
        if stop <= start or self._filter.violation is not None:
            return None
        if buf.find(b"\r\n.", start, stop) >= 0:
            buf = buf[start:stop].replace(b"\r\n.", b"\r\n")
            start, stop = 0, len(buf)
        return self._filter.check(buf, start, stop)


class ChunkDecoder:
    """The content of a message sent in BDAT chunks (RFC 3030).

    BDAT frames by octet count: there is no end-of-data marker and no dot
    stuffing, so a chunk's octets are the message's octets. A text message
    (``BODY=7BIT``/``8BITMIME`` or none) passes the same :class:`ContentFilter`
    as DATA, so the bare CR/LF and NUL settings mean the same whichever way
    the client framed it, and it stays canonical if the upstream gets it by
    DATA. A ``BODY=BINARYMIME`` message is octets, not lines: only its size
    is checked, and it is never converted to DATA.

    ``reserve(size)`` admits the next chunk by its announced size (the size
    limit is known before the octets come); ``feed`` passes content on;
    ``finish()`` returns what was kept back at the message's end.
    """

    __slots__ = ("_binary", "_filter", "_pending_cr", "reserved")

    def __init__(
        self,
        *,
        max_size: int,
        max_line_length: int,
        bare_newline: BareNewlinePolicy,
        nul_bytes: NulPolicy,
        binary: bool,
    ) -> None:
        self._filter = ContentFilter(
            max_size=max_size,
            max_line_length=max_line_length,
            bare_newline=bare_newline,
            nul_bytes=nul_bytes,
        )
        self._binary = binary
        self._pending_cr = False
        #: The octets the accepted BDAT commands announced, for the size limit.
        self.reserved = 0

    @property
    def violation(self) -> DataViolation | None:
        return self._filter.violation

    def reserve(self, size: int) -> bool:
        """Admit a chunk of ``size`` octets; False (and the violation set) past the limit."""
        content = self._filter
        if content.violation is not None:
            return False
        if self.reserved + size > content.max_size:
            content.violation = TOO_BIG
            return False
        self.reserved += size
        return True

    def feed(self, buf: bytes, start: int, stop: int) -> bytes | memoryview | None:
        """Content of ``buf[start:stop]`` as the upstream may get it (a view when unchanged)."""
        if stop <= start:
            return None
        if self._binary:
            return buf if start == 0 and stop == len(buf) else memoryview(buf)[start:stop]
        if self._pending_cr:
            # The CR kept back from the previous read: whether it was bare depends on this one.
            buf, start, stop = b"\r" + buf[start:stop], 0, stop - start + 1
            self._pending_cr = False
        if buf[stop - 1] == 13:  # "\r": a CRLF may be split across reads or chunks
            self._pending_cr = True
            stop -= 1
        return self._filter.check(buf, start, stop)

    def finish(self) -> bytes | memoryview | None:
        """The content kept back, at the message's end (a final CR is a bare CR)."""
        if not self._pending_cr:
            return None
        self._pending_cr = False
        return self._filter.check(b"\r", 0, 1)


def _first_bare(buf: bytes, start: int, stop: int) -> int:
    """Where the first CR or LF that is not part of a CRLF is (only called on a refusal)."""
    found = _BARE_CR_OR_LF.search(buf, start, stop)
    return found.start() if found is not None else stop


def canonicalize(content: bytes) -> bytes:
    """Every bare CR, bare LF and CRLF becomes CRLF."""
    return content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class DataEncoder:
    """Dot-stuffs canonical content for the wire and writes the final dot.

    Input must be canonical CRLF text (what :class:`DataDecoder` produces, or
    :func:`canonicalize` output); chunks may split lines anywhere.
    """

    __slots__ = ("_at_line_start", "_pending_cr")

    def __init__(self) -> None:
        self._at_line_start = True
        self._pending_cr = False

    def encode(self, chunk: bytes | memoryview) -> list[bytes | memoryview]:
        """Wire bytes for ``chunk``: a list, so an unchanged chunk is never copied."""
        if not chunk:
            return []
        out: list[bytes | memoryview] = []
        after_cr = self._pending_cr
        if self._at_line_start and chunk[:1] == b".":
            out.append(b".")
        elif self._pending_cr and chunk[:2] == b"\n.":
            # "CR | LF ." split across chunks: stuff the dot of the new line.
            out.append(b"\n.")
            chunk = chunk[1:]
        if _LINE_STARTS_WITH_DOT.search(chunk) is not None:
            chunk = bytes(chunk).replace(b"\r\n.", b"\r\n..")
        out.append(chunk)
        tail = chunk[-2:]
        # A chunk that is just the LF of a CRLF split across chunks also ends a line.
        self._at_line_start = tail == b"\r\n" or (after_cr and tail == b"\n")
        self._pending_cr = chunk[-1:] == b"\r"
        return out

    def end(self) -> bytes:
        """The end-of-data marker, with the CRLF the content may lack."""
        marker = b".\r\n" if self._at_line_start else b"\r\n.\r\n"
        self._at_line_start = True
        self._pending_cr = False
        return marker
