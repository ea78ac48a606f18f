"""Certificates for the API: what a certificate says, and checking an upload before use.

An uploaded server certificate and key are checked as ``serve`` would load
them (PEM chain, unencrypted key that matches the first certificate, valid
now, accepted by OpenSSL) and only then written to
``state_dir/tls/uploaded/`` (key 0600) and named in ``[certificates]``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from smtpgate.tls.certificates import CERT_MODE, DIR_MODE, KEY_MODE
from smtpgate.tls.issuing import write_atomic

UPLOAD_DIR = Path("tls", "uploaded")


class UploadError(ValueError):
    """An uploaded certificate or key that cannot be used; the text says why."""


def describe(chain: list[x509.Certificate]) -> dict[str, Any]:
    """The first certificate of a chain as the API shows it."""
    cert = chain[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "names": names,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "chain_length": len(chain),
    }


def describe_file(path: Path) -> dict[str, Any]:
    try:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        return {"file": str(path), "error": f"cannot read: {exc}"}
    return {"file": str(path), **describe(chain)}


def check_pair(cert_pem: str, key_pem: str) -> list[x509.Certificate]:
    """The chain of an uploaded pair, or :class:`UploadError` saying what is wrong."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode("utf-8"))
    except ValueError as exc:
        raise UploadError(f"certificate: not a PEM certificate chain: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem.encode("utf-8"), password=None)
    except (ValueError, TypeError) as exc:
        raise UploadError(f"key: not an unencrypted PEM private key: {exc}") from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise UploadError("key: does not match the (first) certificate")
    now = dt.datetime.now(dt.UTC)
    if not chain[0].not_valid_before_utc <= now < chain[0].not_valid_after_utc:
        raise UploadError(
            f"certificate: not valid now (valid {chain[0].not_valid_before_utc:%Y-%m-%d} to "
            f"{chain[0].not_valid_after_utc:%Y-%m-%d})"
        )
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder, "c.pem"), Path(folder, "k.pem")
        cert_file.write_text(cert_pem)
        key_file.write_text(key_pem)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            raise UploadError(f"certificate: OpenSSL refuses the pair: {exc}") from exc
    return chain


def upload_keys(
    chain: list[x509.Certificate], configured_server_cert: Path | None
) -> tuple[str, str]:
    """The ``[certificates]`` keys an uploaded server pair replaces.

    An RSA pair goes beside a configured ECDSA ``server_cert`` (as
    ``server_rsa_cert``, replacing the one there): a context holds one certificate
    per key type, so putting it in ``server_cert`` would leave two RSA ones and the
    configuration would not load. Any other upload is the server certificate."""
    if isinstance(chain[0].public_key(), rsa.RSAPublicKey) and _is_ecdsa(configured_server_cert):
        return "server_rsa_cert", "server_rsa_key"
    return "server_cert", "server_key"


def _is_ecdsa(cert_file: Path | None) -> bool:
    if cert_file is None:
        return False
    try:
        first = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    except (OSError, ValueError):
        return False  # unreadable: the upload replaces it
    return not isinstance(first.public_key(), rsa.RSAPublicKey)


def store_pair(state_dir: Path, what: str, cert_pem: str, key_pem: str) -> tuple[Path, Path]:
    """Write a checked pair under ``state_dir/tls/uploaded``; names carry the
    certificate's fingerprint, so an upload never replaces a file in use."""
    folder = state_dir / UPLOAD_DIR
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    digest = hashlib.sha256(cert_pem.encode("utf-8")).hexdigest()[:16]
    cert_path, key_path = folder / f"{what}-{digest}.pem", folder / f"{what}-{digest}.key"
    write_atomic(key_path, key_pem.encode("utf-8"), KEY_MODE)
    write_atomic(cert_path, cert_pem.encode("utf-8"), CERT_MODE)
    return cert_path, key_path
