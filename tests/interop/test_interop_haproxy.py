"""HAProxy (TCP mode, ``send-proxy`` / ``send-proxy-v2``) in front of smtpgate.

The client connects from 127.0.0.2 to HAProxy on 127.0.0.1; HAProxy connects to
smtpgate from 127.0.0.1 and prepends a PROXY v1/v2 header. With
``proxy_protocol = true`` on the policy, smtpgate must log the original client
address (127.0.0.2 and the client's own port), not HAProxy's, and the mail must
still go through (the header is not mistaken for SMTP).
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from tests.peers.certs import TestPKI
from tests.peers.haproxy import HAProxy
from tests.peers.relay import Relay

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


@pytest.mark.parametrize("version", [1, 2])
def test_smtpgate_logs_the_original_client_address(
    version: int,
    relay: Relay,
    start_haproxy: Callable[..., HAProxy],
    pki: TestPKI,
) -> None:
    up, gate = relay(None, verify=False, policy={"proxy_protocol": True})
    hap = start_haproxy(gate.port(), version)
    with smtplib.SMTP("127.0.0.1", hap.port, timeout=20, source_address=("127.0.0.2", 0)) as smtp:
        host, port = smtp.sock.getsockname()[:2]  # type: ignore[union-attr]
        client = f"{host}:{port}"
        smtp.starttls(context=pki.client_context())
        smtp.sendmail("alice@sender.test", ["bob@receiver.test"], b"Subject: proxied\r\n\r\nhi\r\n")
    assert client.startswith("127.0.0.2:")
    assert up.wait_messages(1)[0].rcpt_tos == ["bob@receiver.test"]
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["client"] == client, gate.diagnostics()
    starts = [r for r in gate.records("session_start") if r.get("client") == client]
    assert starts, gate.diagnostics()
