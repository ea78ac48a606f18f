"""SPEC 4: proxy action settings seen from the wire — limits, ESMTP keywords,
the Received header."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import (
    TOO_BIG,
    AiosmtpdUpstream,
    RawClient,
    insecure_client_context,
)

Make = Callable[..., AiosmtpdUpstream]


def test_max_recipients_gets_452_past_the_limit(make_gate: Any, make_upstream: Make) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port, general={"max_recipients": 2})
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<one@rcpt.example>").code == 250
        assert client.cmd("RCPT TO:<two@rcpt.example>").code == 250
        assert str(client.cmd("RCPT TO:<three@rcpt.example>")) == "452 4.5.3 Too many recipients"
        assert client.cmd("RCPT TO:<four@rcpt.example>").code == 452
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: s\r\n\r\nx\r\n.").code == 250
        # Not dropped: the client sends them again in the next transaction.
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<three@rcpt.example>").code == 250
        assert client.cmd("RCPT TO:<four@rcpt.example>").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: s\r\n\r\nx\r\n.").code == 250
    assert [m.rcpt_tos for m in upstream.messages] == [
        ["one@rcpt.example", "two@rcpt.example"],
        ["three@rcpt.example", "four@rcpt.example"],
    ]
    assert gate.transaction(1)["recipient_domains"] == ["rcpt.example"] * 2


def test_max_message_size_is_advertised_and_enforced(
    make_gate: Any, make_scripted_upstream: Any
) -> None:
    upstream: ScriptedUpstream = make_scripted_upstream()
    gate = make_gate(upstream.port, general={"max_message_size": 4000})
    with RawClient(gate.port) as client:
        assert b"SIZE 4000" in client.ehlo().lines
        # Declared too big: refused at MAIL.
        assert client.cmd("MAIL FROM:<a@sender.example> SIZE=4001").code == 552
        # Undeclared and too big: refused at the end of data, nothing delivered.
        assert client.cmd("MAIL FROM:<a@sender.example> SIZE=100").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert client.cmd("DATA").code == 354
        big = client.cmd(
            b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" + (b"y" * 78 + b"\r\n") * 60 + b"."
        )
        assert str(big) == TOO_BIG
        # The session goes on; a message under the limit passes.
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: small\r\n\r\n" + (b"z" * 98 + b"\r\n") * 30 + b".").code == 250
    (delivered,) = upstream.messages
    assert b"Subject: small" in delivered.wire
    assert upstream.mail_commands == 2  # the big one was abandoned without its final dot
    rejected = gate.transaction(1)
    assert (rejected["outcome"], rejected["reply"]) == ("rejected", 552)


def test_esmtp_keywords_are_filtered(make_gate: Any, make_upstream: Make) -> None:
    gate = make_gate(make_upstream().port, esmtp={"keywords": ["8BITMIME", "SIZE"]})
    with RawClient(gate.port) as client:
        assert client.ehlo().lines == (
            b"mx.example.test",
            b"8BITMIME",
            b"SIZE 25000000",
            b"STARTTLS",
        )
        client.starttls(insecure_client_context())
        assert client.ehlo().lines == (b"mx.example.test", b"8BITMIME", b"SIZE 25000000")


def test_default_esmtp_keywords(make_gate: Any, make_upstream: Make) -> None:
    gate = make_gate(make_upstream().port)
    with RawClient(gate.port) as client:
        lines = client.ehlo().lines
    assert lines[0] == b"mx.example.test"
    assert set(lines[1:]) == {
        b"8BITMIME",
        b"PIPELINING",
        b"SIZE 25000000",
        b"SMTPUTF8",
        b"DSN",
        b"ENHANCEDSTATUSCODES",
        b"CHUNKING",
        b"STARTTLS",
    }


def test_dsn_parameters_do_not_break_delivery_to_an_upstream_without_dsn(
    make_gate: Any, make_upstream: Make
) -> None:
    """smtpgate advertises DSN; aiosmtpd does not support it (RFC 1869: never pass on
    parameters the next hop did not advertise)."""
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        assert b"DSN" in client.ehlo().lines
        assert client.cmd("MAIL FROM:<a@sender.example> RET=HDRS ENVID=abc123").code == 250
        answer = client.cmd(
            "RCPT TO:<b@rcpt.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@rcpt.example"
        )
        assert answer.code == 250, answer
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: dsn\r\n\r\nx\r\n.").code == 250
    assert upstream.messages[0].rcpt_tos == ["b@rcpt.example"]


RECEIVED = re.compile(
    rb"^Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n"
    rb"\tby mx\.example\.test \(smtpgate\) with (?P<proto>ESMTPS?)(?P<tls>[^\r]*)\r\n"
    rb"\tid [^;]+; [^\r]+\r\n"
)


@pytest.mark.parametrize("tls", ["TLSv1.3", "TLSv1.2", "none"])
def test_received_header_records_the_client_leg_tls(
    make_gate: Any, make_upstream: Make, tls: str
) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        client.ehlo()
        if tls != "none":
            max_version = ssl.TLSVersion.TLSv1_2 if tls == "TLSv1.2" else None
            sock = client.starttls(insecure_client_context(maximum=max_version))
            version, cipher = sock.version(), sock.cipher()[0]
            assert version == tls
            client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: r\r\n\r\nx\r\n.").code == 250
    content = upstream.messages[0].content
    match = RECEIVED.match(content)
    assert match is not None, content[:300]
    if tls == "none":
        assert (match["proto"], match["tls"]) == (b"ESMTP", b"")
    else:
        assert match["proto"] == b"ESMTPS"
        assert match["tls"] == f" (version={version} cipher={cipher})".encode()
    assert content[match.end() :].startswith(b"Subject: r\r\n")
    assert content.count(b"Received:") == 1


def test_received_header_off(make_gate: Any, make_upstream: Make) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port, general={"received_header": False})
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: r\r\n\r\nx\r\n.").code == 250
    assert upstream.messages[0].content == b"Subject: r\r\n\r\nx\r\n"


def test_dsn_parameters_are_relayed_to_an_upstream_with_dsn(
    make_gate: Any, make_scripted_upstream: Any
) -> None:
    upstream: ScriptedUpstream = make_scripted_upstream(
        ehlo_keywords=["PIPELINING", "8BITMIME", "DSN"]
    )
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example> RET=HDRS ENVID=abc123").code == 250
        assert client.cmd("RCPT TO:<b@rcpt.example> NOTIFY=FAILURE,DELAY").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: dsn\r\n\r\nx\r\n.").code == 250
    assert b"MAIL FROM:<a@sender.example> RET=HDRS ENVID=abc123" in upstream.commands
    assert b"RCPT TO:<b@rcpt.example> NOTIFY=FAILURE,DELAY" in upstream.commands
