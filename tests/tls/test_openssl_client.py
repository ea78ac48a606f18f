"""A foreign TLS stack (openssl s_client) against the client-leg context."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.tls import CertificateStore, TLSContextCache
from tests.tls.tls_testkit import tls_profile

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
pytestmark = pytest.mark.skipif(not Path(OPENSSL).exists(), reason="openssl CLI not installed")


@contextlib.contextmanager
def serving(ctx: ssl.SSLContext) -> Iterator[int]:
    """Accept one connection, handshake, wait for the peer to close."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        with (
            contextlib.suppress(ssl.SSLError, OSError),
            ctx.wrap_socket(conn, server_side=True) as tls,
        ):
            tls.recv(1)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(10)
        listener.close()


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            OPENSSL,
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "mx.example.test",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_min_13_profile_refuses_openssl_tls12(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    ctx = cache.client_leg_context(tls_profile(min_version="1.3"), store, outgoing=False)
    with serving(ctx) as port:
        refused = s_client(port, "-tls1_2")
    assert refused.returncode != 0
    assert "protocol version" in (refused.stdout + refused.stderr).lower()
    with serving(ctx) as port:
        accepted = s_client(
            port,
            "-tls1_3",
            "-CAfile",
            str(proxy_ca_file),
            "-verify_return_error",
            "-verify_hostname",
            "mx.example.test",
        )
    assert accepted.returncode == 0, accepted.stderr
    assert "TLSv1.3" in accepted.stdout
    assert "Verify return code: 0 (ok)" in accepted.stdout


def test_pfs_required_refuses_openssl_static_rsa(
    cache: TLSContextCache, store: CertificateStore
) -> None:
    ctx = cache.client_leg_context(tls_profile(pfs="required"), store, outgoing=False)
    with serving(ctx) as port:
        refused = s_client(port, "-tls1_2", "-cipher", "AES128-GCM-SHA256")
    assert refused.returncode != 0
    with serving(ctx) as port:
        accepted = s_client(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
    assert accepted.returncode == 0, accepted.stderr
    assert "ECDHE-RSA-AES128-GCM-SHA256" in accepted.stdout
