"""SPEC 3 (``ocsp``, ``ocsp_allow_unavailable``) with SPEC 2.2 on the upstream leg, end to end.

Sending client -> smtpgate -> aiosmtpd upstream (STARTTLS) over 127.0.0.1, the
upstream presenting a certificate from a test CA whose Authority Information
Access points at a local OCSP responder (:mod:`tests.peers.ocsp`). The TLS
profile trusts exactly that CA (``ca_file``) and has ``ocsp = true``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.peers.ocsp import GOOD, REVOKED, Leaf, OCSPResponder, closed_port_url, reach_directly
from tests.proxy.helpers import (
    NO_VALID_RECIPIENTS,
    UPSTREAM_TLS_UNAVAILABLE,
    AiosmtpdUpstream,
    GatewayHarness,
    RawClient,
    insecure_client_context,
    rule,
    smtplib_send,
)

Make = Callable[..., AiosmtpdUpstream]
SENDER = "a@sender.example"
RCPT = "b@rcpt.example"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    reach_directly(monkeypatch)


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OCSPResponder]:
    state = OCSPResponder(tmp_path_factory.mktemp("ocsp-e2e"), "ocsp-e2e").start()
    yield state
    state.stop()


def _gate(
    make_gate: Any,
    upstream: AiosmtpdUpstream,
    responder: OCSPResponder,
    mode: str,
    **profile: Any,
) -> GatewayHarness:
    return make_gate(
        upstream.port,
        profile={"ca_file": str(responder.ca_file), "ocsp": True, **profile},
        rules=[rule(recipient_encryption=mode)],
    )


def _upstream(make_upstream: Make, leaf: Leaf) -> AiosmtpdUpstream:
    return make_upstream(starttls=leaf.server_context())


def _refused_before_mail(gate: GatewayHarness) -> str:
    """MAIL + RCPT in clear on the client leg; returns the RCPT reply, then QUIT."""
    with RawClient(gate.port) as client:
        assert client.ehlo().code == 250
        assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        answer = str(client.cmd(f"RCPT TO:<{RCPT}>"))
        # No recipient was accepted: DATA must not open a body.
        assert str(client.cmd("DATA")) == NO_VALID_RECIPIENTS
        assert client.cmd("QUIT").code == 221
    return answer


def _assert_delivered_in_tls(gate: GatewayHarness, upstream: AiosmtpdUpstream) -> dict[str, Any]:
    (received,) = upstream.messages
    assert received.rcpt_tos == [RCPT]
    assert received.tls_version is not None  # the upstream leg was encrypted
    record = gate.transaction()
    assert record["outcome"] == "delivered"
    assert record["upstream_tls"] == received.tls_version
    return record


# --- 1. responder says GOOD ----------------------------------------------------------------


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "not-validated"])
def test_good_certificate_is_delivered(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder, validate: bool
) -> None:
    """Both ways to the issuer: OpenSSL-verified handshake (issuer looked up in
    ca_file) and the after-the-fact WebPKI check (issuer from the built chain)."""
    leaf = responder.issue(GOOD)
    upstream = _upstream(make_upstream, leaf)
    gate = _gate(make_gate, upstream, responder, "required", validate_certificates=validate)
    assert smtplib_send(gate.port, SENDER, [RCPT], starttls=False) == {}
    record = _assert_delivered_in_tls(gate, upstream)
    assert record["upstream_verify"].startswith("ok"), record
    assert record["upstream_verify"] == "ok: OCSP good"
    assert responder.hits(leaf.serial) == 1  # really asked, once for the one connection


# --- 2. responder says REVOKED -------------------------------------------------------------


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "not-validated"])
@pytest.mark.parametrize("allow_unavailable", [True, False], ids=["allow-unavail", "strict"])
def test_revoked_certificate_blocks_required(
    make_gate: Any,
    make_upstream: Make,
    responder: OCSPResponder,
    validate: bool,
    allow_unavailable: bool,
) -> None:
    """A revocation is an answer, not unavailability: ocsp_allow_unavailable does not help."""
    leaf = responder.issue(REVOKED)
    upstream = _upstream(make_upstream, leaf)
    gate = _gate(
        make_gate,
        upstream,
        responder,
        "required",
        validate_certificates=validate,
        ocsp_allow_unavailable=allow_unavailable,
    )
    answer = _refused_before_mail(gate)
    assert answer == UPSTREAM_TLS_UNAVAILABLE
    assert responder.hits(leaf.serial) >= 1  # the handshake happened and OCSP was asked
    assert upstream.commands == [] and upstream.messages == []  # no MAIL, no RCPT upstream
    (rejected,) = gate.wait_record("rcpt_rejected")
    assert rejected["reply"] == 451
    assert rejected["recipient_domain"] == "rcpt.example"
    reason = rejected["reason"]
    assert "revoked" in reason and "OCSP" in reason, reason
    summary = gate.transaction()
    assert (summary["outcome"], summary["reply"]) == ("rejected", 451)
    assert summary["recipient_domains"] == []


# --- 3. responder unreachable --------------------------------------------------------------


def test_unreachable_responder_allowed_when_unavailable_is_allowed(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder
) -> None:
    leaf = responder.issue(GOOD, url=closed_port_url())
    upstream = _upstream(make_upstream, leaf)
    gate = _gate(make_gate, upstream, responder, "required", ocsp_allow_unavailable=True)
    assert smtplib_send(gate.port, SENDER, [RCPT], starttls=False) == {}
    record = _assert_delivered_in_tls(gate, upstream)
    verify = record["upstream_verify"]
    assert verify.startswith("ok: OCSP unavailable"), verify
    assert "unreachable" in verify, verify


def test_unreachable_responder_blocks_required_when_unavailable_is_refused(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder
) -> None:
    leaf = responder.issue(GOOD, url=closed_port_url())
    upstream = _upstream(make_upstream, leaf)
    gate = _gate(make_gate, upstream, responder, "required", ocsp_allow_unavailable=False)
    answer = _refused_before_mail(gate)
    assert answer == UPSTREAM_TLS_UNAVAILABLE
    assert upstream.commands == [] and upstream.messages == []
    (rejected,) = gate.wait_record("rcpt_rejected")
    assert rejected["reply"] == 451
    assert "OCSP unavailable" in rejected["reason"], rejected
    assert "unreachable" in rejected["reason"], rejected
    assert gate.transaction()["outcome"] == "rejected"


def test_certificate_without_responder_url_follows_allow_unavailable(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder
) -> None:
    """No AIA OCSP URL at all is "no answer can be had" as well."""
    leaf = responder.issue(GOOD, url=None)
    upstream = _upstream(make_upstream, leaf)
    strict = _gate(make_gate, upstream, responder, "required", ocsp_allow_unavailable=False)
    assert _refused_before_mail(strict) == UPSTREAM_TLS_UNAVAILABLE
    assert "no OCSP responder URL" in strict.wait_record("rcpt_rejected")[0]["reason"]
    assert upstream.commands == []
    lenient = _gate(make_gate, upstream, responder, "required", ocsp_allow_unavailable=True)
    assert smtplib_send(lenient.port, SENDER, [RCPT], starttls=False) == {}
    assert lenient.transaction()["upstream_verify"].startswith("ok: OCSP unavailable")
    assert len(upstream.messages) == 1


# --- 4. opportunistic TLS never blocks -----------------------------------------------------


def test_revoked_certificate_does_not_block_preferred(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder
) -> None:
    leaf = responder.issue(REVOKED)
    upstream = _upstream(make_upstream, leaf)
    gate = _gate(make_gate, upstream, responder, "preferred", ocsp_allow_unavailable=False)
    assert smtplib_send(gate.port, SENDER, [RCPT], starttls=False) == {}
    record = _assert_delivered_in_tls(gate, upstream)
    verify = record["upstream_verify"]
    assert verify.startswith("failed"), verify
    assert "revoked" in verify, verify  # logged, not enforced (RFC 7435)
    assert responder.hits(leaf.serial) == 1
    assert gate.records("rcpt_rejected") == []


# --- related: `allowed` mirrors the client leg; `none` never asks ----------------------------


def test_allowed_with_encrypted_client_behaves_as_required(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder
) -> None:
    leaf = responder.issue(REVOKED)
    upstream = _upstream(make_upstream, leaf)
    gate = _gate(make_gate, upstream, responder, "allowed")
    with RawClient(gate.port) as client:
        client.ehlo()
        client.starttls(insecure_client_context())
        client.ehlo()
        assert client.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        answer = str(client.cmd(f"RCPT TO:<{RCPT}>"))
    assert answer == UPSTREAM_TLS_UNAVAILABLE
    assert upstream.commands == [] and upstream.messages == []
    assert "revoked" in gate.wait_record("rcpt_rejected")[0]["reason"]


def test_none_sends_in_clear_without_asking_the_responder(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder
) -> None:
    leaf = responder.issue(REVOKED)
    upstream = _upstream(make_upstream, leaf)
    gate = _gate(make_gate, upstream, responder, "none")
    assert smtplib_send(gate.port, SENDER, [RCPT], starttls=False) == {}
    (received,) = upstream.messages
    assert received.tls_version is None
    record = gate.transaction()
    assert (record["upstream_tls"], record["upstream_verify"]) == ("none", "not-checked")
    assert responder.hits(leaf.serial) == 0


def test_every_new_upstream_connection_asks_again(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder
) -> None:
    """Revocation is not cached across connections: a certificate revoked after
    a first delivery blocks the next connection that presents it."""
    leaf = responder.issue(GOOD)
    upstream = _upstream(make_upstream, leaf)
    gate = _gate(make_gate, upstream, responder, "required")
    assert smtplib_send(gate.port, SENDER, [RCPT], starttls=False) == {}
    assert gate.transaction()["upstream_verify"] == "ok: OCSP good"
    responder.statuses[leaf.serial] = REVOKED
    # A fresh gateway has no parked connection, so the upstream leg is new.
    gate2 = _gate(make_gate, upstream, responder, "required")
    assert _refused_before_mail(gate2) == UPSTREAM_TLS_UNAVAILABLE
    assert responder.hits(leaf.serial) == 2
    assert len(upstream.messages) == 1


def test_revoked_certificate_blocks_required_on_an_implicit_tls_upstream(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder
) -> None:
    leaf = responder.issue(REVOKED)
    upstream = make_upstream(implicit=leaf.server_context())
    gate = make_gate(
        upstream.port,
        policy={"upstream_implicit_tls": True},
        profile={"ca_file": str(responder.ca_file), "ocsp": True},
        rules=[rule(recipient_encryption="required")],
    )
    assert _refused_before_mail(gate) == UPSTREAM_TLS_UNAVAILABLE
    assert upstream.commands == [] and upstream.messages == []
    assert "revoked" in gate.wait_record("rcpt_rejected")[0]["reason"]
    assert gate.transaction()["outcome"] == "rejected"


def test_ocsp_does_not_switch_on_host_name_validation(
    make_gate: Any, make_upstream: Make, responder: OCSPResponder
) -> None:
    """SPEC 3: validate_certificates = false means no chain/host name check;
    ocsp only adds a revocation check. A GOOD certificate for another name is
    accepted without ocsp, so it must be accepted with ocsp too."""
    leaf = responder.issue(GOOD, names=("wrong.example",))
    upstream = _upstream(make_upstream, leaf)
    gate = _gate(make_gate, upstream, responder, "required", validate_certificates=False)
    assert smtplib_send(gate.port, SENDER, [RCPT], starttls=False) == {}
    assert len(upstream.messages) == 1
