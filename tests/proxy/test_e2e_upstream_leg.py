"""SPEC 2.2: the upstream leg — recipient encryption required / preferred / none / allowed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.peers.scripted_upstream import NOT_A_HANDSHAKE, ScriptedUpstream
from tests.proxy.helpers import (
    NO_VALID_RECIPIENTS,
    OTHER_TRANSACTION,
    UPSTREAM_TLS_UNAVAILABLE,
    AiosmtpdUpstream,
    GatewayHarness,
    RawClient,
    insecure_client_context,
    rule,
    server_context,
    smtplib_send,
)

Make = Callable[..., AiosmtpdUpstream]


def one_rcpt(gate: GatewayHarness, recipient: str = "b@rcpt.example", *, starttls: bool) -> str:
    """MAIL + one RCPT; returns the RCPT's reply; completes the mail if the RCPT was taken."""
    with RawClient(gate.port) as client:
        client.ehlo()
        if starttls:
            client.starttls(insecure_client_context())
            client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        answer = client.cmd(f"RCPT TO:<{recipient}>")
        if answer.code == 250:
            assert client.cmd("DATA").code == 354
            assert client.cmd(b"Subject: s\r\n\r\nbody\r\n.").code == 250
        else:
            assert str(client.cmd("DATA")) == NO_VALID_RECIPIENTS  # no body without a recipient
        assert client.cmd("QUIT").code == 221
    return str(answer)


def assert_tempfail_tls(answer: str, gate: GatewayHarness, reason: str) -> dict[str, Any]:
    assert answer == UPSTREAM_TLS_UNAVAILABLE
    record = gate.wait_record("rcpt_rejected")[0]
    assert (record["reply"], record["rule"]) == (451, "1")
    assert reason in record["reason"], record["reason"]
    # The summary says the transaction was refused and nothing left on the upstream leg.
    (summary,) = gate.wait_record("transaction")
    assert (summary["outcome"], summary["reply"], summary["rule"]) == ("rejected", 451, "1")
    assert summary["recipient_domains"] == []
    return record


# --- required ------------------------------------------------------------------------------


def test_required_uses_verified_starttls(
    make_gate: Any, make_upstream: Make, upstream_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(upstream_cert))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="required")])
    assert one_rcpt(gate, starttls=False).startswith("250")
    record = gate.transaction()
    assert (record["upstream_tls"], record["upstream_verify"], record["outcome"]) == (
        "TLSv1.3",
        "ok",
        "delivered",
    )
    assert record["upstream_cipher"].startswith("TLS_")
    (received,) = upstream.messages
    assert received.tls_version == "TLSv1.3"
    assert all(tls == "TLSv1.3" for _, _, tls in upstream.commands)


def test_required_fails_when_upstream_offers_no_starttls(
    make_gate: Any, make_upstream: Make
) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="required")])
    answer = one_rcpt(gate, starttls=True)
    assert_tempfail_tls(answer, gate, "does not offer STARTTLS")
    assert upstream.commands == [] and upstream.messages == []


def test_required_fails_when_handshake_fails(
    make_gate: Any, make_scripted_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = make_scripted_upstream(after_starttls=NOT_A_HANDSHAKE)
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="required")])
    answer = one_rcpt(gate, starttls=True)
    assert_tempfail_tls(answer, gate, "handshake")
    assert upstream.connections == 1  # no second attempt in clear
    assert upstream.mail_commands == 0 and upstream.messages == []


@pytest.mark.parametrize("which", ["wrong_name_cert", "rogue_cert"])
def test_required_fails_when_validation_fails(
    make_gate: Any, make_upstream: Make, request: pytest.FixtureRequest, which: str
) -> None:
    upstream = make_upstream(starttls=server_context(request.getfixturevalue(which)))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="required")])
    answer = one_rcpt(gate, starttls=True)
    record = assert_tempfail_tls(answer, gate, "certificate verify failed")
    assert ("mismatch" in record["reason"]) == (which == "wrong_name_cert")
    # Nothing reached the upstream: no MAIL, no RCPT, no message, in clear or otherwise.
    assert upstream.commands == [] and upstream.messages == []


