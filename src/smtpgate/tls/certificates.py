"""The proxy's certificates: server certificate, SNI certificates, proxy CA
and the leaf certificates it issues for upstream host names.

Layout under ``state_dir/tls/`` (directories 0700, keys 0600, certs 0644)::

    ca.pem  ca.key                    proxy CA (RSA), generated unless ca_cert/ca_key given
    server-ecdsa.pem  server-ecdsa.key  proxy server cert, ECDSA P-256 (+ CA)
    server.pem  server.key            proxy server cert, RSA (+ CA): both unless
                                      server_cert/key given
    leaves/leaf.key                   the one RSA key shared by all issued leaves
    leaves/<host>.pem                 RSA leaf for <host> + CA chain, reused while valid
    leaves/ecdsa/leaf.key             the one ECDSA P-256 key of the ECDSA leaves
    leaves/ecdsa/<host>.pem           ECDSA leaf for <host> + CA chain

The RSA files are where versions before the ECDSA certificates kept their only
certificate: a state_dir from them keeps its RSA keys and gains the ECDSA
files on the first start. Every server certificate is a list of pairs (chain
file, key file), the first presented by default, the others of other key types
beside it in the same context (OpenSSL chooses by the client's signature
algorithms): ECDSA first.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from smtpgate.tls import issuing

log = logging.getLogger(__name__)

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
# Renew generated certificates this long before they expire, so a connection
# never gets a certificate that expires during the session.
SERVER_RENEW = dt.timedelta(days=30)
LEAF_RENEW = dt.timedelta(days=1)
#: The generated proxy CA, relative to state_dir (see the layout above).
GENERATED_CA_CERT = Path("tls", "ca.pem")

#: A certificate chain file and its private key file.
CertKeyFiles = tuple[Path, Path]
#: A configured SNI entry: names, chain file, key file, and an RSA pair beside it
#: (chain file, key file; both or neither).
SNIFiles = tuple[list[str], Path, Path, Path | None, Path | None]


class CertificateError(Exception):
    """A certificate or key file is missing, unreadable or inconsistent.

    ``path`` is the file (or folder) at fault when there is one, so that the
    configuration can name the key that set it.
    """

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True, slots=True)
class SNICertificate:
    """A configured certificate chosen when the client's SNI matches ``names``.

    ``names`` are A-label lower case; ``*.example.com`` matches one label.
    """

    names: tuple[str, ...]
    cert_path: Path
    key_path: Path
    #: An RSA pair presented beside an ECDSA ``cert_path`` to clients that need it.
    rsa: CertKeyFiles | None = None

    @property
    def pairs(self) -> tuple[CertKeyFiles, ...]:
        """Every (chain, key) pair to present, the default first."""
        first = (self.cert_path, self.key_path)
        return (first,) if self.rsa is None else (first, self.rsa)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(
            f"{path}: cannot read {what}: {exc.strerror or exc}", path=path
        ) from exc


def _load_chain(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path, "certificate"))
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate file: {exc}", path=path) from exc
    return certs


def _load_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: an encrypted key (no passphrase support, on purpose:
        # the proxy must start unattended).
        raise CertificateError(
            f"{path}: not an unencrypted PEM private key: {exc}", path=path
        ) from exc


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_pair(cert_path: Path, key_path: Path) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    chain = _load_chain(cert_path)
    key = _load_key(key_path)
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise CertificateError(
            f"{key_path}: private key does not match the certificate in {cert_path}",
            path=key_path,
        )
    return chain, key


def _load_pairs(first: CertKeyFiles, rsa_pair: CertKeyFiles | None) -> None:
    """Check a configured certificate and the RSA pair beside it: each key matches
    its certificate, the RSA pair is RSA and the first one is not (one certificate
    per key type in a context: a second RSA one would replace the first)."""
    _, key = _load_pair(*first)
    if rsa_pair is None:
        return
    _, rsa_key = _load_pair(*rsa_pair)
    if not isinstance(rsa_key, rsa.RSAPrivateKey):
        raise CertificateError(
            f"{rsa_pair[0]}: not an RSA certificate (the RSA pair is for clients without ECDSA)",
            path=rsa_pair[0],
        )
    if isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError(
            f"{first[0]}: an RSA certificate, like the RSA pair beside it "
            f"({rsa_pair[0]}); give an ECDSA certificate here",
            path=first[0],
        )


def _certifiable(key: PrivateKeyTypes, path: Path) -> issuing.PublicKey:
    public = key.public_key()
    if not isinstance(public, issuing.PublicKey):
        raise CertificateError(f"{path}: this key type cannot be used in a certificate", path=path)
    return public


def _pair(cert: Path | None, key: Path | None, what: str) -> tuple[Path, Path] | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given = cert if cert is not None else key
        raise CertificateError(
            f"{given}: {what} certificate and key must be given together", path=given
        )
    return cert, key


def _sni_name(name: str, cert: Path) -> str:
    wildcard = name.startswith("*.")
    try:
        host = issuing.normalize_host(name[2:] if wildcard else name)
    except ValueError as exc:
        raise CertificateError(f"{cert}: SNI name {name!r}: {exc}", path=cert) from exc
    return f"*.{host}" if wildcard else str(host)


def _expires_soon(cert: x509.Certificate, margin: dt.timedelta) -> bool:
    now = dt.datetime.now(dt.UTC)
    return cert.not_valid_after_utc - margin <= now or cert.not_valid_before_utc > now


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _leaf_file_name(host: str | issuing.IPAddress) -> str:
    # Normalized names are [a-z0-9.-]; IPv6 colons are not portable in names.
    return re.sub(r"[^a-z0-9.-]", "_", str(host)) + ".pem"


@dataclass(frozen=True, slots=True)
class _LeafIssuer:
    """One key type's issued leaves: their folder and the key they all share."""

    folder: Path
    key_path: Path
    public_key: issuing.PublicKey


