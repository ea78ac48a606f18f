"""OCSP against a responder on 127.0.0.1 that signs with a test CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from smtpgate.tls import (
    TLSContextCache,
    TrustAnchors,
    VerificationResult,
    check_ocsp,
    check_ocsp_async,
    issuing,
    verify_upstream_certificate,
)
from tests.peers.ocsp import OCSPResponder as Responder
from tests.peers.ocsp import closed_port_url, reach_directly
from tests.tls.tls_testkit import server_context, tls_connection, tls_profile

ECKey = ec.EllipticCurvePrivateKey


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    reach_directly(monkeypatch)


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Responder]:
    state = Responder(tmp_path_factory.mktemp("ocsp")).start()
    yield state
    state.stop()


def _issue(
    responder: Responder,
    status: ocsp.OCSPCertStatus | None,
    *,
    url: str | None = "",
    host: str = "mx.ocsp.test",
    eku: list[x509.ObjectIdentifier] | None = None,
) -> tuple[x509.Certificate, ECKey]:
    leaf = responder.issue(status, url=url, names=(host,), eku=eku)
    return leaf.cert, leaf.key


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _check(responder: Responder, cert: x509.Certificate, allow: bool) -> VerificationResult:
    return check_ocsp(_der(cert), _der(responder.ca), allow, timeout=5)


@pytest.fixture
def normal(responder: Responder) -> Iterator[Responder]:
    yield responder
    responder.mode = "normal"


def test_good(normal: Responder) -> None:
    cert, _ = _issue(normal, ocsp.OCSPCertStatus.GOOD)
    before = normal.hits()
    assert str(_check(normal, cert, allow=False)) == "ok: OCSP good"
    assert normal.hits() == before + 1  # really asked the responder


def test_revoked_fails_even_when_unavailable_is_allowed(normal: Responder) -> None:
    cert, _ = _issue(normal, ocsp.OCSPCertStatus.REVOKED)
    result = _check(normal, cert, allow=True)
    assert result.status == "failed"
    assert result.reason == "certificate revoked (OCSP, key_compromise)"


def test_delegated_responder_accepted(normal: Responder) -> None:
    normal.delegate = _issue(normal, None, url=None, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    normal.mode = "delegated"
    cert, _ = _issue(normal, ocsp.OCSPCertStatus.GOOD)
    assert str(_check(normal, cert, allow=False)) == "ok: OCSP good"


def test_delegate_without_ocsp_signing_eku_is_not_trusted(normal: Responder) -> None:
    normal.delegate = _issue(normal, None, url=None)  # serverAuth only
    normal.mode = "delegated"
    cert, _ = _issue(normal, ocsp.OCSPCertStatus.GOOD)
    assert _check(normal, cert, allow=False).status == "failed"


@pytest.mark.parametrize(
    ("mode", "url", "reason"),
    [
        ("normal", None, "no OCSP responder URL"),
        ("normal", "closed", "unreachable"),
        ("normal", "file:///etc/passwd", "no OCSP responder URL"),
        ("http-500", "", "unreachable"),
        ("try-later", "", "TRY_LATER"),
        ("wrong-key", "", "not signed by the issuer"),
        ("stale", "", "stale"),
    ],
)
def test_unavailable(normal: Responder, mode: str, url: str | None, reason: str) -> None:
    normal.mode = mode
    cert, _ = _issue(
        normal, ocsp.OCSPCertStatus.GOOD, url=closed_port_url() if url == "closed" else url
    )
    allowed = _check(normal, cert, allow=True)
    assert allowed.status == "ok" and reason in allowed.reason
    assert allowed.reason.startswith("OCSP unavailable")
    refused = _check(normal, cert, allow=False)
    assert refused.status == "failed" and reason in refused.reason


def test_unknown_status_and_missing_issuer_are_unavailable(normal: Responder) -> None:
    cert, _ = _issue(normal, ocsp.OCSPCertStatus.UNKNOWN)
    assert _check(normal, cert, allow=False).status == "failed"
    assert "does not know" in _check(normal, cert, allow=True).reason
    good, _ = _issue(normal, ocsp.OCSPCertStatus.GOOD)
    result = check_ocsp(_der(good), None, True)
    assert result == VerificationResult("ok", "OCSP unavailable: issuer certificate not available")


async def test_async_wrapper(normal: Responder) -> None:
    cert, _ = _issue(normal, ocsp.OCSPCertStatus.GOOD)
    result = await check_ocsp_async(_der(cert), _der(normal.ca), False, timeout=5)
    assert result.status == "ok"


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize(
    ("status", "expected"),
    [(ocsp.OCSPCertStatus.GOOD, "ok: OCSP good"), (ocsp.OCSPCertStatus.REVOKED, "failed")],
)
async def test_upstream_check_with_ocsp(
    normal: Responder, tmp_path: Path, verify: bool, status: ocsp.OCSPCertStatus, expected: str
) -> None:
    """Whole path: handshake, chain (issuer found by the verifier or in the
    trust store), then OCSP in a worker thread."""
    cert, key = _issue(normal, status)
    (tmp_path / "ca.pem").write_bytes(issuing.cert_pem(normal.ca))
    (tmp_path / "c.pem").write_bytes(issuing.cert_pem(cert))
    (tmp_path / "k.pem").write_bytes(issuing.key_pem(key))
    profile = tls_profile(
        name=f"ocsp-{verify}", ca_file=tmp_path / "ca.pem", ocsp=True, ocsp_allow_unavailable=False
    )
    client = TLSContextCache().upstream_leg_context(profile, verify=verify)
    server = server_context(tmp_path / "c.pem", tmp_path / "k.pem")
    with tls_connection(server, client, "mx.ocsp.test") as (tls, _):
        result = await verify_upstream_certificate(
            tls, profile, "mx.ocsp.test", TrustAnchors(), timeout=5
        )
    assert str(result).startswith(expected)


async def test_no_ocsp_query_for_a_failed_certificate(normal: Responder, tmp_path: Path) -> None:
    cert, key = _issue(normal, ocsp.OCSPCertStatus.GOOD)
    (tmp_path / "c.pem").write_bytes(issuing.cert_pem(cert))
    (tmp_path / "k.pem").write_bytes(issuing.key_pem(key))
    profile = tls_profile(name="no-ca", ocsp=True)  # test CA unknown
    client = TLSContextCache().upstream_leg_context(profile, verify=False)
    before = normal.hits()
    server = server_context(tmp_path / "c.pem", tmp_path / "k.pem")
    with tls_connection(server, client, "mx.ocsp.test") as (tls, _):
        result = await verify_upstream_certificate(tls, profile, "mx.ocsp.test", TrustAnchors())
    assert str(result) == "failed: unknown CA"
    assert normal.hits() == before