@pytest.mark.parametrize("which", ["upstream_cert", "rogue_cert"])
def test_required_with_implicit_tls_upstream(
    make_gate: Any, make_upstream: Make, request: pytest.FixtureRequest, which: str
) -> None:
    upstream = make_upstream(implicit=server_context(request.getfixturevalue(which)))
    gate = make_gate(
        upstream.port,
        policy={"upstream_implicit_tls": True},
        rules=[rule(recipient_encryption="required")],
    )
    answer = one_rcpt(gate, starttls=False)
    if which == "upstream_cert":
        assert answer.startswith("250")
        record = gate.transaction()
        assert (record["upstream_tls"], record["upstream_verify"]) == ("TLSv1.3", "ok")
        assert upstream.messages[0].tls_version == "TLSv1.3"
    else:
        assert_tempfail_tls(answer, gate, "certificate verify failed")
        assert upstream.commands == []


def test_required_without_validation_still_encrypts(
    make_gate: Any, make_upstream: Make, rogue_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(rogue_cert))
    gate = make_gate(
        upstream.port,
        profile={"validate_certificates": False},
        rules=[rule(recipient_encryption="required")],
    )
    assert one_rcpt(gate, starttls=False).startswith("250")
    record = gate.transaction()
    assert record["upstream_tls"] == "TLSv1.3"
    assert record["upstream_verify"].startswith("failed")  # logged, not enforced
    assert upstream.messages[0].tls_version == "TLSv1.3"


# --- preferred -----------------------------------------------------------------------------


def test_preferred_validation_failure_is_logged_not_enforced(
    make_gate: Any, make_upstream: Make, rogue_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(rogue_cert))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="preferred")])
    assert smtplib_send(gate.port, "a@sender.example", ["b@rcpt.example"], starttls=False) == {}
    record = gate.transaction()
    assert record["upstream_tls"] == "TLSv1.3"
    assert record["upstream_verify"].startswith("failed: "), record["upstream_verify"]
    assert (record["outcome"], record["reply"]) == ("delivered", 250)
    assert upstream.messages[0].tls_version == "TLSv1.3"


def test_preferred_verified_when_trusted(
    make_gate: Any, make_upstream: Make, upstream_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(upstream_cert))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="preferred")])
    assert smtplib_send(gate.port, "a@sender.example", ["b@rcpt.example"], starttls=False) == {}
    record = gate.transaction()
    assert (record["upstream_tls"], record["upstream_verify"]) == ("TLSv1.3", "ok")


def test_preferred_delivers_in_clear_when_not_offered(make_gate: Any, make_upstream: Make) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="preferred")])
    assert smtplib_send(gate.port, "a@sender.example", ["b@rcpt.example"], starttls=True) == {}
    record = gate.transaction()
    assert (record["client_tls"], record["upstream_tls"], record["outcome"]) == (
        "TLSv1.3",
        "none",
        "delivered",
    )
    assert upstream.messages[0].tls_version is None


def test_preferred_handshake_failure_retries_in_clear_on_a_new_connection(
    make_gate: Any, make_scripted_upstream: Callable[..., ScriptedUpstream]
) -> None:
    upstream = make_scripted_upstream(after_starttls=NOT_A_HANDSHAKE)
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="preferred")])
    assert smtplib_send(gate.port, "a@sender.example", ["b@rcpt.example"], starttls=False) == {}
    record = gate.transaction()
    assert (record["upstream_tls"], record["outcome"]) == ("none", "delivered")
    assert upstream.connections == 2
    assert b"STARTTLS" in upstream.transcripts[0] and b"MAIL" not in upstream.transcripts[0]
    assert b"STARTTLS" not in upstream.transcripts[1]
    assert len(upstream.messages) == 1


# --- none ----------------------------------------------------------------------------------


