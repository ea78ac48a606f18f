"""End to end over real sockets: what the SMTP core's checks mean for what the upstream gets
(issue 6: line length with stuffing dots, the EHLO name in Received:, SMTPUTF8, write
back-pressure on the client leg)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import RawClient, RawUpstream

MakeRaw = Callable[..., RawUpstream]


def open_transaction(port: int, ehlo: str = "client.test") -> RawClient:
    client = RawClient(port)
    assert client.ehlo(ehlo).code == 250
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
    assert client.cmd("DATA").code == 354
    return client


# --- RFC 5321 4.5.3.1.6: the stuffing dot is not part of the line ---------------------------


@pytest.mark.parametrize(("length", "legal"), [(998, True), (999, False)])
def test_dot_line_at_the_limit_is_relayed_stuffed(
    make_gate: Any, make_raw_upstream: MakeRaw, length: int, legal: bool
) -> None:
    upstream = make_raw_upstream()
    gate = make_gate(upstream.port)
    line = b"." + b"d" * (length - 1)  # the content line, CRLF not counted
    with open_transaction(gate.port) as client:
        final = client.cmd(b"Subject: dots\r\n\r\n." + line + b"\r\n.")
        if legal:
            assert str(final) == "250 2.0.0 Ok queued"
        else:
            assert str(final) == "550 5.6.0 Message line too long"
        assert client.cmd("QUIT").code == 221
    if legal:
        (delivered,) = upstream.messages
        # On the wire upstream: stuffed again, 999 octets plus CRLF.
        assert delivered.wire.endswith(b"\r\nSubject: dots\r\n\r\n." + line + b"\r\n")
    else:
        assert upstream.messages == []
