"""Listeners and the process lifecycle: start, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from smtpgate.config.errors import ConfigError
from smtpgate.config.schema import Config
from smtpgate.logs import EventLog
from smtpgate.proxy.proxyproto import ProxyHeaderError, parse_proxy_header
from smtpgate.proxy.runtime import PolicyRuntime, compile_policy, load_certificates
from smtpgate.proxy.session import Session
from smtpgate.proxy.stream import Stream
from smtpgate.tls.certificates import CertificateError
from smtpgate.tls.contexts import TLSContextCache

PROXY_HEADER_TIMEOUT = 10.0


def compile_runtimes(config: Config, contexts: TLSContextCache) -> dict[str, PolicyRuntime]:
    """Everything sessions need, built before anything listens (errors stop the start)."""
    certificates = load_certificates(config)
    runtimes = {}
    for policy in config.policies:
        if policy.proxy_protocol and policy.implicit_tls:
            raise ConfigError(
                [(f"policies[{policy.name}].proxy_protocol", "not supported with implicit_tls")]
            )
        runtimes[policy.name] = compile_policy(config, policy, certificates, contexts)
    return runtimes


class Gateway:
    def __init__(
        self,
        config: Config,
        log: EventLog,
        *,
        reload_config: Callable[[], Config] | None = None,
        drain_seconds: float = 30.0,
    ) -> None:
        self.config = config
        self.log = log
        self._reload_config = reload_config
        self._drain_seconds = drain_seconds
        self._contexts = TLSContextCache()
        self.runtimes = compile_runtimes(config, self._contexts)
        self._servers: list[asyncio.Server] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name, rt in self.runtimes.items():
            server = await loop.create_server(
                lambda name=name: Stream(self._connection_handler(name)),
                rt.listen_host,
                rt.listen_port,
                ssl=rt.client_tls_context if rt.implicit_tls else None,
                ssl_handshake_timeout=rt.command_timeout if rt.implicit_tls else None,
                reuse_address=True,
                backlog=512,
            )
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]
            self.log.emit(
                "listening",
                policy=name,
                listen=f"{rt.listen_host}:{port}",
                upstream=rt.upstream,
                implicit_tls=rt.implicit_tls,
            )

    def bound_ports(self) -> dict[str, int]:
        return {
            name: int(server.sockets[0].getsockname()[1])
            for name, server in zip(self.runtimes, self._servers, strict=True)
        }

    def _connection_handler(self, policy: str) -> Callable[[Stream], Coroutine[Any, Any, None]]:
        async def handle(stream: Stream) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._sessions.add(task)
            try:
                await self._serve(stream, self.runtimes[policy])
            except Exception as exc:  # a bug in one session must not stop the others
                self.log.emit("session_error", policy=policy, error=repr(exc))
                stream.abort()
            finally:
                self._sessions.discard(task)

        return handle

    async def _serve(self, stream: Stream, rt: PolicyRuntime) -> None:
        client = stream.peername
        leftover = b""
        if rt.proxy_protocol:
            buf = b""
            try:
                async with asyncio.timeout(PROXY_HEADER_TIMEOUT):
                    while True:
                        data = await stream.read()
                        if not data:
                            stream.close()
                            return
                        buf += data
                        parsed = parse_proxy_header(buf)
                        if parsed is not None:
                            break
            except (TimeoutError, ProxyHeaderError) as exc:
                self.log.emit("proxy_header_error", policy=rt.name, reason=str(exc) or "timeout")
                stream.abort()
                return
            address, length = parsed
            client = address or client
            leftover = buf[length:]
        session = Session(stream, rt, self.log, client)
        if leftover:
            session.server.receive_data(leftover)
        await session.run()

    # -- lifecycle -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)

    def reload(self) -> None:
        """SIGHUP: new sessions get the new configuration; sessions in progress keep theirs."""
        if self._reload_config is None:
            return
        try:
            config = self._reload_config()
            contexts = TLSContextCache()
            runtimes = compile_runtimes(config, contexts)
        except (ConfigError, CertificateError, OSError) as exc:
            self.log.emit("reload_failed", reason=str(exc))
            return
        unchanged = set(runtimes) == set(self.runtimes) and all(
            (r.listen_host, r.listen_port, r.implicit_tls)
            == (
                self.runtimes[n].listen_host,
                self.runtimes[n].listen_port,
                self.runtimes[n].implicit_tls,
            )
            for n, r in runtimes.items()
        )
        if not unchanged:
            self.log.emit("reload_failed", reason="listeners changed; restart to apply")
            return
        for rt in self.runtimes.values():
            rt.pool.close()  # parked legs were set up under the old settings
        self.config, self._contexts, self.runtimes = config, contexts, runtimes
        self.log.emit("reloaded", policies=sorted(runtimes))

    def request_stop(self) -> None:
        self._stopped.set()

    async def serve_until_stopped(self) -> None:
        await self._stopped.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, let sessions finish (bounded), then cut the rest."""
        for server in self._servers:
            server.close()
        self.log.emit("stopping", sessions=len(self._sessions))
        if self._sessions:
            _, pending = await asyncio.wait(set(self._sessions), timeout=self._drain_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for rt in self.runtimes.values():
            rt.pool.close()
        self.log.emit("stopped")


def state_dir_of(config: Config) -> Path:
    return Path(config.gateway.state_dir)
