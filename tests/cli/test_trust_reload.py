"""What ``smtpgate serve`` trusts on the upstream leg: per configuration, per policy.

A real ``smtpgate serve`` process between smtplib and aiosmtpd upstreams
offering STARTTLS, all on 127.0.0.1. The logged ``upstream_verify`` must say
what the ``ca_file`` the process loaded last says: after ``SIGHUP`` with a
replaced ``ca_file``, and for two policies with different ``ca_file`` in one
process (docs/tls.md, "Caching and cost" and "Verification results").
"""

from __future__ import annotations

import signal
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.peers.certs import TestPKI
from tests.peers.gate_config import gate_config, rule
from tests.peers.ocsp import GOOD, OCSPResponder, reach_directly
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream

SENDER = "a@sender.example"
RCPT = "b@rcpt.example"
MESSAGE = b"From: a@sender.example\r\nSubject: trust\r\n\r\nhello\r\n"
UNKNOWN_CA = "failed: unknown CA"
REQUIRED_REFUSED = b"4.7.5 Cannot deliver encrypted as required, try later"
NO_ISSUER = "OCSP unavailable: issuer certificate not available"


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    """The CA of the upstream's certificate."""
    return TestPKI(tmp_path / "pki", name="upstream-ca")


@pytest.fixture
def upstream(pki: TestPKI) -> Iterator[AiosmtpdUpstream]:
    leaf = pki.issue("upstream.test")
    with AiosmtpdUpstream(starttls=pki.server_context(leaf)) as server:
        yield server


def _other_ca_pem() -> bytes:
    """A CA that did not sign the upstream's certificate."""
    return trustme.CA(organization_name="smtpgate test other CA").cert_pem.bytes()


