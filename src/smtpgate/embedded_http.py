"""An HTTP listener inside serve's event loop: uvicorn on a socket bound here.

The console (``[console] listen``) and the metrics (``[metrics] listen``) are both
served so: the socket is bound by us (its errors name the key), uvicorn serves
on it without signal handlers of its own (serve's stay in charge), and ``start``
returns once it listens. How a listener binds, starts and stops is decided here
only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn

from smtpgate.config.errors import ConfigError
from smtpgate.config.netaddr import HostPort

__all__ = ["EmbeddedHTTP", "bind", "url_host"]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: serve's handlers stay in charge."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(listen: HostPort, section: str, backlog: int) -> socket.socket:
    """A listening socket on ``listen``; a ConfigError naming ``<section>.listen``."""
    try:
        return socket.create_server(
            (listen.host, listen.port),
            family=socket.AF_INET6 if ":" in listen.host else socket.AF_INET,
            backlog=backlog,
        )
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError.at([((section, "listen"), f"{listen}: {why.lower()}")]) from exc


def url_host(host: str) -> str:
    """A host as a URL writes it (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


class EmbeddedHTTP:
    """One uvicorn server on one socket, started and stopped with serve."""

    def __init__(self) -> None:
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(
        self,
        sock: socket.socket,
        app: Any,
        *,
        section: str,
        concurrency: int,
        graceful_seconds: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Serve ``app`` on ``sock`` and return once it listens; a ConfigError naming
        ``<section>.listen`` when uvicorn could not start."""
        extra: dict[str, Any] = {}
        if tls is not None:
            extra["ssl_context_factory"] = lambda _config, _default: tls
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=graceful_seconds,
            limit_concurrency=concurrency,
            **extra,
        )
        self._server = server = _EmbeddedServer(config)
        self._task = task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                sock.close()
                task.result()
                raise ConfigError.at([((section, "listen"), f"the {section} did not start")])
            await asyncio.sleep(0.01)

    @property
    def started(self) -> bool:
        return self._task is not None

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
