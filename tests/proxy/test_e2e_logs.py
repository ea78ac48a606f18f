"""SPEC 6/7: the summary record of a transaction carries every field SPEC 7 lists."""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import (
    MUST_STARTTLS,
    OTHER_TRANSACTION,
    TIMEOUT,
    UPSTREAM_TLS_UNAVAILABLE,
    AiosmtpdUpstream,
    GatewayHarness,
    RawClient,
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


# --- issue 6 item 9: records an administrator can trace mail with ---------------------------

TRACED = (
    b"From: a@sender.example\r\n"
    b"Message-ID:\r\n"
    b"  <20261129.42@sender.example>\r\n"
    b"Subject: trace me\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line that starts with a dot\r\n"
    b"Message-ID: <not-a-header@body.example>\r\n"
)


def send_raw(port: int, sender: str, recipients: list[str], content: bytes) -> list[str]:
    """One transaction over a raw socket; returns every reply from MAIL to the final dot."""
    with RawClient(port) as client:
        client.ehlo()
        answers = [str(client.cmd(f"MAIL FROM:<{sender}>"))]
        answers += [str(client.cmd(f"RCPT TO:<{rcpt}>")) for rcpt in recipients]
        answers.append(str(client.cmd("DATA")))
        if answers[-1].startswith("354"):
            stuffed = content.replace(b"\r\n.", b"\r\n..")
            answers.append(str(client.cmd(stuffed + b".")))
        assert client.cmd("QUIT").code == 221
    return answers


def test_transaction_record_names_the_envelope_size_message_id_and_upstream_queue_id(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    upstream = make_upstream(data_reply="250 2.0.0 Ok: queued as 4XyZ12")
    gate = make_gate(upstream.port)
    answers = send_raw(
        gate.port, "Alice@Sender.Example", ["bob@rcpt.example", "carol@two.example"], TRACED
    )
    assert answers[-1] == "250 2.0.0 Ok: queued as 4XyZ12"
    record = gate.transaction()
    assert record["sender"] == "Alice@Sender.Example"
    assert record["recipients"] == ["bob@rcpt.example", "carol@two.example"]
    # The content as the client meant it: unstuffed, without the Received: header we add.
    assert record["size"] == len(TRACED) == 175
    assert record["message_id"] == "<20261129.42@sender.example>"
    assert record["upstream_reply"] == "250 2.0.0 Ok: queued as 4XyZ12"
    assert record["upstream_fallback"] == "upstream does not offer STARTTLS"
    (received,) = upstream.messages
    assert received.content.endswith(TRACED)


def test_null_sender_is_logged_as_angle_brackets(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    send_raw(gate.port, "", ["bob@rcpt.example"], b"Subject: bounce\r\n\r\nbody\r\n")
    record = gate.transaction()
    assert (record["sender"], record["sender_domain"], record["message_id"]) == ("<>", "", "")
    assert record["recipients"] == ["bob@rcpt.example"]


def test_addresses_false_leaves_the_addresses_out(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    upstream = make_upstream()
    gate = make_gate(
        upstream.port,
        logging={"addresses": False},
        rules=[rule(recipient="refused.example", sender_encryption="required")],
    )
    send_raw(gate.port, "a@sender.example", ["b@refused.example", "c@rcpt.example"], TRACED)
    record = gate.transaction()
    assert "sender" not in record and "recipients" not in record
    assert (record["sender_domain"], record["recipient_domains"]) == (
        "sender.example",
        ["rcpt.example"],
    )
    rejected = gate.wait_record("rcpt_rejected")[0]
    assert "sender" not in rejected and "recipient" not in rejected
    assert rejected["recipient_domain"] == "refused.example"


def test_message_id_is_looked_for_in_the_header_section_only(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    no_header = b"\r\nMessage-ID: <in-the-body@x.example>\r\n"
    # 1,000 header lines of 72 bytes: the Message-ID after them is past the 64 KiB looked at.
    padding = b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"a" * 58) for i in range(1000))
    past_limit = padding + b"Message-ID: <late@x.example>\r\n\r\nbody\r\n"
    lower_case = b"subject: s\r\nmessage-id:<lower@x.example>\r\n\r\nbody\r\n"
    for content in (no_header, past_limit, lower_case):
        send_raw(gate.port, "a@sender.example", ["b@rcpt.example"], content)
    records = gate.wait_record("transaction", count=3)
    assert [(r["message_id"], r["size"]) for r in records] == [
        ("", len(no_header)),
        ("", len(past_limit)),
        ("<lower@x.example>", len(lower_case)),
    ]


def test_rejections_always_give_a_reason(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    upstream = make_upstream()
    gate = make_gate(
        upstream.port,
        rules=[
            rule(recipient="clear-refused.example", sender_encryption="required"),
            rule(recipient="needs-tls.example", recipient_encryption="required"),
            rule(recipient="*", recipient_encryption="none"),
        ],
    )
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<>").code == 250
        assert str(client.cmd("RCPT TO:<x@clear-refused.example>")) == MUST_STARTTLS
        assert client.cmd("RCPT TO:<y@rcpt.example>").code == 250
        assert str(client.cmd("RCPT TO:<z@needs-tls.example>")) == OTHER_TRANSACTION
        assert client.cmd("RSET").code == 250
        assert client.cmd("QUIT").code == 221
    first, second = gate.wait_record("rcpt_rejected", count=2)
    assert {k: first[k] for k in ("sender", "recipient", "reply", "reason")} == {
        "sender": "<>",
        "recipient": "x@clear-refused.example",
        "reply": 530,
        "reason": "the rule requires an encrypted client leg",
    }
    assert {k: second[k] for k in ("recipient", "reply", "reason")} == {
        "recipient": "z@needs-tls.example",
        "reply": 452,
        "reason": "needs upstream TLS required, the transaction's leg is none",
    }


def test_tls_failures_give_a_reason_also_when_the_error_has_no_text(
    make_gate: Any, make_scripted_upstream: Callable[..., ScriptedUpstream]
) -> None:
    # The upstream answers 220 to STARTTLS and closes: the error has no text.
    upstream = make_scripted_upstream(after_starttls=b"")
    gate = make_gate(upstream.port, rules=[rule(recipient="*", recipient_encryption="required")])
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert str(client.cmd("RCPT TO:<b@rcpt.example>")) == UPSTREAM_TLS_UNAVAILABLE
        assert client.cmd("QUIT").code == 221
    # A client that asks for STARTTLS and leaves instead of a handshake.
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
    rejected = gate.wait_record("rcpt_rejected")[0]
    assert rejected["reason"] == "TLS handshake failed: connection closed by the peer"
    failed = gate.wait_record("starttls_failed")[0]
    assert failed["reason"] == "connection closed by the peer"


@pytest.mark.parametrize(
    ("upstream_kwargs", "fallback"),
    [
        (
            {"after_starttls": b""},
            "TLS handshake failed: connection closed by the peer",
        ),
        (
            {"starttls_reply": b"454 4.7.0 TLS not available\r\n"},
            "STARTTLS refused: 454 4.7.0 TLS not available",
        ),
        ({}, "upstream does not offer STARTTLS"),
    ],
    ids=["handshake-failed", "starttls-refused", "not-offered"],
)
def test_preferred_leg_in_clear_records_why_it_fell_back(
    make_gate: Any,
    make_scripted_upstream: Callable[..., ScriptedUpstream],
    upstream_kwargs: dict[str, Any],
    fallback: str,
) -> None:
    upstream = make_scripted_upstream(**upstream_kwargs)
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="preferred")])
    answers = send_raw(gate.port, "a@sender.example", ["b@rcpt.example"], TRACED)
    assert answers[-1] == "250 2.0.0 Ok queued"
    connected = gate.wait_record("upstream_connected")[0]
    assert (connected["mode"], connected["upstream_tls"], connected["upstream_fallback"]) == (
        "opportunistic",
        "none",
        fallback,
    )
    record = gate.transaction()
    assert (record["upstream_fallback"], record["outcome"]) == (fallback, "delivered")
    assert len(upstream.messages) == 1


def test_preferred_leg_with_tls_records_no_fallback(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream], upstream_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(upstream_cert))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="preferred")])
    send_raw(gate.port, "a@sender.example", ["b@rcpt.example"], TRACED)
    record = gate.transaction()
    assert (record["upstream_tls"], record["upstream_fallback"]) == ("TLSv1.3", "")


