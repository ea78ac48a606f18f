"""Reply formatting (server role) and reply parsing (client role)."""

from __future__ import annotations

from collections.abc import Sequence


def format_reply(code: int, lines: Sequence[str] | str) -> bytes:
    """``250-first\\r\\n250 last\\r\\n`` for one or more text lines."""
    if isinstance(lines, str):
        return b"%d %s\r\n" % (code, lines.encode("utf-8"))
    return format_reply_bytes(code, [line.encode("utf-8") for line in lines])


def format_reply_bytes(code: int, lines: Sequence[bytes]) -> bytes:
    if not lines:
        return b"%d\r\n" % code
    head = b"%d-" % code
    last = len(lines) - 1
    return b"".join(
        (head if i < last else b"%d " % code) + line + b"\r\n" for i, line in enumerate(lines)
    )


class ReplyParseError(ValueError):
    """The peer sent something that is not an SMTP reply."""


class ReplyParser:
    """Collects reply lines (``ddd-text`` ... ``ddd text``) into complete replies."""

    __slots__ = ("_code", "_lines", "_max_line", "_max_lines")

    def __init__(self, *, max_line: int, max_lines: int) -> None:
        self._max_line = max_line
        self._max_lines = max_lines
        self._code = -1
        self._lines: list[bytes] = []

    def feed_line(self, line: bytes) -> tuple[int, tuple[bytes, ...]] | None:
        """One line without its line ending; returns a reply when it is complete."""
        if len(line) > self._max_line:
            raise ReplyParseError("reply line too long")
        if len(line) < 3 or not line[:3].isdigit() or line[:1] not in b"2345":
            raise ReplyParseError(f"not a reply line: {line[:40]!r}")
        code = int(line[:3])
        sep = line[3:4]
        if sep not in (b"", b" ", b"-"):
            raise ReplyParseError(f"bad reply separator: {line[:40]!r}")
        if self._lines and code != self._code:
            raise ReplyParseError("reply code changed inside a multi-line reply")
        self._code = code
        self._lines.append(line[4:])
        if len(self._lines) > self._max_lines:
            raise ReplyParseError("too many reply lines")
        if sep == b"-":
            return None
        lines = tuple(self._lines)
        self._lines = []
        return code, lines
