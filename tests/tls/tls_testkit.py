"""Loopback TLS plumbing for the tls tests."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpgate.config.schema import TLSProfile
from tests.peers.certs import client_context as client_context  # for the tls tests

TIMEOUT = 10.0


@dataclass
class ServerSide:
    error: BaseException | None = None
    version: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def tls_connection(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_hostname: str | None = None,
    server: ServerSide | None = None,
) -> Iterator[tuple[ssl.SSLSocket, ServerSide]]:
    """One real TLS handshake over 127.0.0.1; yields the client socket.

    A client-side handshake failure propagates as ssl.SSLError/OSError; the
    server side's outcome is in the yielded ServerSide.
    """
    server = server if server is not None else ServerSide()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                server.version = tls.version()
                with contextlib.suppress(OSError):
                    tls.recv(1)  # until the client closes
        except (ssl.SSLError, OSError) as exc:
            server.error = exc
        finally:
            server.done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            yield tls, server
    finally:
        thread.join(TIMEOUT)
        listener.close()


@dataclass
class Outcome:
    version: str | None
    cipher: str | None
    peer_der: bytes | None
    client_error: BaseException | None
    server_error: BaseException | None

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str | None = None
) -> Outcome:
    server = ServerSide()
    try:
        with tls_connection(server_ctx, client_ctx, server_hostname, server) as (tls, _):
            cipher = tls.cipher()
            return Outcome(
                tls.version(),
                cipher[0] if cipher else None,
                tls.getpeercert(binary_form=True),
                None,
                None,
            )
    except (ssl.SSLError, OSError) as exc:
        server.done.wait(TIMEOUT)
        return Outcome(None, None, None, exc, server.error)


def server_context(
    cert: Path, key: Path, *, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A test peer acting as the upstream SMTP server (TLS server)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def tls_profile(name: str = "TLS-Test", **fields: Any) -> TLSProfile:
    """A TLS profile as the configuration makes it: its fields and defaults (SPEC.md 3)."""
    return TLSProfile(name=name, **fields)