#: The generated server certificates (file stem, key maker), the default first.
GENERATED_KINDS: tuple[tuple[str, Callable[[], issuing.SigningKey]], ...] = (
    ("server-ecdsa", issuing.new_ecdsa_key),
    ("server", issuing.new_key),
)


def generated_server_certs(state_dir: Path) -> tuple[Path, ...]:
    """The chain files of the server certificates :meth:`CertificateStore.load`
    generates in ``state_dir`` (when none is configured), the default first."""
    tls_dir = state_dir / GENERATED_CA_CERT.parent
    return tuple(tls_dir / f"{stem}.pem" for stem, _ in GENERATED_KINDS)


class CertificateStore:
    """All certificates the proxy presents. Build with :meth:`load`."""

    def __init__(
        self,
        *,
        hostname: str,
        server_pairs: tuple[CertKeyFiles, ...],
        ca_chain: list[x509.Certificate],
        ca_key: issuing.SigningKey,
        sni: list[SNICertificate],
        leaf_issuers: tuple[_LeafIssuer, ...],
    ) -> None:
        self.hostname = hostname
        #: The client leg's default certificate: (chain, key) pairs, the default first.
        self.server_pairs = server_pairs
        self.server_cert_path, self.server_key_path = server_pairs[0]
        self.sni_certificates: tuple[SNICertificate, ...] = tuple(sni)
        self._ca_chain = ca_chain
        self._ca_key = ca_key
        self._leaf_issuers = leaf_issuers
        self._leaves: dict[tuple[Path, str], tuple[Path, dt.datetime]] = {}
        # Leaf issuing may be reached from several threads (sync servers,
        # console); the cache and the files must not race.
        self._lock = threading.Lock()
        self._sni_exact: dict[str, SNICertificate] = {}
        self._sni_wild: dict[str, SNICertificate] = {}
        for entry in self.sni_certificates:
            for name in entry.names:
                if name.startswith("*."):
                    self._sni_wild.setdefault(name[2:], entry)
                else:
                    self._sni_exact.setdefault(name, entry)

    # -- construction --------------------------------------------------------

    @classmethod
    def load(
        cls,
        state_dir: Path,
        *,
        server_cert: Path | None,
        server_key: Path | None,
        ca_cert: Path | None,
        ca_key: Path | None,
        sni: list[SNIFiles],
        hostname: str,
        server_rsa_cert: Path | None = None,
        server_rsa_key: Path | None = None,
    ) -> CertificateStore:
        """Load user-supplied files, generating what is missing in state_dir.

        ``server_rsa_cert``/``_key``: an RSA pair presented beside a configured ECDSA
        ``server_cert``; ``sni`` entries may have one too.

        Runs at start and on SIGHUP; it is the only place (with the first
        leaf for a host) that reads key files or generates keys.
        """
        tls_dir = state_dir / GENERATED_CA_CERT.parent
        leaves_dir = tls_dir / "leaves"
        for directory in (tls_dir, leaves_dir, leaves_dir / "ecdsa"):
            try:
                directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                # mkdir's mode is filtered by the umask; the keys' folder is
                # ours and private whatever the umask.
                directory.chmod(DIR_MODE)
            except OSError as exc:
                raise CertificateError(
                    f"{directory}: cannot create directory: {exc}", path=directory
                ) from exc

        ca_chain, ca_priv = cls._load_ca(tls_dir, _pair(ca_cert, ca_key, "CA"), hostname)
        server = _pair(server_cert, server_key, "server")
        server_rsa = _pair(server_rsa_cert, server_rsa_key, "server RSA")
        server_pairs: tuple[CertKeyFiles, ...]
        if server is not None:
            _load_pairs(server, server_rsa)
            server_pairs = (server,) if server_rsa is None else (server, server_rsa)
        elif server_rsa is not None:
            raise CertificateError(
                f"{server_rsa[0]}: an RSA pair needs the server certificate it goes beside",
                path=server_rsa[0],
            )
        else:
            server_pairs = tuple(
                cls._generated_server(tls_dir / stem, new_key, hostname, ca_chain, ca_priv)
                for stem, new_key in GENERATED_KINDS
            )

        entries: list[SNICertificate] = []
        for names, cert, key, rsa_cert, rsa_key in sni:
            rsa_pair = _pair(rsa_cert, rsa_key, "SNI RSA")
            _load_pairs((cert, key), rsa_pair)
            entries.append(
                SNICertificate(tuple(_sni_name(n, cert) for n in names), cert, key, rsa_pair)
            )

        issuers = []
        for folder, new_key in (
            (leaves_dir / "ecdsa", issuing.new_ecdsa_key),
            (leaves_dir, issuing.new_key),
        ):
            key_path = folder / "leaf.key"
            public = _certifiable(cls._key_file(key_path, new_key), key_path)
            issuers.append(_LeafIssuer(folder, key_path, public))
        return cls(
            hostname=hostname,
            server_pairs=server_pairs,
            ca_chain=ca_chain,
            ca_key=ca_priv,
            sni=entries,
            leaf_issuers=tuple(issuers),
        )

    @staticmethod
    def _key_file(
        path: Path, new_key: Callable[[], issuing.SigningKey] = issuing.new_key
    ) -> PrivateKeyTypes:
        """Load the key at ``path``, generating it (0600, atomically) if absent."""
        if path.exists():
            return _load_key(path)
        key = new_key()
        issuing.write_atomic(path, issuing.key_pem(key), KEY_MODE)
        return key

    @classmethod
    def _load_ca(
        cls, tls_dir: Path, supplied: tuple[Path, Path] | None, hostname: str
    ) -> tuple[list[x509.Certificate], issuing.SigningKey]:
        if supplied is not None:
            chain, key = _load_pair(*supplied)
        else:
            cert_path = tls_dir.parent / GENERATED_CA_CERT
            key_path = cert_path.with_suffix(".key")
            if cert_path.exists() and not key_path.exists():
                raise CertificateError(
                    f"{key_path}: missing (the CA in {cert_path} needs it)", path=key_path
                )
            # The key is written first: a crash before ca.pem leaves a key
            # with no certificate, which nobody can have trusted yet.
            key = cls._key_file(key_path)
            if not cert_path.exists():
                if not isinstance(key, issuing.SigningKey):
                    raise CertificateError(
                        f"{key_path}: this key type cannot sign certificates", path=key_path
                    )
                issuing.write_atomic(
                    cert_path, issuing.cert_pem(issuing.make_ca(hostname, key)), CERT_MODE
                )
                log.info("generated proxy CA %s", cert_path)
            chain, key = _load_pair(cert_path, key_path)
            supplied = (cert_path, key_path)
        cert_path = supplied[0]
        try:
            bc = chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CertificateError(
                f"{cert_path}: not a CA certificate (basicConstraints CA:FALSE)", path=cert_path
            )
        if _expires_soon(chain[0], dt.timedelta(0)):
            raise CertificateError(
                f"{cert_path}: the CA certificate is expired or not yet valid", path=cert_path
            )
        if not isinstance(key, issuing.SigningKey):
            raise CertificateError(
                f"{supplied[1]}: this key type cannot sign certificates", path=supplied[1]
            )
        return chain, key

    @classmethod
    def _generated_server(
        cls,
        stem: Path,
        new_key: Callable[[], issuing.SigningKey],
        hostname: str,
        ca_chain: list[x509.Certificate],
        ca_key: issuing.SigningKey,
    ) -> CertKeyFiles:
        cert_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
        key = cls._key_file(key_path, new_key)
        try:
            host = issuing.normalize_host(hostname)
        except ValueError as exc:
            raise CertificateError(f"gateway hostname: {exc}") from exc
        names: list[str | issuing.IPAddress] = [host]
        names += [n for n in ("localhost", issuing.LOCALHOST) if n != host]
        public_key = _certifiable(key, key_path)
        if cert_path.exists():
            current = _load_chain(cert_path)[0]
            if cls._server_still_good(current, names, public_key, ca_chain[0]):
                return cert_path, key_path
        cert = issuing.make_leaf(names, public_key, ca_chain[0], ca_key, days=issuing.SERVER_DAYS)
        issuing.write_atomic(cert_path, issuing.cert_pem(cert, *ca_chain), CERT_MODE)
        log.info("generated proxy server certificate %s for %s", cert_path, hostname)
        return cert_path, key_path

    @staticmethod
    def _server_still_good(
        cert: x509.Certificate,
        names: list[str | issuing.IPAddress],
        public_key: PublicKeyTypes,
        ca: x509.Certificate,
    ) -> bool:
        """Reuse a generated server cert unless the hostname, CA or key changed."""
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        first = names[0]
        wanted = x509.DNSName(first) if isinstance(first, str) else x509.IPAddress(first)
        return (
            wanted in san
            and _spki(cert.public_key()) == _spki(public_key)
            and not _expires_soon(cert, SERVER_RENEW)
            and _issued_by(cert, ca)
        )

    @staticmethod
    def existing_ca_pem(state_dir: Path, ca_cert: Path | None) -> bytes | None:
        """The proxy CA (PEM, with any chain above it) as :meth:`load` would
        use it, read without creating anything: ``None`` when it is to be
        generated in ``state_dir`` and has not been yet."""
        path = ca_cert if ca_cert is not None else state_dir / GENERATED_CA_CERT
        if ca_cert is None and not path.exists():
            return None
        return issuing.cert_pem(*_load_chain(path))

    # -- use -------------------------------------------------------------------

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self._ca_chain[0]

    def ca_pem(self) -> bytes:
        """The proxy CA (with any chain above it) for ``smtpgate ca export``."""
        return issuing.cert_pem(*self._ca_chain)

    def sni_for(self, server_name: str) -> SNICertificate | None:
        """The configured certificate for an SNI name (A-label), or None."""
        name = server_name.rstrip(".").lower()
        entry = self._sni_exact.get(name)
        if entry is None and "." in name:
            entry = self._sni_wild.get(name.split(".", 1)[1])
        return entry

    def leaf_for(self, hostname: str) -> CertKeyFiles:
        """(chain file, key file) of the CA-issued ECDSA certificate for ``hostname``."""
        return self.leaf_pairs_for(hostname)[0]

    def leaf_pairs_for(self, hostname: str) -> tuple[CertKeyFiles, ...]:
        """The CA-issued certificates for ``hostname``, ECDSA then RSA, as
        (chain file, key file) pairs.

        Memory first, then the file from an earlier run if it is still valid
        and from the current CA, else a new one (a signature and one small
        file write: the key is shared). Raises CertificateError for a host
        name that cannot go into a certificate.
        """
        try:
            host = issuing.normalize_host(hostname)
        except ValueError as exc:
            raise CertificateError(f"leaf certificate: {exc}") from exc
        with self._lock:
            return tuple(self._leaf(issuer, host) for issuer in self._leaf_issuers)

    def _leaf(self, issuer: _LeafIssuer, host: str | issuing.IPAddress) -> CertKeyFiles:
        key = (issuer.folder, str(host))
        cached = self._leaves.get(key)
        if cached is not None and cached[1] - LEAF_RENEW > dt.datetime.now(dt.UTC):
            return cached[0], issuer.key_path
        path = issuer.folder / _leaf_file_name(host)
        cert = self._reusable_leaf(path, host, issuer.public_key)
        if cert is None:
            cert = issuing.make_leaf([host], issuer.public_key, self.ca_certificate, self._ca_key)
            issuing.write_atomic(path, issuing.cert_pem(cert, *self._ca_chain), CERT_MODE)
        self._leaves[key] = (path, cert.not_valid_after_utc)
        return path, issuer.key_path

    def _reusable_leaf(
        self, path: Path, host: str | issuing.IPAddress, public_key: issuing.PublicKey
    ) -> x509.Certificate | None:
        try:
            cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
        except (OSError, ValueError):
            return None  # absent or damaged: issue a fresh one
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        wanted = x509.DNSName(host) if isinstance(host, str) else x509.IPAddress(host)
        if (
            wanted in san
            and _spki(cert.public_key()) == _spki(public_key)
            and not _expires_soon(cert, LEAF_RENEW)
            and _issued_by(cert, self.ca_certificate)
        ):
            return cert
        return None
