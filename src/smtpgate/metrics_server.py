"""The metrics listener inside ``smtpgate serve``: plain HTTP ``GET /metrics``.

A listener of its own rather than a path of the console: Prometheus scrapes
plain HTTP on a loopback or management address without a client certificate
(the console is HTTPS with the proxy's own certificate and accounts), and
metrics stay available with the console off. uvicorn serves prometheus_client's
ASGI app as one more task of serve's event loop, as the console does. With
``[metrics] token_file`` a scrape must send ``Authorization: Bearer <token>``
(Prometheus: ``authorization: {credentials_file: ...}``); without it, anyone
who reaches the address may read the metrics.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from prometheus_client import make_asgi_app

from smtpgate.config.errors import ConfigError
from smtpgate.config.schema import MetricsSettings
from smtpgate.embedded_http import EmbeddedHTTP, bind, url_host
from smtpgate.logs import EventLog
from smtpgate.metrics import GatewayState, Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding white space removed); a ConfigError
    naming ``metrics.token_file`` when it cannot be read or is empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([("metrics.token_file", f"{path}: cannot read: {why}")]) from exc
    if not token:
        raise ConfigError([("metrics.token_file", f"{path}: is empty")])
    return token


def metrics_app(metrics: Metrics, token: str | None) -> ASGIApp:
    """``GET /metrics`` (text or OpenMetrics, gzip when asked); 404 elsewhere;
    401 without the bearer token when one is configured."""
    exposition: ASGIApp = make_asgi_app(metrics.registry)
    expected = f"Bearer {token}".encode() if token else None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            await _answer(send, 404, b"not found: metrics are at /metrics\n")
            return
        if expected is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                await _answer(
                    send, 401, b"a bearer token is required\n", [(b"www-authenticate", b"Bearer")]
                )
                return
        await metrics.gateway.refresh()
        await exposition(scope, receive, send)

    return app


async def _answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MetricsServer:
    """The ``[metrics] listen`` listener of one serve."""

    def __init__(self, metrics: Metrics, settings: MetricsSettings, log: EventLog) -> None:
        self.metrics = metrics
        self.settings = settings
        self.log = log
        self.port = 0
        self._http = EmbeddedHTTP()

    async def start(self) -> None:
        """Listen; a ConfigError naming ``metrics.listen`` (or ``metrics.token_file``)."""
        settings = self.settings
        token = read_token(settings.token_file) if settings.token_file else None
        listen = settings.listen
        sock = bind(listen, "metrics", backlog=64)
        self.port = sock.getsockname()[1]
        await self._http.start(
            sock,
            metrics_app(self.metrics, token),
            section="metrics",
            concurrency=16,
            graceful_seconds=2,
        )
        host = url_host(listen.host)
        self.log.emit(
            "metrics_listening",
            listen=f"{host}:{self.port}",
            url=f"http://{host}:{self.port}/metrics",
        )

    async def stop(self) -> None:
        await self._http.stop()


def count_metrics(gateway: GatewayState, log: EventLog) -> Metrics | None:
    """With ``[metrics] enabled``: metrics that count every record from now on
    (made before the gateway listens, so that they miss nothing)."""
    if not gateway.config.metrics.enabled:
        return None
    metrics = Metrics(gateway)
    log.observe(metrics.observe)
    return metrics


async def start_metrics(metrics: Metrics | None, log: EventLog) -> MetricsServer | None:
    """Listen on ``[metrics] listen`` for ``metrics`` (None: metrics are off)."""
    if metrics is None:
        return None
    server = MetricsServer(metrics, metrics.gateway.config.metrics, log)
    await server.start()
    return server
