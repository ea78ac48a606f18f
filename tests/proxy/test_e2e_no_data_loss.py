"""SPEC 2.3: no data loss — replies relayed, failures stay temporary, nothing
partial delivered, canonical output (dot-stuffing), and STARTTLS injection.
Smuggling (bare CR, LF, NUL around the dot): test_e2e_smuggling.py."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from typing import Any

import pytest

from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import (
    NO_VALID_RECIPIENTS,
    TIMEOUT,
    UPSTREAM_LOST,
    UPSTREAM_UNAVAILABLE,
    AiosmtpdUpstream,
    GatewayHarness,
    RawClient,
    insecure_client_context,
    rule,
    server_context,
)

MakeRaw = Callable[..., ScriptedUpstream]
Make = Callable[..., AiosmtpdUpstream]
FAST = {"command_timeout": "2s", "data_timeout": "2s"}


def open_transaction(gate: GatewayHarness, *, starttls: bool = False) -> RawClient:
    """EHLO, MAIL, RCPT, DATA (354) on a fresh connection."""
    client = RawClient(gate.port)
    client.ehlo()
    if starttls:
        client.starttls(insecure_client_context())
        client.ehlo()
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
    assert client.cmd("DATA").code == 354
    return client


# --- the final reply comes from the upstream ----------------------------------------------


@pytest.mark.parametrize(
    ("upstream_reply", "outcome"),
    [
        ("451 4.3.0 Upstream queue full, come back later", "tempfail"),
        ("554 5.7.1 Upstream content filter says no", "rejected"),
    ],
)
def test_final_reply_is_relayed_verbatim(
    make_gate: Any, make_upstream: Make, upstream_reply: str, outcome: str
) -> None:
    upstream = make_upstream(data_reply=upstream_reply)
    gate = make_gate(upstream.port)
    with open_transaction(gate) as client:
        answer = client.cmd(b"Subject: s\r\n\r\nbody\r\n.")
        assert str(answer) == upstream_reply
        assert client.cmd("QUIT").code == 221
    record = gate.transaction()
    assert (record["outcome"], record["reply"]) == (outcome, int(upstream_reply[:3]))


def test_multiline_final_reply_is_relayed_verbatim(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream(
        dot_reply=b"452-4.2.2 Mailbox full\r\n452 4.2.2 Try again tomorrow\r\n"
    )
    gate = make_gate(upstream.port)
    with open_transaction(gate) as client:
        answer = client.cmd(b"Subject: s\r\n\r\nbody\r\n.")
    assert (answer.code, answer.lines) == (
        452,
        (b"4.2.2 Mailbox full", b"4.2.2 Try again tomorrow"),
    )
    assert gate.transaction()["outcome"] == "tempfail"


def test_smtplib_sees_upstream_tempfail_as_tempfail(make_gate: Any, make_upstream: Make) -> None:
    upstream = make_upstream(data_reply="451 4.3.0 Later")
    gate = make_gate(upstream.port)
    with (
        smtplib.SMTP("127.0.0.1", gate.port, timeout=TIMEOUT) as client,
        pytest.raises(smtplib.SMTPDataError) as info,
    ):
        client.sendmail("a@sender.example", ["b@rcpt.example"], b"Subject: s\r\n\r\nx\r\n")
    assert (info.value.smtp_code, info.value.smtp_error) == (451, b"4.3.0 Later")


# --- upstream failures during the transaction ------------------------------------------------


def test_upstream_drops_mid_data_gives_451_lost(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream(drop_after_body_bytes=1000)
    gate = make_gate(upstream.port)
    with open_transaction(gate) as client:
        client.send(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n")
        client.send((b"y" * 70 + b"\r\n") * 2000)
        answer = client.cmd(b".")
        assert str(answer) == UPSTREAM_LOST
        assert client.cmd("NOOP").code == 250  # the session survives
    assert upstream.messages == []
    record = gate.transaction()
    assert (record["outcome"], record["reply"]) == ("tempfail", answer.code)


def test_upstream_drops_at_the_first_body_line_gives_451_lost(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream(drop_after_body_bytes=0)
    gate = make_gate(upstream.port)
    with open_transaction(gate) as client:
        # The raw upstream hangs up as soon as the first body line arrives.
        answer = client.cmd(b"Subject: s\r\n\r\nbody\r\n.")
        assert str(answer) == UPSTREAM_LOST
    assert upstream.messages == []


@pytest.mark.parametrize("how", ["drop", "close"])
def test_upstream_lost_mid_transaction_never_delivers_a_partial_envelope(
    make_gate: Any, make_scripted_upstream: MakeRaw, how: str
) -> None:
    """Recipients accepted on a lost upstream connection cannot move to a new one."""
    upstream = make_scripted_upstream(rcpt_failure=(2, how))
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<one@rcpt.example>").code == 250
        second = client.cmd("RCPT TO:<two@rcpt.example>")
        third = client.cmd("RCPT TO:<three@rcpt.example>")
        data = client.cmd("DATA")
        assert client.cmd("QUIT").code == 221
    # "drop": no answer to the second RCPT; "close": its 250 came, then the connection went.
    # Either way the lost connection's recipients cannot move to a new one: every further
    # reply is the temporary "lost", and nothing is delivered.
    assert str(second) == (UPSTREAM_LOST if how == "drop" else "250 2.1.5 Ok")
    assert (str(third), str(data)) == (UPSTREAM_LOST, UPSTREAM_LOST)
    assert upstream.messages == []


def test_upstream_never_answers_the_final_dot(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream(dot_reply=None)
    gate = make_gate(upstream.port, general=FAST)
    with open_transaction(gate) as client:
        answer = client.cmd(b"Subject: s\r\n\r\nbody\r\n.")
        assert str(answer) == UPSTREAM_LOST
    record = gate.transaction()
    assert (record["outcome"], record["reply"]) == ("tempfail", answer.code)


def test_upstream_timeout_over_tls_is_a_tempfail_logged_with_its_tls(
    make_gate: Any, make_upstream: Make, upstream_cert: Any
) -> None:
    """The upstream takes longer than data_timeout to answer the dot: 4xx, never 250."""
    upstream = make_upstream(starttls=server_context(upstream_cert), data_delay=4)
    gate = make_gate(upstream.port, general=FAST, rules=[rule(recipient_encryption="required")])
    with open_transaction(gate) as client:
        answer = client.cmd(b"Subject: s\r\n\r\nbody\r\n.")
        assert str(answer) == UPSTREAM_LOST
    record = gate.transaction()
    assert (record["outcome"], record["reply"]) == ("tempfail", 451)
    assert (record["upstream_tls"], record["upstream_verify"]) == ("TLSv1.3", "ok")


def test_upstream_never_greets(make_gate: Any, make_scripted_upstream: MakeRaw) -> None:
    upstream = make_scripted_upstream(greeting=None)
    gate = make_gate(upstream.port, general=FAST)
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        answer = client.cmd("RCPT TO:<b@rcpt.example>")
        assert str(answer) == UPSTREAM_UNAVAILABLE
        assert str(client.cmd("DATA")) == NO_VALID_RECIPIENTS
    assert gate.wait_record("rcpt_rejected")[0]["reply"] == 451


@pytest.mark.parametrize("where", ["greeting", "final-dot"])
def test_upstream_sends_garbage(
    make_gate: Any, make_scripted_upstream: MakeRaw, where: str
) -> None:
    garbage = b"\x16\x03\x01 HTTP/1.1 400 Bad Request\r\n"
    if where == "greeting":
        upstream = make_scripted_upstream(greeting=garbage)
    else:
        upstream = make_scripted_upstream(dot_reply=garbage)
    gate = make_gate(upstream.port, general=FAST)
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        rcpt = client.cmd("RCPT TO:<b@rcpt.example>")
        if where == "greeting":
            assert str(rcpt) == UPSTREAM_UNAVAILABLE
            return
        assert rcpt.code == 250
        assert client.cmd("DATA").code == 354
        answer = client.cmd(b"Subject: s\r\n\r\nbody\r\n.")
        assert str(answer) == UPSTREAM_LOST
    assert gate.transaction()["outcome"] == "tempfail"


# --- the client goes away ----------------------------------------------------------------------


def test_client_disconnect_before_final_dot_delivers_nothing(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port)
    client = open_transaction(gate)
    client.send(b"Subject: partial\r\n\r\n" + b"line\r\n" * 500)
    client.close()
    record = gate.transaction()
    assert (record["outcome"], record["recipient_domains"]) == ("aborted", ["rcpt.example"])
    gate.wait_record("session_end")
    assert upstream.messages == []
    # The upstream got DATA (and maybe part of the body: the abort may discard what
    # was still buffered) but never an end of data.
    transcript = bytes(upstream.transcripts[0])
    assert b"DATA\r\n" in transcript
    assert b"\r\n.\r\n" not in transcript.split(b"DATA\r\n", 1)[1]


def test_client_disconnect_mid_data_over_tls_upstream(
    make_gate: Any, make_upstream: Make, upstream_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(upstream_cert))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="required")])
    client = open_transaction(gate, starttls=True)
    client.send(b"Subject: partial\r\n\r\n" + b"line\r\n" * 500)
    client.close()
    record = gate.transaction()
    assert (record["outcome"], record["reply"]) == ("aborted", 0)
    assert (record["client_tls"], record["upstream_tls"], record["upstream_verify"]) == (
        "TLSv1.3",
        "TLSv1.3",
        "ok",
    )
    gate.wait_record("session_end")
    assert upstream.messages == []


# --- STARTTLS injection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "injected", [b"RSET\r\n", b"MAIL FROM:<inj@evil.example>\r\n"], ids=["RSET", "MAIL"]
)
def test_commands_pipelined_after_starttls_are_discarded(
    make_gate: Any, make_upstream: Make, injected: bytes
) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        assert b"STARTTLS" in client.ehlo().lines
        client.send(b"STARTTLS\r\n" + injected)
        assert client.reply().code == 220
        client.sock = insecure_client_context().wrap_socket(client.sock)
        # Inside TLS the first reply must be the EHLO's, not an answer to the injection.
        ehlo = client.ehlo()
        assert ehlo.code == 250 and ehlo.lines[0] == b"mx.example.test"
        assert str(client.cmd("NOOP")) == "250 2.0.0 Ok"
        assert client.pending() == b""
        # An injected MAIL did not open a transaction.
        assert client.cmd("RCPT TO:<b@rcpt.example>").code == 503
    record = gate.wait_record("starttls_injection")[0]
    assert record["discarded_bytes"] == len(injected)


# --- dot-stuffing and pipelining --------------------------------------------------------------


@pytest.mark.parametrize("received_header", [False, True])
def test_dot_stuffing_preserved_end_to_end(
    make_gate: Any, make_scripted_upstream: MakeRaw, received_header: bool
) -> None:
    upstream = make_scripted_upstream()
    gate = make_gate(upstream.port, general={"received_header": received_header})
    lines = [b".first line starts with a dot", b"..two dots", b".", b"...", b"plain", b". x"]
    content = b"\r\n".join(lines * 3000) + b"\r\n"  # large: dots cross read boundaries
    with smtplib.SMTP("127.0.0.1", gate.port, timeout=TIMEOUT) as client:
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], content) == {}
    (received,) = upstream.messages
    wire = received.wire
    if received_header:
        assert wire.startswith(b"Received: ")
        wire = wire[wire.index(b"\r\n", wire.index(b"\tid ")) + 2 :]
    # smtplib stuffs exactly like RFC 5321 4.5.2; the upstream must see the same bytes.
    assert wire == smtplib.quotedata(content.decode()).encode()
    assert gate.transaction()["outcome"] == "delivered"


def test_pipelined_commands_get_ordered_replies(make_gate: Any, make_upstream: Make) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        assert b"PIPELINING" in client.ehlo().lines
        client.send(
            b"MAIL FROM:<a@sender.example>\r\n"
            b"RCPT TO:<one@rcpt.example>\r\n"
            b"RCPT FROM:<wrong verb>\r\n"
            b"RCPT TO:<two@rcpt.example>\r\n"
            b"DATA\r\n"
        )
        assert [client.reply().code for _ in range(5)] == [250, 250, 501, 250, 354]
        client.send(b"Subject: p\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
        assert [client.reply().code for _ in range(3)] == [250, 250, 221]
    (received,) = upstream.messages
    assert received.rcpt_tos == ["one@rcpt.example", "two@rcpt.example"]


def test_pipelined_batches_with_refusals_keep_both_legs_in_step(
    make_gate: Any, make_scripted_upstream: MakeRaw
) -> None:
    """Refusals by the rules (530) and by the upstream (550) inside pipelined batches,
    including a DATA that has no recipient left."""
    upstream = make_scripted_upstream(rcpt_replies={"bad": b"550 5.1.1 No such user\r\n"})
    gate = make_gate(
        upstream.port, rules=[rule(recipient="secure.example", sender_encryption="required")]
    )
    with RawClient(gate.port) as client:
        client.ehlo()
        client.send(
            b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<bad@rcpt.example>\r\n"
            b"RCPT TO:<x@secure.example>\r\nRCPT TO:<good@rcpt.example>\r\nDATA\r\n"
        )
        assert [client.reply().code for _ in range(5)] == [250, 550, 530, 250, 354]
        client.send(b"Subject: one\r\n\r\nx\r\n.\r\n")
        assert client.reply().code == 250
        client.send(
            b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<bad@rcpt.example>\r\nDATA\r\nRSET\r\n"
        )
        assert [client.reply().code for _ in range(4)] == [250, 550, 554, 250]
        client.send(
            b"MAIL FROM:<c@sender.example>\r\nRCPT TO:<good2@rcpt.example>\r\n"
            b"RCPT TO:<bad@rcpt.example>\r\nDATA\r\n"
        )
        assert [client.reply().code for _ in range(4)] == [250, 250, 550, 354]
        client.send(b"Subject: two\r\n\r\nx\r\n.\r\nQUIT\r\n")
        assert [client.reply().code for _ in range(2)] == [250, 221]
    assert [(m.mail_from, m.rcpt_tos) for m in upstream.messages] == [
        (b"<a@sender.example>", [b"<good@rcpt.example>"]),
        (b"<c@sender.example>", [b"<good2@rcpt.example>"]),
    ]
    assert not any(b"secure.example" in c for c in upstream.commands)


def test_ehlo_in_a_transaction_starts_over_on_both_legs(
    make_gate: Any, make_upstream: Make
) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<x@rcpt.example>").code == 250
        assert client.ehlo().code == 250  # RFC 5321 4.1.4: EHLO resets the transaction
        assert client.cmd("MAIL FROM:<b@sender.example>").code == 250
        assert client.cmd("RCPT TO:<y@rcpt.example>").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: s\r\n\r\nx\r\n.").code == 250
    (received,) = upstream.messages
    assert (received.mail_from, received.rcpt_tos) == ("b@sender.example", ["y@rcpt.example"])
    assert gate.transaction(1)["outcome"] == "aborted"
    assert gate.transaction(2)["outcome"] == "delivered"


def test_starttls_inside_a_transaction_is_refused(make_gate: Any, make_upstream: Make) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<x@rcpt.example>").code == 250
        assert str(client.cmd("STARTTLS")) == "503 5.5.1 Error: MAIL transaction in progress"
        assert client.cmd("DATA").code == 354  # the transaction is intact
        assert client.cmd(b"Subject: s\r\n\r\nx\r\n.").code == 250
    assert upstream.messages[0].rcpt_tos == ["x@rcpt.example"]
