"""Key and certificate generation, and crash-safe writing of the results.

Server certificates come in two key types, both presented from one context
(OpenSSL chooses by the client's signature algorithms): ECDSA P-256, which
signs a handshake at a small fraction of RSA's cost, and RSA 2048 for the
clients that need it: the ``pfs = "none"`` profile can only negotiate static
RSA key exchange, which needs an RSA server key, and old TLS 1.0 peers rarely
know ECDSA. The proxy CA stays RSA 2048: clients verify its signature (cheap
for RSA), and an RSA-only client could not verify an ECDSA CA's signature on
its RSA leaf. Leaf certificates issued on the fly share one key per type
(generated once), so a first-seen host costs two signatures, not a key
generation.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

import idna
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_BITS = 2048
CA_DAYS = 3650
SERVER_DAYS = 365
LEAF_DAYS = 90
# Certificates start an hour in the past so peers with a slow clock accept them.
BACKDATE = dt.timedelta(hours=1)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Key types we accept in certificates we issue or load (no DSA, no PQ yet).
SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
LOCALHOST = ipaddress.ip_address("127.0.0.1")


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def new_ecdsa_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def normalize_host(host: str) -> str | IPAddress:
    """A host name in A-label lower case, or an IP address object.

    Raises ValueError for anything that is neither.
    """
    text = host.strip().rstrip(".")
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    if not text:
        raise ValueError(f"empty host name {host!r}")
    try:
        return idna.encode(text, uts46=True).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise ValueError(f"invalid host name {host!r}: {exc}") from exc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    # CN is limited to 64 characters; SAN carries the real identity anyway.
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smtpgate")]
    if len(common_name) <= 64:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def make_ca(hostname: str, key: SigningKey) -> x509.Certificate:
    now = _now()
    name = _name(f"smtpgate proxy CA {hostname}"[:64])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, _digest_for(key))
    )


def make_leaf(
    names: list[str | IPAddress],
    public_key: PublicKey,
    ca_cert: x509.Certificate,
    ca_key: SigningKey,
    *,
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """A TLS server certificate for ``names`` (first one is the CN)."""
    start = not_before if not_before is not None else _now() - BACKDATE
    sans: list[x509.GeneralName] = [
        x509.IPAddress(n) if not isinstance(n, str) else x509.DNSName(n) for n in names
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(_name(str(names[0])))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        # 159 random bits: unique without state, positive, within 20 octets.
        .serial_number(secrets.randbits(159) | 1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # key_encipherment: static-RSA key exchange (pfs = "none") needs it;
            # it means nothing for other key types (RFC 5480 3 forbids it for EC).
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, _digest_for(ca_key))
    )


def _digest_for(key: SigningKey) -> hashes.SHA256 | None:
    # EdDSA signs the message itself and takes no separate digest.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()  # type: ignore[arg-type]  # a CA key can always issue
        )
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` so that ``path`` is either old or complete, never partial.

    The temporary file is created with ``mode`` from the start (a key is never
    world-readable, not even for a moment) and then renamed over ``path``.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have removed bits we want
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
