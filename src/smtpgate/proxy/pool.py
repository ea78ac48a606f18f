"""Idle upstream connections kept for the next session.

Opening the upstream leg costs a TCP connect, a greeting, EHLO, STARTTLS, a
TLS handshake and a second EHLO: more CPU than relaying a small message. A
leg whose transaction ended cleanly (:attr:`UpstreamLeg.at_rest`) is parked
here with its connection, keyed by where it goes and its TLS mode, and the
next session that needs the same takes it (as Postfix's connection cache
does). A parked leg is closed after ``IDLE_SECONDS``; one the upstream closed
meanwhile is discarded when taken, and a session that finds a reused leg dead
before its MAIL was answered retries once on a fresh one
(:mod:`smtpgate.proxy.session`).

The gateway owns one pool per policy and replaces it on reload: parked legs
were set up under the old settings.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque

from smtpgate.policy.decisions import UpstreamTLS
from smtpgate.proxy.stream import Stream
from smtpgate.proxy.upstream import UpstreamLeg, UpstreamTarget

IDLE_SECONDS = 10.0
MAX_IDLE_PER_KEY = 32

Parked = tuple[float, UpstreamLeg, Stream]
#: Next hop (host name, address, port), TLS mode and the name its certificate was
#: checked against: legs of an MX or transparent policy go to many servers, and only
#: one to the same server in the same mode, checked for the same name, serves.
PoolKey = tuple[str, str, int, UpstreamTLS, str]


def pool_key(target: UpstreamTarget) -> PoolKey:
    hop = target.hop
    return hop.host, hop.address, hop.port, target.mode, target.checked_domain


def usable(stream: Stream) -> bool:
    """Whether the connection is still open both ways as far as we know."""
    transport = stream.transport
    return not stream.at_eof and transport is not None and not transport.is_closing()


def close_quietly(stream: Stream) -> None:
    """QUIT without waiting for the answer: for legs nobody waits on."""
    stream.write(b"QUIT\r\n")
    stream.close()


class UpstreamPool:
    def __init__(self, idle_seconds: float = IDLE_SECONDS, max_idle: int = MAX_IDLE_PER_KEY):
        self._idle_seconds = idle_seconds
        self._max_idle = max_idle
        self._idle: dict[PoolKey, deque[Parked]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, target: UpstreamTarget) -> tuple[UpstreamLeg, Stream] | None:
        """The most recently parked live leg to ``target``'s host in its mode, marked reused."""
        parked = self._idle.get(pool_key(target))
        now = time.monotonic()
        while parked:
            since, leg, stream = parked.pop()  # the most recently used is the likeliest alive
            if now - since < self._idle_seconds and usable(stream):
                leg.reused = True
                return leg, stream
            close_quietly(stream)
        return None

    def give(self, leg: UpstreamLeg, stream: Stream) -> None:
        """Park ``leg`` when it is at rest and alive; otherwise QUIT and close it.

        Either way, the first time, its TLS session (by now with the server's
        ticket) is kept for the next connection to the same server
        (:class:`UpstreamContext`): once per connection, because Python hands
        out a connection's session as a copy (serialized and parsed again,
        certificate included), which costs more than the transaction did.
        """
        ssl_object = stream.ssl_object
        if not leg.reused and isinstance(ssl_object, ssl.SSLObject):
            leg.target.context.remember(leg.target.tls_name, ssl_object)
        if not leg.at_rest or not usable(stream):
            close_quietly(stream)
            return
        parked = self._idle.setdefault(pool_key(leg.target), deque())
        parked.append((time.monotonic(), leg, stream))
        while len(parked) > self._max_idle:
            close_quietly(parked.popleft()[2])
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._idle_seconds, self._sweep)

    def __len__(self) -> int:
        return sum(len(parked) for parked in self._idle.values())

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = time.monotonic() - self._idle_seconds
        for parked in self._idle.values():
            while parked and parked[0][0] <= deadline:
                close_quietly(parked.popleft()[2])
        # Next hops come and go (one per MX host): keep no empty entry for them.
        self._idle = {key: parked for key, parked in self._idle.items() if parked}
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self._idle_seconds, self._sweep)

    def close(self) -> None:
        for parked in self._idle.values():
            while parked:
                close_quietly(parked.pop()[2])
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
