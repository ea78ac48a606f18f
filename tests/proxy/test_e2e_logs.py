"""SPEC 6/7: the summary record of a transaction carries every field SPEC 7 lists."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from typing import Any

from helpers import (
    TIMEOUT,
    AiosmtpdUpstream,
    insecure_client_context,
    message,
    rule,
    server_context,
)

SPEC7_FIELDS = {
    "time",
    "session",
    "client",
    "client_tls",
    "client_cipher",
    "upstream_tls",
    "upstream_cipher",
    "upstream_verify",
    "rule",
    "sender_domain",
    "recipient_domains",
    "outcome",
    "reply",
}


def test_transaction_record_has_every_spec7_field(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream], upstream_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(upstream_cert))
    gate = make_gate(
        upstream.port,
        rules=[
            rule(sender="other.example", recipient_encryption="none"),
            rule(sender="Sender.Example", recipient_encryption="required"),
        ],
    )
    with smtplib.SMTP("127.0.0.1", gate.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        client.starttls(context=insecure_client_context())
        client.ehlo("client.test")
        local_port = client.sock.getsockname()[1]
        assert (
            client.sendmail("a@SENDER.example", ["b@Rcpt.Example", "c@two.example"], message())
            == {}
        )
    record = gate.transaction()
    assert set(record) >= SPEC7_FIELDS
    assert record["event"] == "transaction"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    session_start = gate.wait_record("session_start")[0]
    assert record["session"] == session_start["session"]
    assert record["client"] == f"127.0.0.1:{local_port}"
    assert (record["client_tls"], record["upstream_tls"]) == ("TLSv1.3", "TLSv1.3")
    assert record["client_cipher"].startswith("TLS_") and record["upstream_cipher"].startswith(
        "TLS_"
    )
    assert record["upstream_verify"] == "ok"
    assert record["rule"] == "2"
    assert record["sender_domain"] == "sender.example"
    assert record["recipient_domains"] == ["rcpt.example", "two.example"]
    assert (record["outcome"], record["reply"]) == ("delivered", 250)
    assert record["policy"] == "p"
    # One summary per transaction, and the session is closed in the log too.
    gate.wait_record("session_end")
    assert len(gate.records("transaction")) == 1
    assert len(upstream.messages) == 1


def test_cleartext_legs_are_logged_as_none(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    with smtplib.SMTP("127.0.0.1", gate.port, timeout=TIMEOUT) as client:
        assert client.sendmail("", ["b@rcpt.example"], message()) == {}
    record = gate.transaction()
    assert {
        k: record[k] for k in ("client_tls", "client_cipher", "upstream_tls", "upstream_cipher")
    } == {
        "client_tls": "none",
        "client_cipher": "none",
        "upstream_tls": "none",
        "upstream_cipher": "none",
    }
    assert (record["upstream_verify"], record["rule"], record["sender_domain"]) == (
        "not-checked",
        "default",
        "",
    )
