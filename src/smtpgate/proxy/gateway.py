"""Listeners and the process lifecycle: start, reload (SIGHUP or the API), SIGTERM drain.

A listener is one listening address. Its kernel socket stays open as long as
some policy listens on that address; what accepts on it is an *acceptor*, made
for one policy's runtime of one configuration, on a duplicate of the socket.
A reload binds the addresses that are new, starts new acceptors everywhere,
then stops the old acceptors and closes the addresses no policy uses any
more. Two acceptors on one socket share its queue, so a client connecting
during a reload is taken by one or the other, never refused; a session keeps
the runtime its acceptor had.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import math
import os
import resource
import signal
import socket
import ssl
import sys
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtpgate.config.errors import ConfigError, Loc
from smtpgate.config.files import file_key, profile_file_errors
from smtpgate.config.netaddr import TRANSPARENT, HostPort, in_networks
from smtpgate.config.schema import Config
from smtpgate.config.warnings import config_warnings
from smtpgate.logs import EventLog, describe_error
from smtpgate.logtargets import destination, open_error, open_sink
from smtpgate.proxy.driver import ReceivedDate, SessionDriver
from smtpgate.proxy.interception import (
    IP6T_SO_ORIGINAL_DST,
    SO_ORIGINAL_DST,
    SOCKADDR_SIZE,
    Interception,
    intercepted,
    loops_back,
    not_intercepted,
    parse_sockaddr,
    platform_problem,
)
from smtpgate.proxy.limits import (
    OUT_OF_MEMORY,
    REPLY_OUT_OF_MEMORY,
    ConnectionLimits,
    Refusal,
    descriptors_needed,
    is_out_of_memory,
)
from smtpgate.proxy.pool import UpstreamPool
from smtpgate.proxy.preamble import Opening, PeekingSocket, read_proxy_header
from smtpgate.proxy.proxyproto import ProxyHeaderError
from smtpgate.proxy.runtime import PolicyRuntime, compile_policy, load_certificates
from smtpgate.proxy.session import Session
from smtpgate.proxy.stream import Stream
from smtpgate.proxy.upstream import TLSFacts
from smtpgate.routing.resolver import gateway_resolver
from smtpgate.tls.certificates import CertificateError
from smtpgate.tls.contexts import TLSContextCache
from smtpgate.tls.trust import TrustAnchors


def compile_runtimes(config: Config, contexts: TLSContextCache) -> dict[str, PolicyRuntime]:
    """Everything sessions need, built before anything listens (errors stop the start).

    Called again on reload with a new ``contexts``: nothing cached under the
    previous configuration (contexts, trust anchors, verdicts, DNS answers) is
    carried over.
    ``smtpgate check`` runs this too. A file that cannot be used is a
    :class:`ConfigError` naming the key that set it.
    """
    try:
        certificates = load_certificates(config)
    except (CertificateError, OSError) as exc:
        # The only error without a file is the host name a certificate is made for.
        raise _file_error(config, exc, ("gateway", "hostname")) from exc
    unusable = profile_file_errors(config)
    if unusable:
        raise ConfigError.at(unusable)
    trust = TrustAnchors()
    resolver = gateway_resolver(config.gateway)
    runtimes = {}
    for i, policy in enumerate(config.policies):
        if policy.upstream == TRANSPARENT:
            problem = platform_problem(sys.platform, tproxy=policy.tproxy)
            if problem is not None:
                raise ConfigError.at([(("policies", i, "upstream"), problem)])
        try:
            runtimes[policy.name] = compile_policy(
                config, policy, certificates, contexts, trust, resolver
            )
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


Address = tuple[str, int]
LoopExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


@dataclass(frozen=True, slots=True)
class Serving:
    """What a connection is served with: one policy's runtime and its pool of
    upstream legs, from one configuration. An acceptor hands it to every
    connection it takes, so a session keeps it whatever a reload does meanwhile."""

    runtime: PolicyRuntime
    pool: UpstreamPool


@dataclass(eq=False, slots=True)
class Listener:
    """One listening address: the kernel socket (open while a policy listens
    here, across reloads) and the acceptor of the running configuration."""

    address: Address
    #: One socket, or one per address a host name resolves to.
    socks: list[socket.socket]
    policy: str
    stop_accepting: Callable[[], None]

    @property
    def port(self) -> int:
        """The port bound."""
        return int(self.socks[0].getsockname()[1])

    def close(self) -> None:
        """Stop accepting and close the sockets: connections not yet taken are refused."""
        self.stop_accepting()
        _close(self.socks)


class RawAcceptor:
    """Accepts on a socket for a listener that looks at the first bytes itself.

    A reader callback rather than a task awaiting ``sock_accept``: cancelling
    that task can drop a connection the loop already accepted for it; here a
    connection is either accepted and handed on in the same callback, or left
    in the queue for the next acceptor.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_accept: Callable[[socket.socket, Any], None],
        on_error: Callable[[OSError | MemoryError], None],
    ) -> None:
        self._sock = sock
        self._on_accept = on_accept
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._resume: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        try:
            conn, peer = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another acceptor on the same socket took it
        except (OSError, MemoryError) as exc:  # out of descriptors or memory: pause
            self._on_error(exc)
            self._loop.remove_reader(self._sock.fileno())
            self._resume = self._loop.call_later(0.1, self._listen_again)
            return
        try:
            self._on_accept(conn, peer)
        except MemoryError as exc:  # no task for it: closed, nothing can be said
            conn.close()
            self._on_error(exc)

    def _listen_again(self) -> None:
        self._resume = None
        self._loop.add_reader(self._sock.fileno(), self._ready)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