def test_none_stays_clear_even_if_offered(
    make_gate: Any, make_upstream: Make, upstream_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(upstream_cert))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="none")])
    assert smtplib_send(gate.port, "a@sender.example", ["b@rcpt.example"], starttls=True) == {}
    record = gate.transaction()
    assert (record["client_tls"], record["upstream_tls"], record["upstream_verify"]) == (
        "TLSv1.3",
        "none",
        "not-checked",
    )
    assert upstream.messages[0].tls_version is None


# --- allowed -------------------------------------------------------------------------------


def test_allowed_clear_client_means_clear_upstream(
    make_gate: Any, make_upstream: Make, upstream_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(upstream_cert))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="allowed")])
    assert one_rcpt(gate, starttls=False).startswith("250")
    record = gate.transaction()
    assert (record["client_tls"], record["upstream_tls"]) == ("none", "none")
    assert upstream.messages[0].tls_version is None


def test_allowed_encrypted_client_means_verified_tls_upstream(
    make_gate: Any, make_upstream: Make, upstream_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(upstream_cert))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="allowed")])
    assert one_rcpt(gate, starttls=True).startswith("250")
    record = gate.transaction()
    assert (record["client_tls"], record["upstream_tls"], record["upstream_verify"]) == (
        "TLSv1.3",
        "TLSv1.3",
        "ok",
    )
    assert upstream.messages[0].tls_version == "TLSv1.3"


@pytest.mark.parametrize("which", ["plain", "rogue_cert"])
def test_allowed_encrypted_client_is_never_downgraded(
    make_gate: Any, make_upstream: Make, request: pytest.FixtureRequest, which: str
) -> None:
    if which == "plain":
        upstream = make_upstream()
    else:
        upstream = make_upstream(starttls=server_context(request.getfixturevalue(which)))
    gate = make_gate(upstream.port, rules=[rule(recipient_encryption="allowed")])
    answer = one_rcpt(gate, starttls=True)
    assert_tempfail_tls(
        answer, gate, "does not offer STARTTLS" if which == "plain" else "certificate verify failed"
    )
    assert upstream.commands == [] and upstream.messages == []
    # The same mail from a cleartext client is delivered (in clear).
    assert one_rcpt(gate, starttls=False).startswith("250")
    assert [m.tls_version for m in upstream.messages] == [None]


# --- one upstream per transaction ------------------------------------------------------------


def test_recipient_needing_another_upstream_mode_gets_452_and_next_transaction(
    make_gate: Any, make_upstream: Make, upstream_cert: Any
) -> None:
    upstream = make_upstream(starttls=server_context(upstream_cert))
    gate = make_gate(
        upstream.port,
        rules=[
            rule(recipient="secure.example", recipient_encryption="required"),
            rule(recipient="plain.example", recipient_encryption="none"),
        ],
    )
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<x@secure.example>").code == 250
        other = client.cmd("RCPT TO:<y@plain.example>")
        assert str(other) == OTHER_TRANSACTION
        assert client.cmd("RCPT TO:<z@secure.example>").code == 250  # same mode: fine
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: first\r\n\r\nbody\r\n.").code == 250
        # The standard MTA behaviour: the deferred recipient in a transaction of its own.
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<y@plain.example>").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: second\r\n\r\nbody\r\n.").code == 250
        client.cmd("QUIT")
    first, second = upstream.messages
    assert (first.rcpt_tos, first.tls_version) == (
        ["x@secure.example", "z@secure.example"],
        "TLSv1.3",
    )
    assert (second.rcpt_tos, second.tls_version) == (["y@plain.example"], None)
    rejected = gate.wait_record("rcpt_rejected")[0]
    assert (rejected["recipient_domain"], rejected["reply"], rejected["rule"]) == (
        "plain.example",
        452,
        "2",
    )
    one, two = gate.transaction(1), gate.transaction(2)
    assert (one["rule"], one["upstream_tls"], one["recipient_domains"]) == (
        "1",
        "TLSv1.3",
        ["secure.example", "secure.example"],
    )
    assert (two["rule"], two["upstream_tls"], two["recipient_domains"]) == (
        "2",
        "none",
        ["plain.example"],
    )
