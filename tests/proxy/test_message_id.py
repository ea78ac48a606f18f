"""The Message-ID of a streaming body: header section only, bounded, any chunking."""

from __future__ import annotations

import pytest

from smtpgate.proxy.message_id import HEADER_SCAN_LIMIT, MessageIdScanner

MESSAGE = (
    b"Received: from x\r\n\tby y; Sun, 29 Nov 2026 14:00:00 +0000\r\n"
    b"Message-Id:\r\n <folded.1@sender.example>\r\n"
    b"Subject: s\r\n"
    b"\r\n"
    b"Message-ID: <in-body@sender.example>\r\n"
)


def scan(*chunks: bytes | memoryview) -> tuple[bool, str]:
    scanner = MessageIdScanner()
    for chunk in chunks:
        if not scanner.done:
            scanner.feed(chunk)
    return scanner.done, scanner.message_id()


@pytest.mark.parametrize("cut", range(1, len(MESSAGE)))
def test_any_split_of_the_body_gives_the_same_message_id(cut: int) -> None:
    view = memoryview(MESSAGE)
    assert scan(view[:cut], view[cut:]) == (True, "<folded.1@sender.example>")


def test_the_first_message_id_field_counts() -> None:
    text = b"Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n\r\n"
    assert scan(text) == (True, "<first@x>")


def test_no_header_section_no_message_id() -> None:
    assert scan(b"\r\nMessage-ID: <body@x>\r\n") == (True, "")


def test_a_header_section_without_its_end_is_still_read() -> None:
    assert scan(b"Subject: s\r\nMessage-ID: <x@y>\r\n") == (False, "<x@y>")


def test_only_the_first_64_kib_are_looked_at() -> None:
    padding = b"X-Pad: " + b"a" * 90 + b"\r\n"
    header = padding * (HEADER_SCAN_LIMIT // len(padding) + 1) + b"Message-ID: <late@x>\r\n\r\n"
    assert scan(header) == (True, "")
    assert scan(b"Message-ID: <early@x>\r\n" + header) == (True, "<early@x>")
