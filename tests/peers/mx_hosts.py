"""Receiving servers standing in for MX hosts: one :class:`ScriptedUpstream` per
loopback address (127.0.0.2, 127.0.0.3, ...), all on one port, the port a
policy's ``mx_port`` names. An address given ``None`` holds the port bound
without listening, so connections to it are refused (an MX host that is down);
one given ``UNRESPONSIVE`` listens with a full accept queue, so connections to
it time out (a host whose packets are dropped).
"""

from __future__ import annotations

import socket
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol, TypeVar

from .scripted_upstream import ScriptedUpstream

__all__ = ["UNRESPONSIVE", "MXHosts"]

UNRESPONSIVE = "unresponsive"

T = TypeVar("T")


class Runner(Protocol):
    """Runs a coroutine on the loop the servers live on (``tests.proxy.helpers.LoopThread``)."""

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = ...) -> T: ...


class MXHosts:
    """Receiving servers on several loopback addresses, all on one port; an address
    given ``None`` holds the port bound without listening, so connections are refused."""

    def __init__(self, loop: Runner, servers: Mapping[str, dict[str, Any] | str | None]) -> None:
        self.loop = loop
        self.servers: dict[str, ScriptedUpstream] = {}
        self._refusing: list[socket.socket] = []
        for _attempt in range(20):
            try:
                self._start(servers)
                return
            except OSError:  # the port is taken on one of the addresses: another port
                self.stop()
        raise AssertionError("no port free on all of " + ", ".join(servers))

    def _start(self, servers: Mapping[str, dict[str, Any] | str | None]) -> None:
        self.port = 0
        for address, kwargs in servers.items():
            if kwargs is None or kwargs == UNRESPONSIVE:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._refusing.append(sock)
                sock.bind((address, self.port))
                self.port = sock.getsockname()[1]
                if kwargs == UNRESPONSIVE:
                    # Linux queues backlog + 1 connections, then drops further SYNs.
                    sock.listen(0)
                    filler = socket.create_connection((address, self.port), timeout=5)
                    self._refusing.append(filler)
                continue
            assert isinstance(kwargs, dict)
            upstream = ScriptedUpstream(hostname=f"mx.{address}", **kwargs)
            self.servers[address] = upstream
            self.port = self.loop.run(upstream.start(address, self.port))

    def __getitem__(self, address: str) -> ScriptedUpstream:
        return self.servers[address]

    def stop(self) -> None:
        for upstream in self.servers.values():
            self.loop.run(upstream.stop())
        for sock in self._refusing:
            sock.close()
        self.servers, self._refusing = {}, []
