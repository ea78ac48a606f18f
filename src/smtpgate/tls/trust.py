"""Trust anchors for after-the-fact verification: system bundle + ca_file.

Parsed once per ca_file and cached (the system bundle has ~150 certificates;
parsing it per connection would dominate the verification cost).
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=1)
def _system_anchors() -> tuple[x509.Certificate, ...]:
    bundle = system_bundle()
    if bundle is None:
        return ()
    try:
        return tuple(_parse_bundle(bundle.read_bytes()))
    except OSError:
        return ()


@functools.lru_cache(maxsize=64)
def anchors(ca_file: Path | None) -> tuple[x509.Certificate, ...]:
    """System anchors plus those in ``ca_file``; CertificateError if unreadable."""
    extra: list[x509.Certificate] = []
    if ca_file is not None:
        try:
            extra = _parse_bundle(ca_file.read_bytes())
        except OSError as exc:
            raise CertificateError(f"{ca_file}: cannot read ca_file: {exc}") from exc
        if not extra:
            raise CertificateError(f"{ca_file}: no PEM certificate in ca_file")
    return _system_anchors() + tuple(extra)


@functools.lru_cache(maxsize=64)
def store(ca_file: Path | None) -> Store:
    certs = anchors(ca_file)
    if not certs:
        raise CertificateError("no trust anchors: system CA bundle not found and no ca_file")
    return Store(list(certs))


def find_issuer(cert: x509.Certificate, ca_file: Path | None) -> x509.Certificate | None:
    """The anchor that signed ``cert`` (for OCSP, which needs the issuer)."""
    for candidate in anchors(ca_file):
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return candidate
    return None


def clear() -> None:
    """Forget parsed anchors (SIGHUP: the system bundle or a ca_file changed)."""
    _system_anchors.cache_clear()
    anchors.cache_clear()
    store.cache_clear()
