"""A loopback port held for a server that binds it later.

Used where a server's port must be known before it starts (a configuration file
names it) and the server cannot report one it chose itself: ``smtpgate demo``,
the benchmark and the tests.
"""

from __future__ import annotations

import socket

__all__ = ["ReservedPort"]


class ReservedPort:
    """A loopback port held for a server that binds it later; use as a context manager,
    or :meth:`release` it once the server listens.

    Picking a port by binding port 0 and closing the socket ("free port") leaves a
    window before the server binds it in which another process can take it (a
    ``bind(0)`` of its own, or the local port of an outgoing connection): "address
    already in use", now and then. Here the probe socket stays bound, with
    ``SO_REUSEADDR`` and never listening, until the server is up. Linux then gives the
    port to nobody else, while a server that also sets ``SO_REUSEADDR`` (asyncio and
    uvloop servers, smtpgate, aiosmtpd, Postfix, HAProxy all do) may still bind and
    listen on it. Nothing connects to the held socket: it does not listen.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.host = host
        self.port = int(self._sock.getsockname()[1])

    def release(self) -> None:
        """Let go of the port (once the server holds it; harmless twice)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ReservedPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
