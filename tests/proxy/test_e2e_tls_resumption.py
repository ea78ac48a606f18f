"""TLS session resumption on both legs (issue 12 item 2), over real sockets.

Client leg: a client that keeps its session (``openssl s_client -sess_out`` then
``-sess_in``, as Postfix's ``tlsmgr`` does) resumes it on its next connection,
with TLS 1.3 and TLS 1.2 tickets; the ``starttls`` record says so.
Upstream leg: the session the upstream gave is offered on the next connection
to it, which resumes; ``upstream_connected`` says so.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.peers import wait_until
from tests.peers.openssl import s_client
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import AiosmtpdUpstream, rule, server_context, smtplib_send

MakeScripted = Callable[..., ScriptedUpstream]


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_a_client_that_keeps_its_session_resumes_it(
    make_gate: Any,
    make_upstream: Callable[..., AiosmtpdUpstream],
    tmp_path: Path,
    version: str,
) -> None:
    gate = make_gate(make_upstream().port, rules=[rule(recipient_encryption="none")])
    session = tmp_path / "session.pem"
    tls12 = version == "TLSv1.2"
    first = s_client(gate.port, tls1_2=tls12, session_out=session, wait_for_close=True)
    second = s_client(gate.port, tls1_2=tls12, session_in=session, wait_for_close=True)
    assert first.ok and not first.reused, first
    assert second.ok and second.reused, second
    assert (first.version, second.version) == (version, version)
    records = gate.wait_record("starttls", count=2)
    assert [(r["client_tls"], r["tls_resumed"]) for r in records] == [
        (version, False),
        (version, True),
    ]


def test_a_client_without_a_session_is_not_resumed(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    gate = make_gate(make_upstream().port, rules=[rule(recipient_encryption="none")])
    assert s_client(gate.port, wait_for_close=True).ok
    assert s_client(gate.port, wait_for_close=True).ok
    assert [r["tls_resumed"] for r in gate.wait_record("starttls", count=2)] == [False, False]


def send(port: int, n: int) -> dict[str, tuple[int, bytes]]:
    return smtplib_send(port, "a@sender.example", [f"b{n}@rcpt.example"], starttls=True)


@pytest.mark.parametrize("max_version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize("encryption", ["required", "preferred"])
def test_the_next_upstream_connection_resumes_the_session(
    make_gate: Any,
    make_scripted_upstream: MakeScripted,
    upstream_cert: Any,
    max_version: ssl.TLSVersion,
    encryption: str,
) -> None:
    """The upstream takes one message per connection: the second session's MAIL gets
    421 on the parked leg, and the retry opens a new connection, which resumes the
    session of the first (verified under ``required``, checked after the handshake
    under ``preferred``: both still say ``ok``)."""
    upstream = make_scripted_upstream(
        starttls_context=server_context(upstream_cert, max_version=max_version),
        messages_per_connection=1,
    )
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption=encryption)])
    assert send(gate.port, 1) == {}
    assert send(gate.port, 2) == {}
    wait_until(lambda: len(upstream.messages) == 2, lambda: "both messages upstream", timeout=5)
    assert upstream.connections == 2
    connected = gate.records("upstream_connected")
    version = "TLSv1.3" if max_version is ssl.TLSVersion.TLSv1_3 else "TLSv1.2"
    assert [
        (r["upstream_tls"], r["upstream_verify"], r["upstream_tls_resumed"]) for r in connected
    ] == [(version, "ok", False), (version, "ok", True)]
    assert [m.tls_version for m in upstream.messages] == [version, version]
