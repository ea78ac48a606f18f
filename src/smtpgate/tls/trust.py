"""Trust anchors for after-the-fact verification: system bundle + ca_file."""

from __future__ import annotations

import re
import ssl
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import Store

from smtpgate.tls.certificates import CertificateError

# Debian/Ubuntu location; used when OpenSSL's configured paths are missing.
# certifi is deliberately not a dependency: the system store is the one the
# administrator maintains.
FALLBACK_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def system_bundle() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, str(FALLBACK_BUNDLE)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _parse_bundle(data: bytes) -> list[x509.Certificate]:
    # One certificate at a time: a single odd entry in a system bundle must
    # not make the whole store unusable.
    certs = []
    with warnings.catch_warnings():
        # Some long-lived roots have non-RFC-5280 quirks (negative serials);
        # cryptography warns per certificate, which is noise for a bundle.
        warnings.simplefilter("ignore")
        for block in _PEM.findall(data):
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return certs


def read_ca_file(ca_file: Path) -> list[x509.Certificate]:
    """The certificates of a profile's ``ca_file``; CertificateError if it cannot
    be read or holds none. Every use of a ``ca_file`` (the start, a reload, an
    edit) reads it through here, so all give the same reason."""
    try:
        found = _parse_bundle(ca_file.read_bytes())
    except OSError as exc:
        raise CertificateError(
            f"{ca_file}: cannot read ca_file: {exc.strerror or exc}", path=ca_file
        ) from exc
    if not found:
        raise CertificateError(f"{ca_file}: no PEM certificate in ca_file", path=ca_file)
    return found


class TrustAnchors:
    """The parsed system bundle and ``ca_file`` anchors of one configuration.

    Built with the configuration and replaced with it on SIGHUP, so what the
    after-the-fact check and the OCSP issuer lookup trust is what the reload
    read, as for the handshake contexts. Each file is parsed once per
    instance (the system bundle has ~150 certificates; parsing it per
    connection would dominate the verification cost). Keys are ``ca_file``
    paths from the configuration, so the number of entries is bounded by it.
    """

    def __init__(self) -> None:
        self._system: tuple[x509.Certificate, ...] | None = None
        self._anchors: dict[Path | None, tuple[x509.Certificate, ...]] = {}
        self._stores: dict[Path | None, Store] = {}

    def _system_anchors(self) -> tuple[x509.Certificate, ...]:
        if self._system is None:
            bundle = system_bundle()
            try:
                self._system = () if bundle is None else tuple(_parse_bundle(bundle.read_bytes()))
            except OSError:
                self._system = ()
        return self._system

    def anchors(self, ca_file: Path | None) -> tuple[x509.Certificate, ...]:
        """System anchors plus those in ``ca_file``; CertificateError if unreadable."""
        found = self._anchors.get(ca_file)
        if found is not None:
            return found
        extra = read_ca_file(ca_file) if ca_file is not None else []
        found = self._anchors[ca_file] = self._system_anchors() + tuple(extra)
        return found

    def store(self, ca_file: Path | None) -> Store:
        """The anchors as a verifier store; CertificateError if there are none."""
        found = self._stores.get(ca_file)
        if found is None:
            certs = self.anchors(ca_file)
            if not certs:
                raise CertificateError(
                    "no trust anchors: system CA bundle not found and no ca_file"
                )
            found = self._stores[ca_file] = Store(list(certs))
        return found

    def find_issuer(self, cert: x509.Certificate, ca_file: Path | None) -> x509.Certificate | None:
        """The anchor that signed ``cert`` (for OCSP, which needs the issuer)."""
        for candidate in self.anchors(ca_file):
            if candidate.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(candidate)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return candidate
        return None
