"""A local OCSP responder (RFC 6960 over HTTP on 127.0.0.1) and the test CA it signs for.

:class:`OCSPResponder` owns a CA, issues server certificates whose Authority
Information Access extension points at itself (or at another URL), and answers
each certificate's status as the test set it. The CA is self-signed and
directly issues the leaves, so a TLS profile whose ``ca_file`` is
:attr:`OCSPResponder.ca_file` can verify the leaf alone (Python 3.11 only
exposes the peer's leaf to smtpgate).

``mode`` makes it misbehave: ``http-500``, ``try-later``, ``stale`` (a response
three days old), ``wrong-key`` (signed by an impostor with the CA's name) or
``delegated`` (signed by :attr:`OCSPResponder.delegate`). Used by the OCSP unit
tests (``tests/tls``) and the end-to-end ones (``tests/proxy``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
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

from smtpgate.tls import issuing

__all__ = [
    "GOOD",
    "REVOKED",
    "UNKNOWN",
    "Leaf",
    "OCSPResponder",
    "closed_port_url",
    "reach_directly",
]

GOOD = ocsp.OCSPCertStatus.GOOD
REVOKED = ocsp.OCSPCertStatus.REVOKED
UNKNOWN = ocsp.OCSPCertStatus.UNKNOWN

ECKey = ec.EllipticCurvePrivateKey

_PROXY_VARIABLES = ("http", "https", "all", "no")


def reach_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib (smtpgate's OCSP client) honours ``*_proxy``: the responder must be reached
    directly."""
    for name in _PROXY_VARIABLES:
        for var in (f"{name}_proxy", f"{name.upper()}_PROXY"):
            monkeypatch.delenv(var, raising=False)


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ocsp"


@dataclass(frozen=True)
class Leaf:
    cert: x509.Certificate
    key: ECKey
    cert_file: Path
    key_file: Path

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def server_context(self) -> ssl.SSLContext:
        """Server side for an aiosmtpd upstream (STARTTLS or implicit TLS)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass
class OCSPResponder:
    """Answers OCSP requests for the certificates it issued, signed by its CA."""

    folder: Path
    ca_name: str = "ocsp-test"
    ca_key: ECKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    url: str = ""
    mode: str = "normal"  # normal | wrong-key | http-500 | try-later | stale | delegated
    statuses: dict[int, ocsp.OCSPCertStatus] = field(default_factory=dict)
    certs: dict[int, x509.Certificate] = field(default_factory=dict)
    delegate: tuple[x509.Certificate, ECKey] | None = None
    #: Serial numbers asked about, in arrival order.
    asked: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.ca = issuing.make_ca(self.ca_name, self.ca_key)
        self.ca_file = self.folder / f"{self.ca_name}-ca.pem"
        self.ca_file.write_bytes(issuing.cert_pem(self.ca))
        self._server: ThreadingHTTPServer | None = None

    # -- HTTP --------------------------------------------------------------------------------

    def start(self) -> OCSPResponder:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                code, payload = state.answer(body)
                self.send_response(code)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}/ocsp"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def hits(self, serial: int | None = None) -> int:
        """Requests about ``serial`` so far (about any certificate: ``None``)."""
        with self.lock:
            return len(self.asked) if serial is None else self.asked.count(serial)

    def answer(self, body: bytes) -> tuple[int, bytes]:
        """HTTP status and body for one request, as ``mode`` says."""
        req = ocsp.load_der_ocsp_request(body)
        with self.lock:
            self.asked.append(req.serial_number)
            cert = self.certs.get(req.serial_number)
            status = self.statuses.get(req.serial_number)
        if self.mode == "http-500":
            return 500, b"oops"
        if self.mode == "try-later":
            return 200, self._unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
        if cert is None or status is None:
            return 200, self._unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        now = dt.datetime.now(dt.UTC)
        this_update = now - dt.timedelta(days=3 if self.mode == "stale" else 0, minutes=1)
        revoked = status == REVOKED
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert,
            issuer=self.ca,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=this_update,
            next_update=this_update + dt.timedelta(days=1),
            revocation_time=now - dt.timedelta(days=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        signer_cert, signer_key = self.ca, self.ca_key
        if self.mode == "delegated" and self.delegate is not None:
            signer_cert, signer_key = self.delegate
            builder = builder.certificates([signer_cert])
        encoding = ocsp.OCSPResponderEncoding.HASH
        if self.mode == "wrong-key":
            # An impostor with the CA's name but another key.
            signer_key = ec.generate_private_key(ec.SECP256R1())
            signer_cert = issuing.make_ca(self.ca_name, signer_key)
            assert signer_cert.subject == self.ca.subject
            encoding = ocsp.OCSPResponderEncoding.NAME
        resp = builder.responder_id(encoding, signer_cert).sign(signer_key, hashes.SHA256())
        return 200, resp.public_bytes(Encoding.DER)

    @staticmethod
    def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(Encoding.DER)

    # -- certificates ------------------------------------------------------------------------

    def issue(
        self,
        status: ocsp.OCSPCertStatus | None,
        *,
        url: str | None = "",
        names: tuple[str, ...] = ("127.0.0.1", "localhost"),
        eku: list[x509.ObjectIdentifier] | None = None,
    ) -> Leaf:
        """A certificate for ``names``; AIA OCSP = this responder unless ``url`` says.

        ``url=None``: no AIA extension at all. ``status=None``: the responder does not
        know the certificate. ``eku``: extended key usages (default: serverAuth).
        """
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, names[-1])]))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(eku or [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        target = self.url if url == "" else url
        if target is not None:
            aia = x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(target)
            )
            builder = builder.add_extension(x509.AuthorityInformationAccess([aia]), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        if status is not None:
            with self.lock:
                self.statuses[cert.serial_number] = status
                self.certs[cert.serial_number] = cert
        stem = f"leaf-{cert.serial_number:x}"
        cert_file = self.folder / f"{stem}.pem"
        key_file = self.folder / f"{stem}.key"
        cert_file.write_bytes(issuing.cert_pem(cert))
        key_file.write_bytes(issuing.key_pem(key))
        return Leaf(cert, key, cert_file, key_file)
