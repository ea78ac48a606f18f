"""OCSP against a responder on 127.0.0.1 that signs with a test CA."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from tls_testkit import server_context, tls_connection

from smtpgate.tls import (
    TLSContextCache,
    TLSProfileSettings,
    VerificationResult,
    check_ocsp,
    check_ocsp_async,
    issuing,
    verify_upstream_certificate,
)

NOW = dt.datetime.now(dt.UTC)
ECKey = ec.EllipticCurvePrivateKey


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours *_proxy; the responder must be reached directly.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@dataclass
class Responder:
    """Answers as ``mode`` says; statuses by certificate serial."""

    ca: x509.Certificate
    ca_key: ECKey
    url: str = ""
    mode: str = "normal"  # normal | wrong-key | http-500 | try-later | stale | delegated
    statuses: dict[int, ocsp.OCSPCertStatus] = field(default_factory=dict)
    certs: dict[int, x509.Certificate] = field(default_factory=dict)
    delegate: tuple[x509.Certificate, ECKey] | None = None
    hits: int = 0

    def answer(self, body: bytes) -> tuple[int, bytes]:
        self.hits += 1
        if self.mode == "http-500":
            return 500, b"oops"
        if self.mode == "try-later":
            return 200, ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.TRY_LATER
            ).public_bytes(Encoding.DER)
        req = ocsp.load_der_ocsp_request(body)
        cert = self.certs[req.serial_number]
        status = self.statuses[req.serial_number]
        this_update = NOW - dt.timedelta(days=3 if self.mode == "stale" else 0, minutes=1)
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert,
            issuer=self.ca,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=this_update,
            next_update=this_update + dt.timedelta(days=1),
            revocation_time=NOW - dt.timedelta(days=1)
            if status == ocsp.OCSPCertStatus.REVOKED
            else None,
            revocation_reason=x509.ReasonFlags.key_compromise
            if status == ocsp.OCSPCertStatus.REVOKED
            else None,
        )
        signer_cert, signer_key = self.ca, self.ca_key
        if self.mode == "delegated" and self.delegate is not None:
            signer_cert, signer_key = self.delegate
            builder = builder.certificates([signer_cert])
        encoding = ocsp.OCSPResponderEncoding.HASH
        if self.mode == "wrong-key":
            # An impostor with the CA's name but another key.
            signer_key = ec.generate_private_key(ec.SECP256R1())
            signer_cert = issuing.make_ca("ocsp-test", signer_key)
            assert signer_cert.subject == self.ca.subject
            encoding = ocsp.OCSPResponderEncoding.NAME
        resp = builder.responder_id(encoding, signer_cert).sign(signer_key, hashes.SHA256())
        return 200, resp.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def responder() -> Iterator[Responder]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    state = Responder(issuing.make_ca("ocsp-test", ca_key), ca_key)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code, payload = state.answer(body)
            self.send_response(code)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _issue(
    responder: Responder,
    status: ocsp.OCSPCertStatus | None,
    *,
    url: str | None = "",
    host: str = "mx.ocsp.test",
    eku: list[x509.ObjectIdentifier] | None = None,
) -> tuple[x509.Certificate, ECKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(responder.ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(eku or [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    )
    target = responder.url if url == "" else url
    if target is not None:
        aia = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(target)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([aia]), critical=False)
    cert = builder.sign(responder.ca_key, hashes.SHA256())
    if status is not None:
        responder.statuses[cert.serial_number] = status
        responder.certs[cert.serial_number] = cert
    return cert, key


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
    before = normal.hits
    assert str(_check(normal, cert, allow=False)) == "ok: OCSP good"
    assert normal.hits == before + 1  # really asked the responder


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


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


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
        normal, ocsp.OCSPCertStatus.GOOD, url=_closed_port_url() if url == "closed" else url
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
    profile = TLSProfileSettings(
        name=f"ocsp-{verify}", ca_file=tmp_path / "ca.pem", ocsp=True, ocsp_allow_unavailable=False
    )
    client = TLSContextCache().upstream_leg_context(profile, verify=verify)
    server = server_context(tmp_path / "c.pem", tmp_path / "k.pem")
    with tls_connection(server, client, "mx.ocsp.test") as (tls, _):
        result = await verify_upstream_certificate(tls, profile, "mx.ocsp.test", timeout=5)
    assert str(result).startswith(expected)


async def test_no_ocsp_query_for_a_failed_certificate(normal: Responder, tmp_path: Path) -> None:
    cert, key = _issue(normal, ocsp.OCSPCertStatus.GOOD)
    (tmp_path / "c.pem").write_bytes(issuing.cert_pem(cert))
    (tmp_path / "k.pem").write_bytes(issuing.key_pem(key))
    profile = TLSProfileSettings(name="no-ca", ocsp=True)  # test CA unknown
    client = TLSContextCache().upstream_leg_context(profile, verify=False)
    before = normal.hits
    server = server_context(tmp_path / "c.pem", tmp_path / "k.pem")
    with tls_connection(server, client, "mx.ocsp.test") as (tls, _):
        result = await verify_upstream_certificate(tls, profile, "mx.ocsp.test")
    assert str(result) == "failed: unknown CA"
    assert normal.hits == before
