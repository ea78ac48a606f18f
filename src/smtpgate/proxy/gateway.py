"""Listeners and the process lifecycle: start, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import ssl
from asyncio import sslproto
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from smtpgate.config.errors import ConfigError, Loc
from smtpgate.config.files import file_key
from smtpgate.config.schema import Config
from smtpgate.config.warnings import config_warnings
from smtpgate.logs import EventLog, describe_error
from smtpgate.proxy.driver import ReceivedDate, SessionDriver
from smtpgate.proxy.pool import UpstreamPool
from smtpgate.proxy.preamble import Opening, PeekingSocket, read_proxy_header
from smtpgate.proxy.proxyproto import ProxyHeaderError
from smtpgate.proxy.runtime import PolicyRuntime, compile_policy, load_certificates
from smtpgate.proxy.session import Session
from smtpgate.proxy.stream import Stream
from smtpgate.proxy.upstream import TLSFacts
from smtpgate.tls.certificates import CertificateError
from smtpgate.tls.contexts import TLSContextCache
from smtpgate.tls.info import describe_tls
from smtpgate.tls.trust import TrustAnchors


def compile_runtimes(config: Config, contexts: TLSContextCache) -> dict[str, PolicyRuntime]:
    """Everything sessions need, built before anything listens (errors stop the start).

    Called again on reload with a new ``contexts``: nothing cached under the
    previous configuration (contexts, trust anchors, verdicts) is carried over.
    ``smtpgate check`` runs this too. A file that cannot be used is a
    :class:`ConfigError` naming the key that set it.
    """
    try:
        certificates = load_certificates(config)
    except (CertificateError, OSError) as exc:
        # The only error without a file is the host name a certificate is made for.
        raise _file_error(config, exc, ("gateway", "hostname")) from exc
    trust = TrustAnchors()
    runtimes = {}
    for i, policy in enumerate(config.policies):
        try:
            runtimes[policy.name] = compile_policy(config, policy, certificates, contexts, trust)
        except (CertificateError, OSError) as exc:
            # Without a file: the upstream host name an outgoing leaf is made for.
            raise _file_error(config, exc, ("policies", i, "upstream")) from exc
    return runtimes


def _file_error(config: Config, exc: CertificateError | OSError, fallback: Loc) -> ConfigError:
    if isinstance(exc, CertificateError):
        path, reason = exc.path, str(exc)
    else:
        path = Path(exc.filename) if isinstance(exc.filename, str) else None
        reason = f"{exc.filename}: {exc.strerror}" if path else str(exc)
    return ConfigError.at([(file_key(config, path, fallback), reason)])


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
        # The log was opened by our creator, with the file and format; the rest is ours.
        log.addresses = config.logging.addresses
        self._reload_config = reload_config
        self._drain_seconds = drain_seconds
        self._contexts = TLSContextCache()
        self.runtimes = compile_runtimes(config, self._contexts)
        #: Idle upstream legs per policy; a reload starts new ones.
        self.pools = {name: UpstreamPool() for name in self.runtimes}
        self._session_ids = itertools.count(1)
        self._session_prefix = f"{os.getpid():x}"
        self._received_date = ReceivedDate()
        self._servers: list[asyncio.Server] = []
        #: Listening sockets by policy; the ones that look first have an accept loop.
        self._listeners: dict[str, socket.socket | Any] = {}
        self._accepting: list[asyncio.Task[None]] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Listen on every policy's address; a ConfigError naming the
        ``listen`` key if one cannot be had (the caller stops the others)."""
        for index, (name, rt) in enumerate(self.runtimes.items()):
            try:
                await self._listen(name, rt)
            except OSError as exc:
                # uvloop's strerror repeats the address; the errno's text is the reason.
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                reason = f"{rt.listen_host}:{rt.listen_port}: {why.lower()}"
                raise ConfigError.at([(("policies", index, "listen"), reason)]) from exc

    async def _listen(self, name: str, rt: PolicyRuntime) -> None:
        loop = asyncio.get_running_loop()
        if _looks_first(rt):
            listener = socket.create_server(
                (rt.listen_host, rt.listen_port),
                family=socket.AF_INET6 if ":" in rt.listen_host else socket.AF_INET,
                backlog=512,
            )
            listener.setblocking(False)
            self._listeners[name] = listener
            self._accepting.append(loop.create_task(self._accept_loop(listener, name)))
        else:
            server = await loop.create_server(
                self._on_stream(name),
                rt.listen_host,
                rt.listen_port,
                ssl=rt.client_tls_context if rt.implicit_tls else None,
                ssl_handshake_timeout=rt.command_timeout if rt.implicit_tls else None,
                reuse_address=True,
                backlog=512,
            )
            self._servers.append(server)
            self._listeners[name] = server.sockets[0]
        port = self._listeners[name].getsockname()[1]
        self.log.emit(
            "listening",
            policy=name,
            listen=f"{rt.listen_host}:{port}",
            upstream=rt.upstream,
            implicit_tls=rt.implicit_tls,
        )

    def bound_ports(self) -> dict[str, int]:
        return {name: int(sock.getsockname()[1]) for name, sock in self._listeners.items()}

    # -- the accept path ------------------------------------------------------------------------
    #
    # Two ways in, one path: a listener without look-ahead gets its connections
    # from the event loop's server as a Stream (TLS already done on an
    # implicit-TLS port); one that looks first gets raw sockets from
    # _accept_loop. Both run _serve: the same bookkeeping, the same PROXY-header
    # reader, the same error handling and log records.

    async def _accept_loop(self, listener: socket.socket, policy: str) -> None:
        """Accept raw sockets for a listener that looks at the first bytes itself."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. out of descriptors: keep the listener alive
                self.log.emit("accept_failed", policy=policy, reason=describe_error(exc))
                await asyncio.sleep(0.1)
                continue
            connection = PeekingSocket(sock, (str(peer[0]), int(peer[1])))
            self._track(loop.create_task(self._serve(policy, connection)))

    def _track(self, task: asyncio.Task[None]) -> None:
        """Every session task, from either way in, until it ends (drained on stop)."""
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    def _on_stream(self, policy: str) -> Callable[[], Stream]:
        def stream() -> Stream:
            return Stream(lambda stream: self._serve(policy, stream))

        return stream

    async def _serve(self, policy: str, connection: Stream | PeekingSocket) -> None:
        if isinstance(connection, Stream):
            assert connection.task is not None
            self._track(connection.task)
        rt = self.runtimes[policy]
        stream: Stream | None = None
        try:
            opened = await self._open(connection, rt)
            if opened is None:
                return
            stream, client, tls, first_bytes = opened
            await self._run_session(stream, rt, client, tls=tls, first_bytes=first_bytes)
        except Exception as exc:  # a bug in one session must not stop the others
            self.log.emit("session_error", policy=policy, error=repr(exc))
            if stream is not None:
                stream.abort()
            elif isinstance(connection, Stream):
                connection.abort()
            else:
                connection.sock.close()

    async def _open(
        self, connection: Stream | PeekingSocket, rt: PolicyRuntime
    ) -> tuple[Stream, tuple[str, int] | None, bool, bytes] | None:
        """The client's Stream, address, whether TLS, and the first bytes after
        the PROXY header; None if the connection was closed (and logged why)."""
        receive: Callable[[], Awaitable[bytes]]
        if isinstance(connection, Stream):
            client, receive, close = connection.peername, connection.read, connection.abort
        else:
            client, receive, close = connection.peer, connection.receive, connection.sock.close
        first_bytes = b""
        if rt.proxy_protocol:
            try:
                header = await read_proxy_header(receive)
                if header is not None and isinstance(connection, PeekingSocket):
                    connection.consume(header.length)  # what follows stays for TLS
            except (ProxyHeaderError, OSError) as exc:
                self.log.emit("proxy_header_error", policy=rt.name, reason=describe_error(exc))
                close()
                return None
            if header is None:
                close()
                return None
            client = header.client or client
            first_bytes = header.after
        if isinstance(connection, Stream):
            return connection, client, rt.implicit_tls, first_bytes
        opening = await connection.opening(insist_on_tls=rt.profile.tls_compliant_only)
        if opening is Opening.CLOSED:
            close()
            return None
        encrypted = opening is Opening.TLS
        try:
            stream = await _stream_on_accepted(connection.sock, rt, encrypted)
        except (ssl.SSLError, OSError, ConnectionError, TimeoutError) as exc:
            self.log.emit("tls_handshake_failed", policy=rt.name, reason=describe_error(exc))
            close()
            return None
        return stream, client, encrypted, b""

    async def _run_session(
        self,
        stream: Stream,
        rt: PolicyRuntime,
        client: tuple[str, int] | None,
        *,
        tls: bool,
        first_bytes: bytes = b"",
    ) -> None:
        session = Session(
            rt,
            f"{self._session_prefix}.{next(self._session_ids)}",
            f"{client[0]}:{client[1]}" if client else "unknown",
            client_tls=TLSFacts(*describe_tls(stream.ssl_object)) if tls else None,
            received_date=self._received_date,
            log_addresses=self.log.addresses,
        )
        await SessionDriver(session, stream, rt, self.pools[rt.name], self.log).run(first_bytes)

    # -- lifecycle -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)

    def reload(self) -> None:
        """SIGHUP: new sessions get the new configuration; sessions in progress keep theirs.

        The log file is reopened first, whatever happens next, so that logrotate
        can rename it and signal (no ``copytruncate``).
        """
        self.log.reopen()
        if self._reload_config is None:
            return
        try:
            config = self._reload_config()
            contexts = TLSContextCache()
            runtimes = compile_runtimes(config, contexts)
        except (ConfigError, CertificateError, OSError) as exc:
            self.log.emit("reload_failed", reason=describe_error(exc))
            return
        unchanged = set(runtimes) == set(self.runtimes) and all(
            _listener_shape(r) == _listener_shape(self.runtimes[n]) for n, r in runtimes.items()
        )
        if not unchanged:
            self.log.emit("reload_failed", reason="listeners changed; restart to apply")
            return
        logging = config.logging
        try:
            self.log.configure(
                str(logging.file) if logging.file else None, logging.format, logging.addresses
            )
        except OSError as exc:
            why = exc.strerror or describe_error(exc)
            self.log.emit(
                "reload_failed", reason=f"logging.file: {logging.file}: cannot open: {why}"
            )
            return
        for pool in self.pools.values():
            pool.close()  # parked legs were set up under the old settings
        self.config, self._contexts, self.runtimes = config, contexts, runtimes
        self.pools = {name: UpstreamPool() for name in runtimes}
        self.log.emit("reloaded", policies=sorted(runtimes))
        for warning in config_warnings(config):
            self.log.emit("config_warning", key=warning.key, warning=warning.reason)

    def request_stop(self) -> None:
        self._stopped.set()

    async def serve_until_stopped(self) -> None:
        await self._stopped.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, let sessions finish (bounded), then cut the rest."""
        for server in self._servers:
            server.close()
        for task in self._accepting:
            task.cancel()
        for listener in self._listeners.values():
            if isinstance(listener, socket.socket):
                listener.close()
        self.log.emit("stopping", sessions=len(self._sessions))
        if self._sessions:
            _, pending = await asyncio.wait(set(self._sessions), timeout=self._drain_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for pool in self.pools.values():
            pool.close()
        self.log.emit("stopped")


async def _stream_on_accepted(sock: socket.socket, rt: PolicyRuntime, tls: bool) -> Stream:
    """A Stream over a socket we accepted ourselves, TLS from its first byte if ``tls``.

    uvloop 0.23's ``connect_accepted_socket(ssl=...)`` never starts reading, so
    its handshake never completes; asyncio's own SSL protocol layered on the
    uvloop transport does the same job (only for listeners that look first).
    """
    loop = asyncio.get_running_loop()
    if not tls:
        _, stream = await loop.connect_accepted_socket(Stream, sock)
        return stream
    stream = Stream()
    handshake: asyncio.Future[None] = loop.create_future()
    tls_protocol = sslproto.SSLProtocol(
        loop,
        stream,
        rt.client_tls_context,
        handshake,
        server_side=True,
        ssl_handshake_timeout=max(1, int(rt.command_timeout)),
    )
    transport, _ = await loop.connect_accepted_socket(lambda: tls_protocol, sock)
    try:
        await handshake
    except BaseException:
        transport.abort()
        raise
    return stream


def _listener_shape(rt: PolicyRuntime) -> tuple[str, int, bool, bool]:
    """What a listening socket was made with; a reload cannot change it."""
    return rt.listen_host, rt.listen_port, rt.implicit_tls, _looks_first(rt)


def _looks_first(rt: PolicyRuntime) -> bool:
    """Implicit TLS with a PROXY header in front, or with cleartext clients allowed."""
    return rt.implicit_tls and (rt.proxy_protocol or not rt.profile.tls_compliant_only)