@dataclass(frozen=True, slots=True)
class WorkerShare:
    """What one of ``workers`` worker processes takes (``[gateway] workers``): the
    connection limits hold for all workers together, so each takes its share,
    ``limit // workers`` (at least 1)."""

    workers: int


def _limits(config: Config, worker: WorkerShare | None) -> tuple[int, int]:
    """``max_connections`` and ``max_connections_per_client`` for this process."""
    total, per_client = config.gateway.max_connections, config.gateway.max_connections_per_client
    if worker is None:
        return total, per_client
    return max(1, total // worker.workers), max(1, per_client // worker.workers)


class Gateway:
    def __init__(
        self,
        config: Config,
        log: EventLog,
        *,
        reload_config: Callable[[], Config] | None = None,
        drain_seconds: float = 30.0,
        worker: WorkerShare | None = None,
    ) -> None:
        """``worker``: one of several processes of ``serve`` (:mod:`smtpgate.proxy.worker`):
        it binds its listeners with ``SO_REUSEPORT`` beside the other workers', takes
        its share of the connection limits, and its log only forwards records to the
        supervisor, which applies ``[logging]``."""
        self.config = config
        self.log = log
        self._worker = worker
        self._max_connections, self._max_per_client = _limits(config, worker)
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
        #: Listening addresses of the running configuration.
        self._listeners: dict[Address, Listener] = {}
        self._sessions: set[asyncio.Task[None]] = set()
        #: Client connections now, across reloads ([gateway] max_connections...).
        self._connections = ConnectionLimits()
        self._stopped = asyncio.Event()
        #: One reload at a time, and none once stop() has begun.
        self._reload_lock = asyncio.Lock()
        self._stopping = False
        self._reloads: set[asyncio.Task[bool]] = set()
        self._previous_loop_handler: LoopExceptionHandler | None = None

    async def start(self) -> None:
        """Listen on every policy's address; a ConfigError naming the
        ``listen`` key if one cannot be had (nothing is left listening).

        Under the reload lock: serve installs its signal handlers first, and a
        SIGHUP that comes meanwhile reloads once the listeners are up."""
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            self._previous_loop_handler = loop.get_exception_handler()
            loop.set_exception_handler(self._loop_exception)
            opened = self._bind_new(self.runtimes)
            try:
                acceptors = await self._start_accepting(self.runtimes, self.pools, opened)
            except BaseException:
                _close(*opened.values())
                raise
            self._listeners = {
                address: Listener(address, opened[address], name, stop)
                for address, (name, stop) in acceptors.items()
            }
            for address in opened:
                self._log_listening(self._listeners[address])
            self._check_descriptors()

    def _check_descriptors(self) -> None:
        """A warning when the open-files limit is below what max_connections may need."""
        wanted = self._max_connections  # a worker's share: its own open-files limit
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        needed = descriptors_needed(wanted)
        if soft != resource.RLIM_INFINITY and needed > soft:
            self.log.emit(
                "config_warning",
                key="gateway.max_connections",
                warning=f"{wanted} connections may need {needed} open files, the limit is "
                f"{soft}: past what it allows clients get 421 4.7.0",
            )

    def _bind_new(self, runtimes: dict[str, PolicyRuntime]) -> dict[Address, list[socket.socket]]:
        """Listening sockets for the addresses of ``runtimes`` that are not listened
        on yet; a ConfigError naming ``policies[N].listen`` if one cannot be had
        (then the ones bound here are closed again)."""
        opened: dict[Address, list[socket.socket]] = {}
        for index, rt in enumerate(runtimes.values()):
            address = _address(rt)
            try:
                if address in self._listeners:
                    # A socket that stays: IP_TRANSPARENT follows tproxy.
                    for sock in self._listeners[address].socks:
                        _set_transparent(sock, on=rt.tproxy)
                    continue
                opened[address] = _bind(
                    *address, transparent=rt.tproxy, reuse_port=self._worker is not None
                )
            except OSError as exc:
                _close(*opened.values())
                raise listen_error(index, address, exc) from exc
        return opened

    async def _start_accepting(
        self,
        runtimes: dict[str, PolicyRuntime],
        pools: dict[str, UpstreamPool],
        opened: dict[Address, list[socket.socket]],
    ) -> dict[Address, tuple[str, Callable[[], None]]]:
        """Acceptors for each policy of ``runtimes``, on duplicates of its
        address's sockets (``opened`` or a running listener's); by address, with
        the policy and what stops them. On failure the ones started are stopped."""
        started: dict[Address, tuple[str, Callable[[], None]]] = {}
        stops: list[Callable[[], None]] = []
        try:
            for name, rt in runtimes.items():
                address = _address(rt)
                socks = opened[address] if address in opened else self._listeners[address].socks
                serving = Serving(rt, pools[name])
                mine = [await self._acceptor(sock, serving) for sock in socks]
                stops += mine
                started[address] = (name, _all(mine))
        except BaseException:
            _all(stops)()
            raise
        return started

    async def _acceptor(self, sock: socket.socket, serving: Serving) -> Callable[[], None]:
        """Start accepting on a duplicate of ``sock`` for ``serving``; returns what stops it
        (closing the duplicate only: the socket and its queue stay)."""
        own = sock.dup()
        rt = serving.runtime
        if _looks_first(rt):
            acceptor = RawAcceptor(
                own,
                lambda conn, peer: self._track(
                    asyncio.get_running_loop().create_task(
                        self._serve(serving, PeekingSocket(conn, (str(peer[0]), int(peer[1]))))
                    )
                ),
                lambda exc: self._accept_failed(rt, exc),
            )
            return acceptor.close
        try:
            server = await asyncio.get_running_loop().create_server(
                self._on_stream(serving),
                sock=own,
                ssl=rt.client_tls_context if rt.implicit_tls else None,
                ssl_handshake_timeout=rt.tls_handshake_timeout if rt.implicit_tls else None,
                backlog=512,
            )
        except BaseException:
            own.close()
            raise
        return server.close

    def _accept_failed(self, rt: PolicyRuntime, exc: OSError | MemoryError) -> None:
        if isinstance(exc, MemoryError):
            self._out_of_memory("accept", rt.name)
        else:
            self.log.emit("accept_failed", policy=rt.name, reason=describe_error(exc))

    def _out_of_memory(self, where: str, policy: str | None = None) -> None:
        """One ``out_of_memory`` record a second at most, with how many failed since the
        last (a storm must not become a flood of records, nor of tracebacks). Never
        raises: writing the record needs memory too, and then it is left out."""
        count = self._connections.refused(OUT_OF_MEMORY, asyncio.get_running_loop().time())
        if count:
            named = {"policy": policy} if policy is not None else {}
            with contextlib.suppress(MemoryError):
                self.log.emit("out_of_memory", **named, where=where, count=count)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Errors the event loop meets outside any session task: a transport whose
        TLS layer or read buffer could not be allocated (the connection is closed
        already, nothing can be said) becomes the rate-limited record; anything
        else goes where it went before."""
        if is_out_of_memory(context.get("exception")):
            self._out_of_memory("transport")
        elif self._previous_loop_handler is not None:
            self._previous_loop_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def _log_listening(self, listener: Listener) -> None:
        rt = self.runtimes[listener.policy]
        self.log.emit(
            "listening",
            policy=listener.policy,
            listen=f"{rt.listen_host}:{listener.port}",
            upstream=rt.upstream,
            implicit_tls=rt.implicit_tls,
        )

    @property
    def open_connections(self) -> int:
        """Client connections being served now (sessions, and connections still
        reading a PROXY header or doing an implicit-TLS handshake)."""
        return len(self._sessions)

    async def refresh(self) -> None:
        """What a scrape reads is up to date in one process (see the supervisor's)."""

    def bound_ports(self) -> dict[str, int]:
        return {listener.policy: listener.port for listener in self._listeners.values()}

    # -- the accept path ------------------------------------------------------------------------
    #
    # Two ways in, one path: a listener without look-ahead gets its connections
    # from the event loop's server as a Stream (TLS already done on an
    # implicit-TLS port); one that looks first gets raw sockets from
    # its RawAcceptor. Both run _serve: the same bookkeeping, the same PROXY-header
    # reader, the same error handling and log records.

    def _track(self, task: asyncio.Task[None]) -> None:
        """Every session task, from either way in, until it ends (drained on stop)."""
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    def _on_stream(self, serving: Serving) -> Callable[[], Stream]:
        def stream() -> Stream:
            return Stream(lambda stream: self._serve(serving, stream))

        return stream

    async def _serve(self, serving: Serving, connection: Stream | PeekingSocket) -> None:
        if isinstance(connection, Stream):
            assert connection.task is not None
            self._track(connection.task)
        rt = serving.runtime
        counts = self._connections
        refusal = counts.take(self._max_connections)
        if refusal is not None:
            # Before any reading: on a listener that looks first, before TLS, so nothing
            # can be said and the socket is just closed.
            peer = connection.peername if isinstance(connection, Stream) else connection.peer
            self._refuse(connection, rt, peer, refusal)
            return
        stream: Stream | None = None
        address: str | None = None
        try:
            interception = None
            if rt.transparent:  # before a handshake: the socket is the accepted one
                if isinstance(connection, PeekingSocket):
                    sock = connection.sock
                else:
                    assert connection.transport is not None
                    sock = connection.transport.get_extra_info("socket")
                interception = _interception(sock, rt)
            opened = await self._open(connection, rt)
            if opened is None:
                return
            stream, client, tls, first_bytes = opened
            # The client's address: from the PROXY header where there is one.
            address = client[0] if client else "unknown"
            refusal = counts.take_client(address, self._max_per_client)
            if refusal is not None:
                address = None
                self._refuse(stream, rt, client, refusal)
                return
            await self._run_session(
                stream, serving, client, tls=tls, first_bytes=first_bytes, interception=interception
            )
        except MemoryError:
            # 421 4.3.0 where a reply can be given (a session's driver gave it already:
            # a closed stream takes no more), then closed; the other sessions go on,
            # and new connections are served again once memory is to be had.
            self._out_of_memory("session", rt.name)
            leg = stream if stream is not None else connection
            if isinstance(leg, Stream):
                with contextlib.suppress(Exception):
                    leg.write(REPLY_OUT_OF_MEMORY)
                leg.close()
            else:
                leg.sock.close()  # before TLS: nothing can be said
        except Exception as exc:  # a bug in one session must not stop the others
            self.log.emit("session_error", policy=rt.name, error=repr(exc))
            if stream is not None:
                stream.abort()
            elif isinstance(connection, Stream):
                connection.abort()
            else:
                connection.sock.close()
        finally:
            counts.release()
            if address is not None:
                counts.release_client(address)

    def _refuse(
        self,
        connection: Stream | PeekingSocket,
        rt: PolicyRuntime,
        client: tuple[str, int] | None,
        refusal: Refusal,
    ) -> None:
        """``421 4.7.0`` and close (a socket not yet read from is closed without a word)."""
        if isinstance(connection, Stream):
            connection.write(refusal.reply)
            connection.close()
        else:
            connection.sock.close()
        refused = self._connections.refused(refusal, asyncio.get_running_loop().time())
        if refused:
            self.log.emit(
                "connection_refused",
                policy=rt.name,
                client=f"{client[0]}:{client[1]}" if client else "unknown",
                reason=refusal.reason,
                connections=self._connections.total,
                refused=refused,
            )

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
            peer_ip = client[0] if client else ""
            if rt.proxy_protocol_from and not in_networks(peer_ip, rt.proxy_protocol_from):
                # Anyone else could claim any client address: closed before reading.
                reason = f"{peer_ip or 'unknown'} is not a trusted balancer (proxy_protocol_from)"
                self.log.emit("proxy_header_error", policy=rt.name, reason=reason)
                close()
                return None
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

    def _run_session(
        self,
        stream: Stream,
        serving: Serving,
        client: tuple[str, int] | None,
        *,
        tls: bool,
        first_bytes: bytes = b"",
        interception: Interception | None = None,
    ) -> Coroutine[Any, Any, None]:
        """The session's driver run, for the caller to await: not a coroutine of its own,
        which every read of the session would pass through twice more."""
        rt = serving.runtime
        session = Session(
            rt,
            f"{self._session_prefix}.{next(self._session_ids)}",
            f"{client[0]}:{client[1]}" if client else "unknown",
            client_tls=TLSFacts.of(stream.ssl_object) if tls else None,
            received_date=self._received_date,
            log_addresses=self.log.addresses,
            interception=interception,
        )
        return SessionDriver(session, stream, rt, serving.pool, self.log).run(first_bytes)

    # -- lifecycle -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        handle_signals(reload=self.reload_soon, reopen=self.log.reopen, stop=self.request_stop)

    def reload_soon(self) -> None:
        """SIGHUP: :meth:`reload` as a task of its own (a signal handler cannot wait)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Apply the configuration file again; True when it was applied.

        New sessions get the new configuration; sessions in progress keep theirs.
        Listeners follow the policies: an address that is new is bound before
        anything else changes (one that cannot be had refuses the whole reload,
        naming ``policies[N].listen``); an address that stays keeps its socket;
        an address no policy uses any more is closed once the new acceptors run.
        Reloads run one at a time, in the order they were asked for.

        The log file is reopened first, whatever happens next, so that logrotate
        can rename it and signal (no ``copytruncate``).
        """
        async with self._reload_lock:
            self.log.reopen()
            if self._reload_config is None or self._stopping:
                return False
            try:
                config = self._reload_config()
            except (ConfigError, CertificateError, OSError) as exc:
                self.log.emit("reload_failed", reason=describe_error(exc))
                return False
            return await self._apply(config)

    async def apply(self, config: Config, worker: WorkerShare) -> bool:
        """A worker's reload: run ``config`` (read and checked by its supervisor, which
        also says what share the worker takes) as :meth:`reload` runs the file's; True when
        it was applied."""
        async with self._reload_lock:
            if self._stopping:
                return False
            self._worker = worker
            return await self._apply(config)

    async def _apply(self, config: Config) -> bool:
        """:meth:`reload`'s work once the configuration is read, under the reload lock."""
        try:
            contexts = TLSContextCache()
            runtimes = compile_runtimes(config, contexts)
            opened = self._bind_new(runtimes)
        except (ConfigError, CertificateError, OSError) as exc:
            self.log.emit("reload_failed", reason=describe_error(exc))
            return False
        try:
            self._configure_log(config)
        except OSError as exc:
            _close(*opened.values())
            self.log.emit("reload_failed", reason=open_error(config.logging, exc))
            return False
        pools = {name: UpstreamPool() for name in runtimes}
        try:
            acceptors = await self._start_accepting(runtimes, pools, opened)
        except OSError as exc:
            _close(*opened.values())
            with contextlib.suppress(OSError):  # back to where it logged before
                self._configure_log(self.config)
            self.log.emit("reload_failed", reason=f"cannot accept: {describe_error(exc)}")
            return False
        # From here on nothing waits: no session sees half of this.
        self._commit(config, contexts, runtimes, pools, opened, acceptors)
        return True

    def _commit(
        self,
        config: Config,
        contexts: TLSContextCache,
        runtimes: dict[str, PolicyRuntime],
        pools: dict[str, UpstreamPool],
        opened: dict[Address, list[socket.socket]],
        acceptors: dict[Address, tuple[str, Callable[[], None]]],
    ) -> None:
        """Make the new configuration the running one; the new acceptors already
        run beside the old ones, so stopping the old ones leaves no gap."""
        old_listeners = self._listeners
        for listener in old_listeners.values():
            listener.stop_accepting()
        closed = sorted(
            _display(listener) for a, listener in old_listeners.items() if a not in acceptors
        )
        for address, listener in old_listeners.items():
            if address not in acceptors:
                _close(listener.socks)
        for pool in self.pools.values():
            pool.close()  # parked legs were set up under the old settings
        self.config, self._contexts, self.runtimes, self.pools = config, contexts, runtimes, pools
        self._max_connections, self._max_per_client = _limits(config, self._worker)
        self._listeners = {
            address: Listener(
                address,
                opened[address] if address in opened else old_listeners[address].socks,
                name,
                stop,
            )
            for address, (name, stop) in acceptors.items()
        }
        self.log.emit(
            "reloaded",
            policies=sorted(runtimes),
            opened=sorted(_display(self._listeners[a]) for a in opened),
            closed=closed,
        )
        for address in opened:
            self._log_listening(self._listeners[address])
        for warning in config_warnings(config):
            self.log.emit("config_warning", key=warning.key, warning=warning.reason)
        self._check_descriptors()

    def _configure_log(self, config: Config) -> None:
        """Apply ``[logging]``; OSError if the file cannot be opened (nothing changed).
        A worker's log forwards every record: only ``addresses`` is its own."""
        if self._worker is not None:
            self.log.addresses = config.logging.addresses
            return
        configure_log(self.log, config)

    def request_stop(self) -> None:
        self._stopped.set()

    async def serve_until_stopped(self) -> None:
        await self._stopped.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, let sessions finish (bounded), then cut the rest."""
        self._stopping = True
        async with self._reload_lock:  # a reload under way finishes first, then none starts
            for listener in self._listeners.values():
                listener.close()
        self.log.emit("stopping", sessions=len(self._sessions))
        # A connection the closed listener had already accepted starts its session a
        # turn later: it is drained too, so the wait takes whatever is in progress
        # until none is left or the bound is reached, not a snapshot.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_seconds
        await asyncio.sleep(0)
        while self._sessions and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._sessions), timeout=left)
            await asyncio.sleep(0)  # let sessions accepted meanwhile register
        pending = set(self._sessions)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        for pool in self.pools.values():
            pool.close()
        self.log.emit("stopped")


def handle_signals(
    *, reload: Callable[[], None], reopen: Callable[[], None], stop: Callable[[], None]
) -> None:
    """What ``serve``'s signals do (one process, or the supervisor of workers)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload)
    # logrotate's convention for daemons that reopen their log without reloading.
    loop.add_signal_handler(signal.SIGUSR1, reopen)
    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)


def configure_log(log: EventLog, config: Config) -> None:
    """Apply ``[logging]``; OSError if the file cannot be opened (nothing changed)."""
    logging = config.logging
    log.configure(
        destination(logging), lambda: open_sink(logging), logging.format, logging.addresses
    )


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
        ssl_handshake_timeout=math.ceil(rt.tls_handshake_timeout),  # typed as whole seconds
    )
    transport, _ = await loop.connect_accepted_socket(lambda: tls_protocol, sock)
    try:
        await handshake
    except BaseException:
        transport.abort()
        raise
    return stream


def _address(rt: PolicyRuntime) -> Address:
    """Where a policy listens, as configured: a listener's identity across reloads."""
    return rt.listen_host, rt.listen_port


def _display(listener: Listener) -> str:
    """``policy host:port``, as ``listening`` shows it."""
    return f"{listener.policy} {listener.address[0]}:{listener.port}"


class _NotTransparent(OSError):
    """IP_TRANSPARENT cannot be set on a listener (policy key ``tproxy``)."""


def _bind(
    host: str,
    port: int,
    *,
    transparent: bool = False,
    reuse_port: bool = False,
    listen: bool = True,
) -> list[socket.socket]:
    """Listening sockets for ``host:port``: one for an address, one per address
    a host name resolves to (as the event loop's ``create_server`` binds).
    ``transparent``: with IP_TRANSPARENT, for connections a TPROXY rule diverts.
    ``reuse_port``: with SO_REUSEPORT, beside the other workers' sockets (the kernel
    spreads the connections over them). Not ``listen``: only bound, holding the port
    (the supervisor's: :func:`hold`)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, *_, sockaddr in dict.fromkeys(found):
            # SO_REUSEADDR, and IPV6_V6ONLY on an IPv6 socket, as create_server sets them;
            # IP_TRANSPARENT and SO_REUSEPORT must be set before the bind.
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if transparent:
                _set_transparent(sock, on=True)
            sock.bind(sockaddr)
            if listen:
                sock.listen(512)
    except BaseException:
        _close(socks)
        raise
    return socks


def listen_error(index: int, address: Address, exc: OSError) -> ConfigError:
    """Why policy ``index`` cannot listen on ``address``, naming its key (``listen``,
    or ``tproxy`` when IP_TRANSPARENT is refused)."""
    if isinstance(exc, _NotTransparent):
        return ConfigError.at([(("policies", index, "tproxy"), str(exc))])
    # The errno's text (create_server's own repeats the address), or the resolver's.
    if isinstance(exc, socket.gaierror) or not exc.errno:
        why = exc.strerror or str(exc)
    else:
        why = os.strerror(exc.errno)
    reason = f"{address[0]}:{address[1]}: {why.lower()}"
    return ConfigError.at([(("policies", index, "listen"), reason)])


def hold(host: str, port: int, *, transparent: bool = False) -> list[socket.socket]:
    """Sockets bound to ``host:port`` that do not listen: the supervisor of workers
    holds each address so. The port is then taken, and stays taken while workers
    restart; the workers' sockets (SO_REUSEADDR, SO_REUSEPORT, listening) bind beside
    it, but another program's listener, or another ``serve``'s, cannot. ``OSError``
    as :func:`_bind` raises it."""
    return _bind(host, port, transparent=transparent, listen=False)


def _set_transparent(sock: socket.socket, *, on: bool) -> None:
    """IP_TRANSPARENT (IPV6_TRANSPARENT on an IPv6 socket) on or off; turning it on
    needs CAP_NET_ADMIN or CAP_NET_RAW. Nothing is asked of the kernel when it is as wanted."""
    if not on and not sys.platform.startswith("linux"):
        return  # never set (platform_problem refuses tproxy elsewhere)
    level, option = (
        (socket.IPPROTO_IPV6, _IPV6_TRANSPARENT)
        if sock.family == socket.AF_INET6
        else (socket.SOL_IP, socket.IP_TRANSPARENT)
    )
    if not on and not sock.getsockopt(level, option):
        return
    try:
        sock.setsockopt(level, option, int(on))
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise _NotTransparent(
            f"cannot set IP_TRANSPARENT: {why.lower()} (needs CAP_NET_ADMIN or CAP_NET_RAW)"
        ) from exc


#: linux/in6.h; Python's socket module names only the IPv4 one.
_IPV6_TRANSPARENT = 75


def _interception(sock: socket.socket, rt: PolicyRuntime) -> Interception:
    """Where the client on ``sock`` was going (upstream = "transparent"): the socket's own
    address under TPROXY, the kernel's record of the address before the REDIRECT otherwise."""
    try:
        local = _host_port(sock.getsockname())
        if rt.tproxy:
            destination = local
        else:
            family = sock.family
            level, option = (
                (socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST)
                if family == socket.AF_INET6
                else (socket.SOL_IP, SO_ORIGINAL_DST)
            )
            destination = parse_sockaddr(sock.getsockopt(level, option, SOCKADDR_SIZE))
    except OSError as exc:  # ENOENT: not diverted (untracked); ENOPROTOOPT: no conntrack
        return not_intercepted(f"no original destination: {describe_error(exc)}")
    except ValueError as exc:
        return not_intercepted(f"no original destination: {exc}")
    loops = loops_back(
        destination,
        listeners=rt.own_listeners,
        local=None if rt.tproxy else local,
        is_local_address=_is_local_address,
    )
    return intercepted(destination, loops=loops)


def _host_port(sockaddr: Any) -> HostPort:
    host = str(sockaddr[0])
    return HostPort(str(ipaddress.ip_address(host.partition("%")[0])), int(sockaddr[1]))


def _is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this machine: binding to it (without
    IP_TRANSPARENT) works only then."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


def _close(*groups: list[socket.socket]) -> None:
    for socks in groups:
        for sock in socks:
            sock.close()


def _all(stops: list[Callable[[], None]]) -> Callable[[], None]:
    """One call that makes each of ``stops``."""

    def stop() -> None:
        for each in stops:
            each()

    return stop


def _looks_first(rt: PolicyRuntime) -> bool:
    """Implicit TLS with a PROXY header in front, or with cleartext clients allowed."""
    return rt.implicit_tls and (rt.proxy_protocol or not rt.profile.tls_compliant_only)
