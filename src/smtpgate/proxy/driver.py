"""The asyncio side of a proxy session: carries out its commands, turns I/O into events.

:class:`SessionDriver` is the only place a session meets sockets. It reads
the side the session waits on (:attr:`Session.wait`), with its timeout, and
feeds what arrived as one event; it executes the commands that come back in
order: writes (one per command, so one per batch of replies), connects or
takes a parked leg from the gateway's pool, TLS handshakes, closes, log
records. A handshake or connect is awaited inline: the session asked for it
last and waits for its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from email.utils import formatdate
from typing import Final

from smtpgate.logs import EventLog, describe_error
from smtpgate.proxy.commands import (
    AbortUpstream,
    CloseClient,
    Command,
    Log,
    OpenUpstream,
    ReleaseUpstream,
    ResolveNextHops,
    SendClient,
    SendUpstream,
    StartTLS,
)
from smtpgate.proxy.deadlines import ReadClock
from smtpgate.proxy.events import (
    ClientData,
    ConnectionLost,
    NextHopsResolved,
    ProxyEvent,
    Side,
    TimedOut,
    TLSDone,
    TLSFailed,
    UpstreamConnected,
    UpstreamConnectFailed,
    UpstreamData,
)
from smtpgate.proxy.limits import REPLY_OUT_OF_MEMORY, is_out_of_memory
from smtpgate.proxy.pool import UpstreamPool, usable
from smtpgate.proxy.runtime import PolicyRuntime
from smtpgate.proxy.session import Session, Wait
from smtpgate.proxy.stream import Stream, open_stream
from smtpgate.proxy.upstream import CLEAR, TLSFacts, UpstreamLeg, UpstreamTarget
from smtpgate.tls.result import OK


class ReceivedDate:
    """RFC 5322 date of this second for ``Received:``; formatted once per second, not
    per message. One per gateway, handed to its sessions."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = 0
        self._text = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, formatdate(now)
        return self._text


#: What :meth:`SessionDriver._carry_out` returns when every command was carried out.
_DONE: Final[tuple[Command, ...]] = ()


