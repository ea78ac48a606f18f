"""Test certificates via trustme, written to files for real peers.

One :class:`TestPKI` is a CA plus leaf certificates for the names the tests
use. Leaves name ``127.0.0.1`` (IP SAN) and ``localhost`` as well, because
peers connect to ``127.0.0.1`` and verify host names against that.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["LeafFiles", "TestPKI", "client_context"]

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class LeafFiles:
    """A certificate chain and its key as PEM files."""

    cert: Path  # leaf + chain (PEM)
    key: Path  # private key (PEM)
    names: tuple[str, ...]

    @property
    def combined(self) -> Path:
        """Key and chain in one file (for peers like HAProxy)."""
        path = self.cert.with_suffix(".combined.pem")
        if not path.exists():
            path.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
            path.chmod(0o600)
        return path


class TestPKI:
    """A throw-away certificate authority whose files live under ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, *, rsa: bool = True, name: str = "ca") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key_type = trustme.KeyType.RSA if rsa else trustme.KeyType.ECDSA
        self.ca = trustme.CA(key_type=self.key_type, organization_name=f"smtpgate test {name}")
        self.name = name
        self.ca_file = self.directory / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, *names: str, stem: str | None = None) -> LeafFiles:
        """Issue a leaf for ``names`` plus the loopback names; write cert+key files."""
        all_names = tuple(dict.fromkeys((*names, *LOOPBACK_NAMES)))
        leaf = self.ca.issue_cert(*all_names, key_type=self.key_type)
        stem = stem or f"{self.name}-{(names or ('localhost',))[0]}"
        cert = self.directory / f"{stem}.crt.pem"
        key = self.directory / f"{stem}.key.pem"
        with cert.open("wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return LeafFiles(cert=cert, key=key, names=all_names)

    @functools.cached_property
    def loopback_leaf(self) -> LeafFiles:
        """A leaf for the loopback names only, issued on first use."""
        return self.issue(stem=f"{self.name}-loopback")

    def server_context(self, leaf: LeafFiles | None = None) -> ssl.SSLContext:
        """A server-side SSLContext presenting ``leaf`` (default: :attr:`loopback_leaf`)."""
        leaf = leaf or self.loopback_leaf
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client-side SSLContext that trusts only this CA (host names checked)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def client_context(
    cafile: Path | None = None,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A test peer acting as the sending MTA (TLS client); ``verify=False`` (or no
    ``cafile``): encrypts without checking the server's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify and cafile is not None:
        ctx.load_verify_locations(cafile=cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx
