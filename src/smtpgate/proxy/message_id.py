"""The ``Message-ID`` of a message whose body streams through, for the transaction record.

Sans-IO and cheap: it looks only at the header section (up to the first
empty line), copies at most :data:`HEADER_SCAN_LIMIT` bytes of it in steps of
:data:`_STEP`, never the body, and parses once, when the record is written.
"""

from __future__ import annotations

#: Header bytes looked at, at most (Postfix's ``header_size_limit`` is 100 KiB).
HEADER_SCAN_LIMIT = 64 * 1024
#: Bytes copied per step while looking for the end of the header section.
_STEP = 8 * 1024
#: A logged Message-ID is cut to the length of an SMTP text line.
MAX_MESSAGE_ID = 998


class MessageIdScanner:
    """Feed body chunks until :attr:`done`; :meth:`message_id` then says what was found."""

    __slots__ = ("_head", "done")

    def __init__(self) -> None:
        self._head = b""
        #: The header section is complete (or the limit reached): stop feeding.
        self.done = False

    def feed(self, chunk: bytes | memoryview) -> None:
        head = self._head
        offset = 0
        while offset < len(chunk):
            room = HEADER_SCAN_LIMIT - len(head)
            piece = bytes(chunk[offset : offset + min(_STEP, room)])
            offset += len(piece)
            search_from = max(0, len(head) - 3)
            head += piece
            if head.startswith(b"\r\n"):  # no header fields at all
                head, self.done = b"", True
                break
            end = head.find(b"\r\n\r\n", search_from)
            if end >= 0:
                head, self.done = head[: end + 2], True
                break
            if len(head) >= HEADER_SCAN_LIMIT:
                self.done = True
                break
        self._head = head

    def message_id(self) -> str:
        """The first ``Message-ID`` field's value, unfolded; ``""`` when there is none."""
        return find_message_id(self._head)


def find_message_id(header: bytes) -> str:
    lower = header.lower()
    if lower.startswith(b"message-id:"):
        start = len(b"message-id:")
    else:
        found = lower.find(b"\nmessage-id:")
        if found < 0:
            return ""
        start = found + len(b"\nmessage-id:")
    end = header.find(b"\n", start)
    while end >= 0 and header[end + 1 : end + 2] in (b" ", b"\t"):  # folded (RFC 5322 2.2.3)
        end = header.find(b"\n", end + 1)
    value = b" ".join(header[start : end if end >= 0 else len(header)].split())
    return value[:MAX_MESSAGE_ID].decode("utf-8", "replace")