class SessionDriver:
    def __init__(
        self,
        session: Session,
        client: Stream,
        rt: PolicyRuntime,
        pool: UpstreamPool,
        log: EventLog,
    ) -> None:
        self.session = session
        self.client = client
        self.rt = rt
        self.pool = pool
        self.log = log
        #: The upstream leg the session holds, and its connection.
        self.leg: UpstreamLeg | None = None
        self.upstream: Stream | None = None
        self._clock = ReadClock()

    async def run(self, first_bytes: bytes = b"") -> None:
        """Until the session is over. ``first_bytes``: read with a PROXY header."""
        session = self.session
        handle = session.handle
        carry_out = self._carry_out
        end = "internal_error"  # a bug: the gateway logs it as session_error
        try:
            if rest := carry_out(session.start()):
                await self._execute(rest)
            if first_bytes and (rest := carry_out(handle(ClientData(first_bytes)))):
                await self._execute(rest)
            while (wait := session.wait) is not None:
                event = await self._next_event(wait)
                if rest := carry_out(handle(event)):
                    await self._execute(rest)
        except asyncio.CancelledError:
            end = "server_shutdown"  # the drain time after SIGTERM ran out
            raise
        except MemoryError:
            # Said before the close below flushes it; the upstream leg is aborted there,
            # so it never holds a complete copy of a message the client was not told of.
            end = "out_of_memory"
            with contextlib.suppress(Exception):
                self.client.write(REPLY_OUT_OF_MEMORY)
            raise
        finally:
            if not session.closed:  # end it as a vanished client, with the reason
                # After a bug in the session, ending it may fail too: the first error counts.
                with contextlib.suppress(Exception):
                    self._execute_now(session.handle(ConnectionLost(Side.CLIENT, end)))
            self.client.close()
            if self.upstream is not None:
                self.upstream.abort()
                self.upstream = self.leg = None

    async def _next_event(self, wait: Wait) -> ProxyEvent:
        loop = self.client.loop
        assert loop is not None  # the driver runs on a connected stream
        now = loop.time
        timeout, expiry = self._clock.next_read(wait, self.session.server.commands, now())
        if wait.side is Side.CLIENT:
            client = self.client
            upstream = self.upstream
            if upstream is not None:
                if not usable(upstream):
                    upstream.abort()
                    self.upstream = self.leg = None
                    return ConnectionLost(Side.UPSTREAM, "upstream closed the connection")
                if upstream.writing_paused:
                    # Back-pressure: no more client bytes until the upstream takes what we sent.
                    await upstream.drain()
            if client.writing_paused:
                try:
                    # Replies the client does not take: read nothing more until it does.
                    await client.drain(self.rt.command_timeout)
                except TimeoutError:
                    client.abort()  # closing would wait for it to read what is queued
                    return ConnectionLost(Side.CLIENT, "client_not_reading")
            try:
                data = await client.read(timeout, wait.max_bytes)
            except TimeoutError:
                return TimedOut(Side.CLIENT, expiry)
            if not data:
                if is_out_of_memory(client.lost_because):  # the transport could not go on
                    return ConnectionLost(Side.CLIENT, "out_of_memory")
                return ConnectionLost(Side.CLIENT)
            if wait.min_rate:
                self._clock.received(wait, len(data), now())
            return ClientData(data)
        upstream = self.upstream
        if upstream is None:
            return ConnectionLost(Side.UPSTREAM, "upstream closed the connection")
        try:
            data = await upstream.read(timeout)
        except TimeoutError:
            return TimedOut(Side.UPSTREAM)
        if not data:
            self.upstream = self.leg = None
            upstream.abort()
            return ConnectionLost(Side.UPSTREAM, "upstream closed the connection")
        return UpstreamData(data)

    def _carry_out(self, commands: Sequence[Command]) -> Sequence[Command]:
        """Carry out ``commands`` in order up to the first that is answered by an event
        (:class:`OpenUpstream`, :class:`StartTLS`); returns that one and those after it,
        for :meth:`_execute` (empty when all are done: most batches, with no await at all).

        Most frequent first: this runs for every event.
        """
        for i, command in enumerate(commands):
            match command:
                case SendClient():
                    self.client.write(command.data)
                case Log():
                    self.log.write(command.event, command.fields)
                case SendUpstream():
                    if self.upstream is not None:
                        self.upstream.writelines(command.data)
                case OpenUpstream() | StartTLS() | ResolveNextHops():
                    return commands[i:]
                case _:
                    self._finish(command)
        return _DONE

    async def _execute(self, rest: Sequence[Command]) -> None:
        """``rest`` starts with a command that is answered by an event: await it, carry
        out the others, hand the answer to the session, and so on with its commands."""
        while rest:
            answer: ProxyEvent | None = None
            while rest:
                command = rest[0]
                if isinstance(command, OpenUpstream):
                    answer = await self._open(command.target, fresh=command.fresh)
                elif isinstance(command, ResolveNextHops):
                    resolution = await self.rt.resolver.route(command.domain, self.rt.mx_port)
                    answer = NextHopsResolved(command.domain, resolution)
                else:
                    assert isinstance(command, StartTLS)
                    answer = await self._start_tls(command.side)
                rest = self._carry_out(rest[1:])
            rest = self._carry_out(self.session.handle(answer)) if answer is not None else _DONE

    def _execute_now(self, commands: list[Command]) -> None:
        """What can be done without awaiting: at the end, when nobody waits for answers."""
        for command in commands:
            if isinstance(command, SendClient):
                self.client.write(command.data)
            elif isinstance(command, Log):
                self.log.write(command.event, command.fields)
            elif isinstance(command, ReleaseUpstream | AbortUpstream | CloseClient):
                self._finish(command)

    def _finish(self, command: Command) -> None:
        if isinstance(command, CloseClient):
            self.client.close()
            return
        assert isinstance(command, ReleaseUpstream | AbortUpstream)
        stream = self.upstream
        if stream is None or command.leg is not self.leg:
            return
        self.upstream = self.leg = None
        if isinstance(command, AbortUpstream):
            stream.abort()
        else:
            self.pool.give(command.leg, stream)

    # -- the asynchronous commands -------------------------------------------------------------

    async def _open(self, target: UpstreamTarget, *, fresh: bool) -> ProxyEvent:
        parked = None if fresh else self.pool.take(target)
        if parked is not None:
            self.leg, self.upstream = parked
            return UpstreamConnected(self.leg)
        implicit = target.implicit_tls
        try:
            stream = await open_stream(
                target.hop.connect_to,
                target.port,
                ssl_context=target.context if implicit else None,
                server_hostname=target.tls_name if implicit else None,
                timeout=target.connect_timeout,
            )
        except ssl.SSLError as exc:
            return UpstreamConnectFailed(describe_error(exc), tls=True)
        except (OSError, TimeoutError) as exc:
            return UpstreamConnectFailed(describe_error(exc))
        facts = await upstream_tls_facts(stream, target) if implicit else CLEAR
        self.leg = UpstreamLeg(target, facts)
        peer = stream.peername
        self.leg.peer = peer[0] if peer is not None else ""
        self.upstream = stream
        return UpstreamConnected(self.leg)

    async def _start_tls(self, side: Side) -> ProxyEvent:
        if side is Side.CLIENT:
            client = self.client
            try:
                await client.start_tls(
                    self.rt.client_tls_context,
                    server_side=True,
                    timeout=self.rt.tls_handshake_timeout,
                )
            except (OSError, ConnectionError, TimeoutError) as exc:
                return TLSFailed(side, describe_error(exc))
            return TLSDone(side, TLSFacts.of(client.ssl_object))
        stream, leg = self.upstream, self.leg
        assert stream is not None and leg is not None
        target = leg.target
        try:
            await stream.start_tls(
                target.context,
                server_side=False,
                server_hostname=target.tls_name,
                timeout=target.timeout,
            )
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            stream.abort()
            self.upstream = self.leg = None
            return TLSFailed(side, describe_error(exc))
        return TLSDone(side, await upstream_tls_facts(stream, target))


async def upstream_tls_facts(stream: Stream, target: UpstreamTarget) -> TLSFacts:
    """The upstream handshake's version, cipher and certificate verdict.

    A verifying handshake is ``ok`` by construction; an opportunistic one
    gets what verification *would* say, for the log (RFC 7435), remembered
    per certificate by the target's verifier. OCSP, when the profile asks,
    needs a fresh answer per connection.
    """
    ssl_object = stream.ssl_object
    if ssl_object is None:
        return CLEAR
    profile = target.profile
    if profile.ocsp:
        verdict = await target.verifier.check_with_ocsp(
            ssl_object,
            target.tls_name,
            check_chain=target.verify_in_handshake or profile.validate_certificates,
        )
    elif target.verify_in_handshake:
        verdict = OK
    else:
        verdict = target.verifier.check(ssl_object, target.tls_name)
    return TLSFacts.of(ssl_object, verdict)