def _send(port: int) -> None:
    """One message in clear on the client leg (the rule decides the upstream leg)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        assert client.sendmail(SENDER, [RCPT], MESSAGE) == {}


def _verdicts(gate: SmtpgateProcess, count: int, **match: Any) -> list[str]:
    """``upstream_verify`` of the first ``count`` delivered transactions matching ``match``."""
    records = gate.transactions(count=count, outcome="delivered", **match)
    return [r["upstream_verify"] for r in records[:count]]


def _reload(gate: SmtpgateProcess) -> None:
    assert gate.proc is not None
    done = len(gate.records("reloaded"))
    gate.proc.send_signal(signal.SIGHUP)
    gate.wait_record("reloaded", count=done + 1)
    assert gate.records("reload_failed") == []


def test_sighup_with_a_replaced_ca_file_changes_the_logged_verdict(
    tmp_path: Path, pki: TestPKI, upstream: AiosmtpdUpstream
) -> None:
    """``preferred`` (opportunistic): delivered encrypted either way, but the log
    must say what the reloaded ca_file says, not what the first one said."""
    ca_file = tmp_path / "upstream-ca.pem"
    ca_file.write_bytes(pki.ca_file.read_bytes())
    config = gate_config(
        upstream.port,
        rules=[rule(recipient_encryption="preferred")],
        profile={"ca_file": str(ca_file), "validate_certificates": False},
    )
    with SmtpgateProcess(tmp_path / "gate", config) as gate:
        _send(gate.port())
        assert _verdicts(gate, 1) == ["ok"]
        ca_file.write_bytes(_other_ca_pem())
        _reload(gate)
        _send(gate.port())
        assert _verdicts(gate, 2) == ["ok", UNKNOWN_CA]
        # And back: the verdict follows the file, it is not stuck on "failed" either.
        ca_file.write_bytes(pki.ca_file.read_bytes())
        _reload(gate)
        _send(gate.port())
        assert _verdicts(gate, 3) == ["ok", UNKNOWN_CA, "ok"]
    messages = upstream.wait_messages(3)
    assert [m.tls_version is not None for m in messages] == [True, True, True]


def test_sighup_with_a_replaced_ca_file_refuses_required(
    tmp_path: Path, pki: TestPKI, upstream: AiosmtpdUpstream
) -> None:
    """``required`` with ``validate_certificates``: the handshake itself checks,
    with the reloaded ca_file; the recipient is refused before anything goes upstream."""
    ca_file = tmp_path / "upstream-ca.pem"
    ca_file.write_bytes(pki.ca_file.read_bytes())
    config = gate_config(
        upstream.port,
        rules=[rule(recipient_encryption="required")],
        profile={"ca_file": str(ca_file), "validate_certificates": True},
    )
    with SmtpgateProcess(tmp_path / "gate", config) as gate:
        _send(gate.port())
        assert _verdicts(gate, 1) == ["ok"]
        ca_file.write_bytes(_other_ca_pem())
        _reload(gate)
        with (
            smtplib.SMTP("127.0.0.1", gate.port(), timeout=20) as client,
            pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
        ):
            client.sendmail(SENDER, [RCPT], MESSAGE)
        assert refused.value.recipients == {RCPT: (451, REQUIRED_REFUSED)}
    assert len(upstream.messages) == 1


def test_two_policies_with_different_ca_files_log_their_own_verdicts(
    tmp_path: Path, pki: TestPKI, upstream: AiosmtpdUpstream
) -> None:
    """Same upstream, same certificate; only ``trusting`` has its CA in ``ca_file``.
    Each policy is used twice, alternating, so a verdict remembered by one
    would show up in the other's log."""
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(_other_ca_pem())
    config = gate_config(
        upstream.port,
        rules=[rule(recipient_encryption="preferred")],
        profile={"ca_file": str(pki.ca_file), "validate_certificates": False},
        policy={"name": "trusting"},
    )
    profile = {**config["tls_profiles"][0], "name": "Other.Profile", "ca_file": str(other_ca)}
    action = {**config["proxy_actions"][0], "name": "Other.Action"}
    action["starttls"] = {**action["starttls"], "tls_profile": "Other.Profile"}
    policy = {**config["policies"][0], "name": "distrusting", "proxy_action": "Other.Action"}
    config["tls_profiles"].append(profile)
    config["proxy_actions"].append(action)
    config["policies"].append(policy)
    with SmtpgateProcess(tmp_path / "gate", config) as gate:
        for round_ in (1, 2):
            _send(gate.port("trusting"))
            assert _verdicts(gate, round_, policy="trusting") == ["ok"] * round_
            _send(gate.port("distrusting"))
            assert _verdicts(gate, round_, policy="distrusting") == [UNKNOWN_CA] * round_
    assert len(upstream.wait_messages(4)) == 4


def test_sighup_with_a_replaced_ca_file_changes_the_ocsp_issuer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``validate_certificates = false`` with ``ocsp``: the issuer OCSP needs comes
    only from the trust anchors. With the responder's CA in ``ca_file`` the answer
    is "good"; after SIGHUP with a ca_file without it, no issuer, so no answer."""
    reach_directly(monkeypatch)  # the proxy process inherits the environment
    responder = OCSPResponder(tmp_path, "reload-ocsp").start()
    try:
        leaf = responder.issue(GOOD)
        with AiosmtpdUpstream(starttls=leaf.server_context()) as upstream:
            ca_file = tmp_path / "ca.pem"
            ca_file.write_bytes(responder.ca_file.read_bytes())
            config = gate_config(
                upstream.port,
                rules=[rule(recipient_encryption="required")],
                profile={"ca_file": str(ca_file), "validate_certificates": False},
            )
            config["tls_profiles"][0].update(ocsp=True, ocsp_allow_unavailable=True)
            with SmtpgateProcess(tmp_path / "gate", config) as gate:
                _send(gate.port())
                assert _verdicts(gate, 1) == ["ok: OCSP good"]
                ca_file.write_bytes(_other_ca_pem())
                _reload(gate)
                _send(gate.port())
                assert _verdicts(gate, 2) == ["ok: OCSP good", f"ok: {NO_ISSUER}"]
            assert responder.hits(leaf.serial) == 1  # no issuer: nothing to ask
    finally:
        responder.stop()
