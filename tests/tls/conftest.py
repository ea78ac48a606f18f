from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from smtpgate.tls import CertificateStore, TLSContextCache


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="session")
def sni_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def sni_files(sni_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sni")
    cert = sni_ca.issue_cert("mx2.example.test", "*.wild.example.test")
    cert.cert_chain_pems[0].write_to_path(str(d / "mx2.pem"))
    cert.private_key_pem.write_to_path(str(d / "mx2.key"))
    return d / "mx2.pem", d / "mx2.key"


@pytest.fixture(scope="session")
def store(store_dir: Path, sni_files: tuple[Path, Path]) -> CertificateStore:
    """A store with generated CA and server cert (shared: RSA keygen is slow)."""
    return CertificateStore.load(
        store_dir,
        server_cert=None,
        server_key=None,
        ca_cert=None,
        ca_key=None,
        sni=[(["mx2.example.test", "*.wild.example.test"], *sni_files, None, None)],
        hostname="mx.example.test",
    )


@pytest.fixture(scope="session")
def proxy_ca_file(store: CertificateStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "proxy-ca.pem"
    path.write_bytes(store.ca_pem())
    return path


@pytest.fixture
def cache() -> Iterator[TLSContextCache]:
    c = TLSContextCache()
    yield c
    c.clear()
