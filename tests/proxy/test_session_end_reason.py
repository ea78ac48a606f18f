"""How the client-leg core closing a connection is named in ``session_end`` (sans-IO)."""

from __future__ import annotations

from smtpgate.proxy.session import closed_by_core_reason
from smtpgate.smtp.events import NEED_DATA, ConnectionClosed
from smtpgate.smtp.server import ServerConnection


def closed(data: bytes) -> str:
    server = ServerConnection("mx.example.test")
    server.receive_data(data)
    while (event := server.next_event()) is not NEED_DATA:
        if isinstance(event, ConnectionClosed):
            return closed_by_core_reason(server, event)
    raise AssertionError(f"the core did not close: {server.data_to_send()!r}")


def test_quit() -> None:
    assert closed(b"QUIT\r\n") == "client_quit"


def test_too_many_errors() -> None:
    assert closed(b"BOGUS\r\n" * 20) == "too_many_errors"


def test_more_input_than_the_core_holds() -> None:
    assert closed(b"NOOP\r\n" * 50_000) == "input_flood"
