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


def _presented(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """(server public key line, protocol and cipher line) from s_client's summary."""
    lines = result.stdout.splitlines()
    key = next(line for line in lines if line.startswith("Server public key is"))
    new = next(line for line in lines if line.startswith("New, TLS"))
    return key, new


CHECKED = ("-verify_return_error", "-verify_hostname", "mx.example.test")


@pytest.mark.parametrize(
    ("args", "key", "new"),
    [
        ((), "Server public key is 256 bit", "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384"),
        (("-tls1_2",), "Server public key is 256 bit", "ECDHE-ECDSA-AES256-GCM-SHA384"),
        (("-sigalgs", "RSA-PSS+SHA256"), "Server public key is 2048 bit", "TLSv1.3"),
        (
            ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
            "Server public key is 2048 bit",
            "ECDHE-RSA-AES128-GCM-SHA256",
        ),
        (("-tls1_2", "-sigalgs", "RSA+SHA256"), "Server public key is 2048 bit", "ECDHE-RSA"),
    ],
    ids=["default", "tls12-default", "tls13-rsa-pss-only", "tls12-arsa-cipher", "tls12-rsa-only"],
)
def test_generated_server_cert_is_ecdsa_with_rsa_for_clients_that_need_it(
    cache: TLSContextCache,
    store: CertificateStore,
    proxy_ca_file: Path,
    args: tuple[str, ...],
    key: str,
    new: str,
) -> None:
    """One context, two certificates: a default client (TLS 1.3 or 1.2) gets the
    ECDSA P-256 one, a client offering only RSA signatures or RSA-authenticated
    suites the RSA one; either chain verifies against the proxy CA."""
    ctx = cache.client_leg_context(tls_profile(), store, outgoing=False)
    with serving(ctx) as port:
        result = s_client(port, "-CAfile", str(proxy_ca_file), *CHECKED, *args)
    assert result.returncode == 0, result.stderr
    presented_key, presented_new = _presented(result)
    assert presented_key == key
    assert new in presented_new
    assert "Verify return code: 0 (ok)" in result.stdout


def test_outgoing_leaf_is_ecdsa_with_rsa_beside_it(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    ctx = cache.client_leg_context_for_upstream(tls_profile(), store, "mx.example.test")
    with serving(ctx) as port:
        default = s_client(port, "-CAfile", str(proxy_ca_file), *CHECKED)
    with serving(ctx) as port:
        rsa_only = s_client(
            port, "-CAfile", str(proxy_ca_file), *CHECKED, "-sigalgs", "RSA-PSS+SHA256"
        )
    assert _presented(default)[0] == "Server public key is 256 bit", default.stderr
    assert _presented(rsa_only)[0] == "Server public key is 2048 bit", rsa_only.stderr
    assert "Verify return code: 0 (ok)" in default.stdout + rsa_only.stdout


def test_pfs_none_static_rsa_gets_the_rsa_certificate(
    cache: TLSContextCache, store: CertificateStore
) -> None:
    ctx = cache.client_leg_context(tls_profile(pfs="none"), store, outgoing=False)
    with serving(ctx) as port:
        result = s_client(port, "-tls1_2")
    assert result.returncode == 0, result.stderr
    key, new = _presented(result)
    assert key == "Server public key is 2048 bit"
    assert "Cipher is AES256-GCM-SHA384" in new


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize("outgoing", [False, True], ids=["incoming", "outgoing-sni-leaf"])
def test_client_leg_sessions_resume(
    cache: TLSContextCache, store: CertificateStore, tmp_path: Path, version: str, outgoing: bool
) -> None:
    """One ticket per handshake, and it resumes, also where the SNI callback has
    switched to an issued leaf's context (outgoing actions towards MX hosts)."""
    ctx = cache.client_leg_context(tls_profile(), store, outgoing=outgoing)
    session = tmp_path / "session.pem"
    results = []
    for keep in ("-sess_out", "-sess_in"):
        with serving(ctx) as port:
            # -ign_eof and a line to send: s_client reads on until the server closes,
            # so the TLS 1.3 ticket (sent after the handshake) is in the session it saves.
            results.append(
                subprocess.run(
                    [
                        OPENSSL,
                        "s_client",
                        "-connect",
                        f"127.0.0.1:{port}",
                        "-servername",
                        "up.example.test",
                        version,
                        keep,
                        str(session),
                        "-ign_eof",
                    ],
                    input="q\n",
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
            )
    first, second = (
        next(line for line in r.stdout.splitlines() if line.startswith(("New, ", "Reused, ")))
        for r in results
    )
    assert first.startswith("New, ") and second.startswith("Reused, "), (first, second)
