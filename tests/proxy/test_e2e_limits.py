"""Limits against abuse (issue 11 item 3), each over real sockets against a real
gateway, each with the exact reply docs/proxy.md promises and a check that the
limit does not stop smtpgate serving other clients.

Timing tests give smtpgate a small deadline and keep the hostile client going
well past it: a session that outlives the bound by seconds fails the test, a
slow machine only makes the session end later within that margin.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import TIMEOUT, GatewayHarness, RawClient, insecure_client_context

MakeRaw = Callable[..., ScriptedUpstream]

TOO_MANY = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address, try again later"
TIMEOUT_REPLY = b"421 4.4.2 Timeout, closing connection\r\n"


def session_end(gate: GatewayHarness, port: int) -> dict[str, Any]:
    (record,) = gate.wait_record("session_end", lambda r: r["client"].endswith(f":{port}"))
    return record


def refused_at_once(port: int, source: str = "127.0.0.1") -> bytes:
    """Everything a new connection gets before smtpgate closes it."""
    with socket.create_connection(("127.0.0.1", port), TIMEOUT, (source, 0)) as sock:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def relay_one(gate: GatewayHarness) -> None:
    """A whole transaction: smtpgate still serves."""
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: still served\r\n\r\nhello\r\n.").code == 250


# --- connections -------------------------------------------------------------------------------


def test_connections_past_max_connections_get_421_and_the_rest_are_served(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port, gateway={"max_connections": 3})
    held = [RawClient(gate.port) for _ in range(3)]
    try:
        assert all(c.greeting.code == 220 for c in held)
        assert refused_at_once(gate.port) == TOO_MANY.encode() + b"\r\n"
        (record,) = gate.wait_record("connection_refused")
        assert (record["reason"], record["connections"], record["refused"]) == (
            "max_connections",
            3,
            1,
        )
        # A second refusal within the second is counted, not logged on its own.
        assert refused_at_once(gate.port) == TOO_MANY.encode() + b"\r\n"
    finally:
        for client in held:
            client.close()
    gate.wait_record("session_end", count=3)
    relay_one(gate)
    assert len(upstream.messages) == 1


def test_one_address_cannot_take_the_connections_of_others(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream()
    gate = make_gate(
        upstream.port, gateway={"max_connections": 10, "max_connections_per_client": 2}
    )
    hog = [RawClient(gate.port) for _ in range(2)]
    try:
        assert refused_at_once(gate.port) == TOO_MANY_FROM_CLIENT.encode() + b"\r\n"
        (record,) = gate.wait_record("connection_refused")
        assert record["reason"] == "max_connections_per_client"
        assert record["client"].startswith("127.0.0.1:")
        # Another address is served meanwhile, a whole transaction.
        with socket.create_connection(("127.0.0.1", gate.port), TIMEOUT, ("127.0.0.2", 0)) as s:
            assert s.recv(100).startswith(b"220 ")
    finally:
        for client in hog:
            client.close()
    gate.wait_record("session_end", count=3)
    relay_one(gate)
    assert len(upstream.messages) == 1


# --- commands and errors -----------------------------------------------------------------------


def test_commands_past_max_commands_get_421(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    gate = make_gate(make_scripted_upstream().port, general={"max_commands": 10})
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        client.send(b"NOOP\r\n" * 11)
        answers = [str(client.reply()) for _ in range(11)]
        too_many = "421 4.7.0 Too many commands, closing connection"
        assert answers == ["250 2.0.0 Ok"] * 10 + [too_many]
        assert client.pending() == b""
    assert session_end(gate, port)["reason"] == "too_many_commands"


def test_max_errors_and_max_command_line_are_settings(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    gate = make_gate(
        make_scripted_upstream().port, general={"max_errors": 3, "max_command_line": 600}
    )
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        assert client.cmd(b"NOOP " + b"x" * 592).code == 250  # 599 bytes with CRLF
        assert str(client.cmd(b"NOOP " + b"x" * 594)) == "500 5.5.2 Line too long"
        assert client.cmd("BOGUS").code == 500
        client.send(b"BOGUS\r\n")
        assert str(client.reply()) == "500 5.5.2 Command not recognized"
        assert str(client.reply()) == "421 4.7.0 Too many errors, closing connection"
    assert session_end(gate, port)["reason"] == "too_many_errors"


# --- deadlines and rates ------------------------------------------------------------------------


def trickle(client: RawClient, data: bytes, every: float, until: float) -> float:
    """Send ``data`` one byte per ``every`` seconds until smtpgate answers (or
    ``until`` seconds passed); returns the seconds it took."""
    start = time.monotonic()
    client.sock.settimeout(every)
    for byte in data:
        if time.monotonic() - start > until:
            break
        try:
            client.sock.sendall(bytes([byte]))
            if client.sock.recv(4096, socket.MSG_PEEK):
                break
        except TimeoutError:
            continue
        except OSError:
            break
    client.sock.settimeout(TIMEOUT)
    return time.monotonic() - start


def test_a_command_trickled_byte_by_byte_meets_the_command_deadline(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    gate = make_gate(
        make_scripted_upstream().port,
        general={"command_timeout": "2s", "command_deadline": "3s"},
    )
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        # Every byte well within the 2 s timeout; the line never ends.
        took = trickle(client, b"NOOP " + b"x" * 100, every=0.2, until=10)
        assert client.pending(1) == TIMEOUT_REPLY
        assert 2.8 < took < 8
    assert session_end(gate, port)["reason"] == "command_deadline"


@pytest.mark.parametrize(
    ("general", "reason"),
    [
        ({"data_timeout": "2s", "data_deadline": "3s", "min_data_rate": 0}, "data_deadline"),
        ({"data_timeout": "2s", "data_deadline": "1h", "min_data_rate": "1KB"}, "data_rate"),
    ],
    ids=["deadline", "rate"],
)
def test_a_body_trickled_byte_by_byte_meets_the_data_deadline_or_rate(
    make_gate: Any, make_scripted_upstream: MakeRaw, general: dict[str, Any], reason: str
) -> None:
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port, general=general)
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert client.cmd("DATA").code == 354
        took = trickle(client, b"Subject: slow\r\n\r\n" + b"x" * 200, every=0.2, until=10)
        assert client.pending(1) == TIMEOUT_REPLY
        assert 1.8 < took < 8
    assert session_end(gate, port)["reason"] == reason
    record = gate.transaction()
    assert (record["outcome"], record["reply"]) == ("aborted", 421)
    assert upstream.messages == []
    relay_one(gate)


def test_a_stalled_starttls_handshake_meets_the_tls_handshake_timeout(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    gate = make_gate(
        make_scripted_upstream().port,
        general={"command_timeout": "30s", "tls_handshake_timeout": "1s"},
    )
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        start = time.monotonic()
        assert client.sock.recv(100) == b""  # no ClientHello: smtpgate hangs up
        assert time.monotonic() - start < 5
    assert session_end(gate, port)["reason"] == "starttls_failed"
    # Others are served meanwhile and after, over TLS too.
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        client.ehlo()
        client.starttls(insecure_client_context())
        assert client.ehlo().code == 250


@pytest.mark.parametrize("looks_first", [True, False], ids=["raw-acceptor", "loop-server"])
def test_a_stalled_implicit_tls_handshake_meets_the_tls_handshake_timeout(
    make_gate: Any, make_scripted_upstream: MakeRaw, looks_first: bool
) -> None:
    gate = make_gate(
        make_scripted_upstream().port,
        policy={"implicit_tls": True},
        profile={"tls_compliant_only": not looks_first},
        general={"command_timeout": "30s", "tls_handshake_timeout": "1s"},
    )
    with socket.create_connection(("127.0.0.1", gate.port), TIMEOUT) as stalled:
        # The start of a ClientHello record, then nothing.
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        start = time.monotonic()
        assert stalled.recv(100) == b""
        assert time.monotonic() - start < 5
    with RawClient(gate.port, implicit_tls=insecure_client_context()) as client:
        assert client.greeting.code == 220


def test_tls_handshake_timeout_is_not_the_command_timeout(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    """A slow but progressing handshake within the bound succeeds."""
    gate = make_gate(make_scripted_upstream().port, general={"tls_handshake_timeout": "5s"})
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        time.sleep(1)
        tls = insecure_client_context().wrap_socket(client.sock)
        client.sock = tls
        assert client.ehlo().code == 250
        assert isinstance(client.sock, ssl.SSLSocket)
