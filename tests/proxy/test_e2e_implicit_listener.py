"""Implicit-TLS listeners: ``tls_compliant_only`` (SPEC 3) and a PROXY header in front of TLS."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.proxy.helpers import (
    TIMEOUT,
    AiosmtpdUpstream,
    RawClient,
    insecure_client_context,
    message,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def upstream(make_upstream: Callable[..., AiosmtpdUpstream]) -> AiosmtpdUpstream:
    return make_upstream()


def _cleartext_banner(port: int, *, speak_first: bytes = b"") -> bytes:
    """What a cleartext client gets from the port within a few seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        if speak_first:
            sock.sendall(speak_first)
        sock.settimeout(5)
        try:
            return sock.recv(1024)
        except (TimeoutError, ConnectionResetError):
            return b""


def test_tls_compliant_only_drops_a_cleartext_client(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(
        upstream.port, policy={"implicit_tls": True}, profile={"tls_compliant_only": True}
    )
    assert _cleartext_banner(gate.port, speak_first=b"EHLO plain.test\r\n") == b""
    # A TLS client on the same port is served.
    with RawClient(gate.port, implicit_tls=insecure_client_context()) as client:
        assert client.ehlo().code == 250
        client.cmd("QUIT")
    assert upstream.messages == []


def test_not_tls_compliant_only_serves_a_cleartext_client_as_cleartext(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(
        upstream.port, policy={"implicit_tls": True}, profile={"tls_compliant_only": False}
    )
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", gate.port, timeout=TIMEOUT) as client:
        waited = time.monotonic() - started
        code, features = client.ehlo("plain.test")
        assert code == 250
        # An implicit-TLS listener never offers STARTTLS (SPEC 2.1).
        assert b"STARTTLS" not in features
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], message()) == {}
    assert waited >= 1.0  # the banner came only after the ClientHello did not
    record = gate.transaction()
    assert (record["client_tls"], record["outcome"]) == ("none", "delivered")
    assert len(upstream.messages) == 1


def test_not_tls_compliant_only_still_refuses_required_sender_in_clear(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(
        upstream.port,
        policy={"implicit_tls": True},
        profile={"tls_compliant_only": False},
        rules=[{"sender": "partner.example", "sender_encryption": "required"}],
    )
    with smtplib.SMTP("127.0.0.1", gate.port, timeout=TIMEOUT) as client:
        client.ehlo("plain.test")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("a@partner.example", ["b@rcpt.example"], message())
    assert refused.value.recipients["b@rcpt.example"][0] == 530
    assert upstream.messages == []


def test_not_tls_compliant_only_serves_tls_clients_as_tls(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(
        upstream.port, policy={"implicit_tls": True}, profile={"tls_compliant_only": False}
    )
    context = insecure_client_context()
    with smtplib.SMTP_SSL("127.0.0.1", gate.port, timeout=TIMEOUT, context=context) as client:
        client.ehlo("tls.test")
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], message()) == {}
    assert gate.transaction()["client_tls"].startswith("TLSv1.")


@pytest.mark.parametrize("compliant_only", [True, False])
def test_proxy_header_in_front_of_implicit_tls(
    make_gate: Any, upstream: AiosmtpdUpstream, compliant_only: bool
) -> None:
    gate = make_gate(
        upstream.port,
        policy={"implicit_tls": True, "proxy_protocol": True},
        profile={"tls_compliant_only": compliant_only},
    )
    raw = socket.create_connection(("127.0.0.1", gate.port), timeout=TIMEOUT)
    raw.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 25\r\n")
    tls = insecure_client_context().wrap_socket(raw)
    try:
        assert tls.recv(1024).startswith(b"220 ")
        tls.sendall(b"EHLO tls.test\r\n")
        assert tls.recv(4096).startswith(b"250")
        tls.sendall(b"QUIT\r\n")
    finally:
        tls.close()
    start = gate.wait_record("session_start")[0]
    assert start["client"] == "192.0.2.7:40001"
    assert start["client_tls"].startswith("TLSv1.")


def test_proxy_header_missing_on_implicit_tls_is_dropped(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(
        upstream.port,
        policy={"implicit_tls": True, "proxy_protocol": True},
        profile={"tls_compliant_only": True},
    )
    assert _cleartext_banner(gate.port, speak_first=b"EHLO no-header.test\r\n") == b""
    assert gate.wait_record("proxy_header_error")
