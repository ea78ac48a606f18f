"""SPEC 2.1: the client leg — when STARTTLS is advertised, and sender encryption."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from typing import Any

import pytest

from tests.proxy.helpers import (
    MUST_STARTTLS,
    NO_VALID_RECIPIENTS,
    TIMEOUT,
    TLS_ALREADY_ACTIVE,
    AiosmtpdUpstream,
    GatewayHarness,
    RawClient,
    insecure_client_context,
    message,
    rule,
    server_context,
    smtplib_send,
)


@pytest.fixture
def upstream(
    make_upstream: Callable[..., AiosmtpdUpstream], upstream_cert: Any
) -> AiosmtpdUpstream:
    return make_upstream(starttls=server_context(upstream_cert))


# --- advertising STARTTLS ----------------------------------------------------------------


def test_starttls_advertised_on_plain_listener_until_encrypted(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(upstream.port)
    with RawClient(gate.port) as client:
        assert client.greeting.code == 220
        assert b"STARTTLS" in client.ehlo().lines
        tls = client.starttls(insecure_client_context())
        assert tls.version() == "TLSv1.3"
        after = client.ehlo()
        assert after.code == 250 and b"STARTTLS" not in after.lines
        assert str(client.cmd("STARTTLS")) == TLS_ALREADY_ACTIVE
    starttls = gate.wait_record("starttls")[0]
    assert starttls["client_tls"] == "TLSv1.3"


def test_starttls_not_advertised_on_implicit_tls_listener(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(upstream.port, policy={"implicit_tls": True})
    with RawClient(gate.port, implicit_tls=insecure_client_context()) as client:
        assert client.greeting.code == 220
        ehlo = client.ehlo()
        assert ehlo.code == 250 and b"STARTTLS" not in ehlo.lines
        assert str(client.cmd("STARTTLS")) == TLS_ALREADY_ACTIVE
    assert gate.wait_record("session_start")[0]["client_tls"] == "TLSv1.3"


def test_esmtp_disabled_refuses_ehlo_and_starttls_but_helo_works(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(upstream.port, esmtp={"enabled": False}, starttls={"enabled": True})
    with RawClient(gate.port) as client:
        assert client.ehlo().code == 502
        assert client.cmd("HELO client.test").code == 250
        assert client.cmd("STARTTLS").code == 502
    with smtplib.SMTP("127.0.0.1", gate.port, timeout=TIMEOUT) as client:
        assert client.helo("client.test")[0] == 250
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], message()) == {}
    record = gate.transaction()
    assert (record["client_tls"], record["outcome"], record["reply"]) == ("none", "delivered", 250)
    assert len(upstream.messages) == 1


def test_starttls_disabled_is_not_advertised(make_gate: Any, upstream: AiosmtpdUpstream) -> None:
    gate = make_gate(upstream.port, starttls={"enabled": False})
    with RawClient(gate.port) as client:
        ehlo = client.ehlo()
        assert ehlo.code == 250 and b"STARTTLS" not in ehlo.lines
        assert b"PIPELINING" in ehlo.lines  # ESMTP itself still works
        assert client.cmd("STARTTLS").code == 502


@pytest.mark.parametrize(
    "rules",
    [
        [rule(sender_encryption="none")],
        [rule(sender="a.example", sender_encryption="none"), rule(sender_encryption="none")],
        # A disabled rule that would want encryption does not count.
        [rule(sender_encryption="optional", enabled=False), rule(sender_encryption="none")],
    ],
    ids=["catch-all", "two-rules", "disabled-optional"],
)
def test_starttls_not_advertised_when_every_rule_says_sender_none(
    make_gate: Any, upstream: AiosmtpdUpstream, rules: list[dict[str, Any]]
) -> None:
    gate = make_gate(upstream.port, rules=rules)
    with RawClient(gate.port) as client:
        ehlo = client.ehlo()
        assert ehlo.code == 250 and b"STARTTLS" not in ehlo.lines
        assert client.cmd("STARTTLS").code == 502


def test_starttls_advertised_when_one_rule_is_not_none(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(
        upstream.port,
        rules=[
            rule(sender="a.example", sender_encryption="optional"),
            rule(sender_encryption="none"),
        ],
    )
    with RawClient(gate.port) as client:
        assert b"STARTTLS" in client.ehlo().lines


# --- sender encryption ---------------------------------------------------------------------


@pytest.mark.parametrize("starttls", [False, True], ids=["clear", "encrypted"])
def test_sender_optional_accepts_clear_and_encrypted(
    make_gate: Any, upstream: AiosmtpdUpstream, starttls: bool
) -> None:
    gate = make_gate(upstream.port, rules=[rule(sender_encryption="optional")])
    assert smtplib_send(gate.port, "a@sender.example", ["b@rcpt.example"], starttls=starttls) == {}
    record = gate.transaction()
    assert record["client_tls"] == ("TLSv1.3" if starttls else "none")
    assert (record["rule"], record["outcome"], record["reply"]) == ("1", "delivered", 250)
    assert len(upstream.messages) == 1


def test_sender_none_still_accepts_an_encrypted_session(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(upstream.port, rules=[rule(sender="plain.example", sender_encryption="none")])
    assert smtplib_send(gate.port, "a@plain.example", ["b@rcpt.example"], starttls=True) == {}
    record = gate.transaction()
    assert (record["rule"], record["client_tls"], record["outcome"]) == (
        "1",
        "TLSv1.3",
        "delivered",
    )
    assert record["client_cipher"] != "none"


def _partner_gate(make_gate: Any, upstream: AiosmtpdUpstream, **starttls: Any) -> GatewayHarness:
    """One rule: mail from partner.example to secure.example needs TLS on the client leg;
    ``starttls``: more keys of ``[proxy_actions.starttls]``."""
    return make_gate(
        upstream.port,
        rules=[
            rule(sender="partner.example", recipient="secure.example", sender_encryption="required")
        ],
        starttls=starttls,
    )


def test_sender_required_switch_off_refuses_only_that_rcpt(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = _partner_gate(make_gate, upstream, require_tls_for_envelope=False)
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@partner.example>").code == 250
        assert str(client.cmd("RCPT TO:<x@secure.example>")) == MUST_STARTTLS
        assert client.cmd("RCPT TO:<y@other.example>").code == 250
        assert str(client.cmd("RCPT TO:<z@secure.example>")) == MUST_STARTTLS
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: s\r\n\r\nbody\r\n.").code == 250
        # A transaction that has only the protected recipient never takes a body in clear.
        assert client.cmd("MAIL FROM:<a@partner.example>").code == 250
        assert str(client.cmd("RCPT TO:<x@secure.example>")) == MUST_STARTTLS
        assert str(client.cmd("DATA")) == NO_VALID_RECIPIENTS
        assert client.cmd("QUIT").code == 221
    (received,) = upstream.messages
    assert received.rcpt_tos == ["y@other.example"]
    assert not any(arg == "x@secure.example" for _, arg, _ in upstream.commands)
    rejected = gate.wait_record("rcpt_rejected", count=3)
    assert {(r["recipient_domain"], r["rule"], r["reply"], r["client_tls"]) for r in rejected} == {
        ("secure.example", "1", 530, "none")
    }
    record = gate.transaction()
    assert record["recipient_domains"] == ["other.example"]
    assert (record["rule"], record["client_tls"], record["outcome"]) == (
        "default",
        "none",
        "delivered",
    )


def test_sender_required_switch_off_accepts_after_starttls(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = _partner_gate(make_gate, upstream)
    assert smtplib_send(gate.port, "a@partner.example", ["x@secure.example"], starttls=True) == {}
    record = gate.transaction()
    assert (record["rule"], record["client_tls"], record["outcome"]) == (
        "1",
        "TLSv1.3",
        "delivered",
    )


def test_sender_required_switch_on_refuses_mail_from_in_clear(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = _partner_gate(make_gate, upstream, require_tls_for_envelope=True)
    with RawClient(gate.port) as client:
        client.ehlo()
        # Refused whatever the recipient: the sender pattern matched a rule requiring TLS.
        assert str(client.cmd("MAIL FROM:<a@partner.example>")) == MUST_STARTTLS
        assert client.cmd("RCPT TO:<y@other.example>").code == 503  # no transaction
        # Other senders are not affected.
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<y@other.example>").code == 250
        assert client.cmd("RSET").code == 250
        # Encrypted, the same mail goes through.
        client.starttls(insecure_client_context())
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@partner.example>").code == 250
        assert client.cmd("RCPT TO:<x@secure.example>").code == 250
        assert client.cmd("DATA").code == 354
        assert client.cmd(b"Subject: s\r\n\r\nbody\r\n.").code == 250
        client.cmd("QUIT")
    mail_rejected = gate.wait_record("mail_rejected")[0]
    assert (mail_rejected["sender_domain"], mail_rejected["reply"]) == ("partner.example", 530)
    # Nothing of the refused mail reached the upstream in clear.
    assert [(verb, arg, tls) for verb, arg, tls in upstream.commands if "partner" in arg] == [
        ("MAIL", "a@partner.example", "TLSv1.3")
    ]
    aborted, delivered = gate.transaction(1), gate.transaction(2)
    assert (aborted["recipient_domains"], aborted["outcome"]) == (["other.example"], "aborted")
    assert (delivered["rule"], delivered["client_tls"], delivered["outcome"]) == (
        "1",
        "TLSv1.3",
        "delivered",
    )


def test_implicit_tls_listener_counts_as_encrypted(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    gate = make_gate(
        upstream.port,
        policy={"implicit_tls": True},
        rules=[rule(sender_encryption="required")],
        starttls={"require_tls_for_envelope": True},
    )
    with smtplib.SMTP_SSL(
        "127.0.0.1", gate.port, timeout=TIMEOUT, context=insecure_client_context()
    ) as client:
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], message()) == {}
    record = gate.transaction()
    assert (record["client_tls"], record["rule"], record["outcome"]) == (
        "TLSv1.3",
        "1",
        "delivered",
    )
    assert len(upstream.messages) == 1