def test_mail_rejected_says_why(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    upstream = make_upstream()
    gate = make_gate(
        upstream.port,
        rules=[rule(sender="sender.example", sender_encryption="required")],
        starttls={"require_tls_for_envelope": True},
    )
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<A@Sender.Example>").code == 530
        assert client.cmd("QUIT").code == 221
    record = gate.wait_record("mail_rejected")[0]
    assert {k: record[k] for k in ("sender", "sender_domain", "reply", "reason")} == {
        "sender": "A@Sender.Example",
        "sender_domain": "sender.example",
        "reply": 530,
        "reason": "the rule requires an encrypted client leg",
    }


# --- why a session ended ---------------------------------------------------------------------


def session_end_reason(gate: GatewayHarness, client_port: int) -> str:
    (record,) = gate.wait_record("session_end", lambda r: r["client"].endswith(f":{client_port}"))
    return str(record["reason"])


def test_session_end_says_the_client_quit_or_vanished(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    gate = make_gate(make_upstream().port)
    with RawClient(gate.port) as quitting:
        port_quit = quitting.sock.getsockname()[1]
        assert quitting.cmd("QUIT").code == 221
    with RawClient(gate.port) as vanishing:
        port_gone = vanishing.sock.getsockname()[1]
        vanishing.ehlo()
    assert session_end_reason(gate, port_quit) == "client_quit"
    assert session_end_reason(gate, port_gone) == "client_disconnected"


def test_session_end_says_timeout(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    gate = make_gate(make_upstream().port, general={"command_timeout": "1s"})
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        assert client.reply().code == 421  # after a second of silence
    assert session_end_reason(gate, port) == "timeout"


def test_session_end_says_too_many_errors(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    gate = make_gate(make_upstream().port)
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        client.send(b"BOGUS\r\n" * 20)
        answers = [client.reply().code for _ in range(21)]
        assert answers == [500] * 20 + [421]
    assert session_end_reason(gate, port) == "too_many_errors"


def test_session_end_says_the_client_was_not_reading(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    # Pipelined EHLOs, no reply read: the proxy stops reading, and after command_timeout
    # of replies not taken it cuts the connection (max_commands raised: not what ends it).
    gate = make_gate(
        make_upstream().port, general={"command_timeout": "1s", "max_commands": 10_000_000}
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", gate.port))
    with sock:
        port = sock.getsockname()[1]
        sock.settimeout(3.0)
        with contextlib.suppress(OSError):  # blocks once the proxy stops reading, then cut
            for _ in range(1000):
                sock.sendall(b"EHLO client.example\r\n" * 4096)
        assert session_end_reason(gate, port) == "client_not_reading"


def test_session_end_says_server_shutdown(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    gate = make_gate(make_upstream().port)
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        client.ehlo()
        gate.stop()  # drains for 1 s, then cuts the idle session
        assert session_end_reason(gate, port) == "server_shutdown"


def test_session_end_says_starttls_failed(
    make_gate: Any, make_upstream: Callable[..., AiosmtpdUpstream]
) -> None:
    gate = make_gate(make_upstream().port)
    with RawClient(gate.port) as client:
        port = client.sock.getsockname()[1]
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.send(b"this is not a ClientHello\r\n" * 4)
        with contextlib.suppress(OSError):
            client.pending(1.0)
    assert session_end_reason(gate, port) == "starttls_failed"
