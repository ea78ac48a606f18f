"""Idle upstream connections kept for the next session.

Opening the upstream leg costs a TCP connect, a greeting, EHLO, STARTTLS, a
TLS handshake and a second EHLO: more CPU than relaying a small message. A
leg whose transaction ended cleanly is parked here, keyed by its TLS mode,
and the next session that needs the same mode takes it (as Postfix's
connection cache does). A parked leg is closed after ``IDLE_SECONDS``;
one the upstream closed meanwhile is discarded when taken, and a session
that finds a reused leg dead retries once on a fresh one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from smtpgate.policy.decisions import UpstreamTLS

if TYPE_CHECKING:
    from smtpgate.proxy.upstream import UpstreamLeg

IDLE_SECONDS = 10.0
MAX_IDLE_PER_MODE = 32


class UpstreamPool:
    def __init__(self, idle_seconds: float = IDLE_SECONDS, max_idle: int = MAX_IDLE_PER_MODE):
        self._idle_seconds = idle_seconds
        self._max_idle = max_idle
        self._idle: dict[UpstreamTLS, deque[tuple[float, UpstreamLeg]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, mode: UpstreamTLS) -> UpstreamLeg | None:
        parked = self._idle.get(mode)
        now = time.monotonic()
        while parked:
            since, leg = parked.pop()  # the most recently used is the likeliest alive
            if now - since < self._idle_seconds and leg.usable:
                return leg
            leg.close_quietly()
        return None

    def give(self, leg: UpstreamLeg) -> None:
        if not leg.usable or leg.client.waiting or leg.in_transaction:
            leg.close_quietly()
            return
        parked = self._idle.setdefault(leg.mode, deque())
        parked.append((time.monotonic(), leg))
        while len(parked) > self._max_idle:
            parked.popleft()[1].close_quietly()
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._idle_seconds, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = time.monotonic() - self._idle_seconds
        for parked in self._idle.values():
            while parked and parked[0][0] <= deadline:
                parked.popleft()[1].close_quietly()
        if any(self._idle.values()):
            self._sweeper = asyncio.get_running_loop().call_later(self._idle_seconds, self._sweep)

    def close(self) -> None:
        for parked in self._idle.values():
            while parked:
                parked.pop()[1].close_quietly()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
