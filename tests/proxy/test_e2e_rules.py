"""SPEC 2: which encryption rule decides a (sender, recipient) pair, end to end.

The upstream offers STARTTLS with a certificate the profile trusts, so the
rule that won is visible twice: in how the message reached the upstream
(``recipient_encryption = "none"`` -> clear, ``"required"`` -> TLS) and in the
``rule`` field of the transaction record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.proxy.helpers import (
    OTHER_TRANSACTION,
    AiosmtpdUpstream,
    GatewayHarness,
    RawClient,
    insecure_client_context,
    rule,
    server_context,
    smtplib_send,
)


@pytest.fixture
def tls_upstream(
    make_upstream: Callable[..., AiosmtpdUpstream], upstream_cert: Any
) -> AiosmtpdUpstream:
    return make_upstream(starttls=server_context(upstream_cert))


def send(gate: GatewayHarness, sender: str, recipient: str, n: int) -> dict[str, Any]:
    """Send one message in clear; return the n-th transaction record."""
    assert smtplib_send(gate.port, sender, [recipient], starttls=False) == {}
    return gate.transaction(n)


def test_first_enabled_matching_rule_wins(make_gate: Any, tls_upstream: AiosmtpdUpstream) -> None:
    gate = make_gate(
        tls_upstream.port,
        rules=[
            rule(recipient="clear.example", recipient_encryption="none"),
            rule(recipient="clear.example", recipient_encryption="required"),  # shadowed
            rule(recipient_encryption="required"),
        ],
    )
    first = send(gate, "a@sender.example", "b@clear.example", 1)
    assert (first["rule"], first["upstream_tls"], first["outcome"]) == ("1", "none", "delivered")
    second = send(gate, "a@sender.example", "b@other.example", 2)
    assert (second["rule"], second["upstream_tls"], second["upstream_verify"]) == (
        "3",
        "TLSv1.3",
        "ok",
    )
    assert [m.tls_version for m in tls_upstream.messages] == [None, "TLSv1.3"]
    assert [m.rcpt_tos for m in tls_upstream.messages] == [["b@clear.example"], ["b@other.example"]]


def test_disabled_rule_is_skipped(make_gate: Any, tls_upstream: AiosmtpdUpstream) -> None:
    gate = make_gate(
        tls_upstream.port,
        rules=[
            rule(recipient="clear.example", recipient_encryption="none", enabled=False),
            rule(recipient_encryption="required"),
        ],
    )
    record = send(gate, "a@sender.example", "b@clear.example", 1)
    assert (record["rule"], record["upstream_tls"], record["outcome"]) == (
        "2",
        "TLSv1.3",
        "delivered",
    )
    assert tls_upstream.messages[0].tls_version == "TLSv1.3"


def test_default_applies_when_no_rule_matches(
    make_gate: Any, tls_upstream: AiosmtpdUpstream
) -> None:
    """Default: sender optional (clear accepted), recipient preferred (TLS when offered)."""
    gate = make_gate(
        tls_upstream.port,
        rules=[
            rule(sender="other.example", recipient_encryption="none"),
            rule(sender="*", recipient="nowhere.example", sender_encryption="required"),
        ],
    )
    with RawClient(gate.port) as client:
        assert b"STARTTLS" in client.ehlo().lines  # the default wants sender encryption
    record = send(gate, "a@sender.example", "b@rcpt.example", 1)
    assert record["rule"] == "default"
    assert (record["client_tls"], record["upstream_tls"], record["outcome"]) == (
        "none",
        "TLSv1.3",
        "delivered",
    )
    assert tls_upstream.messages[0].tls_version == "TLSv1.3"
    # The rule's own sender still gets its rule.
    record = send(gate, "a@other.example", "b@rcpt.example", 2)
    assert (record["rule"], record["upstream_tls"]) == ("1", "none")


def test_empty_rule_list_is_the_default(make_gate: Any, tls_upstream: AiosmtpdUpstream) -> None:
    gate = make_gate(tls_upstream.port, rules=[])
    record = send(gate, "a@sender.example", "b@rcpt.example", 1)
    assert (record["rule"], record["upstream_tls"], record["outcome"]) == (
        "default",
        "TLSv1.3",
        "delivered",
    )


@pytest.mark.parametrize("side", ["recipient", "sender"])
def test_subdomain_pattern_vs_exact_pattern(
    make_gate: Any, tls_upstream: AiosmtpdUpstream, side: str
) -> None:
    gate = make_gate(
        tls_upstream.port,
        rules=[
            rule(**{side: "*.example.com"}, recipient_encryption="none"),
            rule(**{side: "example.com"}, recipient_encryption="required"),
        ],
    )
    cases = [
        ("sub.example.com", "1", "none"),
        ("deep.sub.example.com", "1", "none"),
        ("example.com", "2", "TLSv1.3"),
        ("EXAMPLE.COM", "2", "TLSv1.3"),  # case-insensitive
        ("notexample.com", "default", "TLSv1.3"),
        ("example.com.evil.test", "default", "TLSv1.3"),
    ]
    for n, (domain, want_rule, want_tls) in enumerate(cases, 1):
        sender, recipient = "a@sender.example", "b@rcpt.example"
        if side == "recipient":
            recipient = f"b@{domain}"
        else:
            sender = f"a@{domain}"
        record = send(gate, sender, recipient, n)
        assert (record["rule"], record["upstream_tls"]) == (want_rule, want_tls), domain
        logged = record["recipient_domains"][0] if side == "recipient" else record["sender_domain"]
        assert logged == domain.lower()
    assert [m.tls_version or "none" for m in tls_upstream.messages] == [c[2] for c in cases]


@pytest.mark.parametrize("pattern", ["bücher.example", "xn--bcher-kva.example", "BÜCHER.example"])
def test_idna_u_label_and_a_label_are_the_same_domain(
    make_gate: Any, tls_upstream: AiosmtpdUpstream, pattern: str
) -> None:
    gate = make_gate(
        tls_upstream.port,
        rules=[
            rule(recipient=pattern, recipient_encryption="required"),
            rule(recipient_encryption="none"),
        ],
    )
    with RawClient(gate.port) as client:
        assert client.ehlo().code == 250
        client.starttls(insecure_client_context())
        assert b"SMTPUTF8" in client.ehlo().lines
        # A-label, upper-case A-label, and the U-label under SMTPUTF8, in one transaction.
        assert client.cmd("MAIL FROM:<a@sender.example> SMTPUTF8").code == 250
        assert client.cmd("RCPT TO:<one@xn--bcher-kva.example>").code == 250
        assert client.cmd("RCPT TO:<two@XN--BCHER-KVA.EXAMPLE>").code == 250
        assert client.cmd("RCPT TO:<drei@bücher.example>").code == 250
        # Same letters, different domain: rule 2 (none) -> another upstream mode.
        assert str(client.cmd("RCPT TO:<vier@buecher.example>")) == OTHER_TRANSACTION
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: idna\r\n\r\nhi\r\n.").code == 250
        assert client.cmd("QUIT").code == 221
    record = gate.transaction()
    assert record["rule"] == "1"
    assert record["recipient_domains"] == ["xn--bcher-kva.example"] * 3
    assert (record["upstream_tls"], record["upstream_verify"]) == ("TLSv1.3", "ok")
    (received,) = tls_upstream.messages
    assert received.tls_version == "TLSv1.3"
    assert received.rcpt_tos == [
        "one@xn--bcher-kva.example",
        "two@XN--BCHER-KVA.EXAMPLE",
        "drei@bücher.example",
    ]


def test_null_sender_is_matched_only_by_star(
    make_gate: Any, tls_upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(
        tls_upstream.port,
        rules=[
            rule(sender="example.com", recipient_encryption="none"),
            rule(sender="*.example.com", recipient_encryption="none"),
            rule(sender="*", recipient_encryption="required"),
        ],
    )
    bounce = send(gate, "", "b@rcpt.example", 1)
    assert (bounce["rule"], bounce["sender_domain"], bounce["upstream_tls"]) == (
        "3",
        "",
        "TLSv1.3",
    )
    normal = send(gate, "a@example.com", "b@rcpt.example", 2)
    assert (normal["rule"], normal["upstream_tls"]) == ("1", "none")
    assert [m.mail_from for m in tls_upstream.messages] == ["<>", "a@example.com"]


def test_null_sender_falls_to_default_without_a_star_rule(
    make_gate: Any, tls_upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(
        tls_upstream.port,
        rules=[rule(sender="example.com", recipient_encryption="none")],
    )
    record = send(gate, "", "b@rcpt.example", 1)
    assert (record["rule"], record["upstream_tls"]) == ("default", "TLSv1.3")
