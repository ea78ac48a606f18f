"""What comes before the SMTP session on a listener that must look first.

Two things need the bytes *before* the TLS layer sees them, which an asyncio
transport cannot give back once it has read them: a PROXY protocol header in
front of implicit TLS, and telling a TLS ClientHello from a cleartext client
on an implicit-TLS listener whose profile does not insist on TLS
(``tls_compliant_only = false``). Such listeners accept the raw socket
themselves; this module peeks at it with ``MSG_PEEK`` and consumes exactly
the PROXY header, and only then is the socket handed to a transport (with TLS
from its first byte, or in clear).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from enum import Enum

from smtpgate.proxy.proxyproto import ProxyHeaderError, parse_proxy_header
from smtpgate.tls.info import starts_with_tls_handshake

#: A TLS client sends its ClientHello at once; a cleartext SMTP client waits for
#: our banner. Silence this long means the latter.
CLEARTEXT_CLIENT_WAIT = 2.0
#: PROXY v2 headers may carry TLVs; nothing legitimate comes near this.
MAX_PROXY_HEADER = 4096


class Opening(Enum):
    TLS = "tls"
    CLEARTEXT = "cleartext"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Preamble:
    opening: Opening
    client: tuple[str, int] | None


async def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether bytes (or the end of the stream) arrived within ``timeout``."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(sock.fileno(), _wake, ready)
    try:
        async with asyncio.timeout(timeout):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(sock.fileno())


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _peek(sock: socket.socket, size: int) -> bytes:
    try:
        return sock.recv(size, socket.MSG_PEEK)
    except BlockingIOError:
        return b""


async def read_preamble(
    sock: socket.socket,
    peer: tuple[str, int] | None,
    *,
    proxy_protocol: bool,
    insist_on_tls: bool,
    timeout: float,
) -> Preamble:
    """PROXY header (if configured, consumed), then whether TLS or cleartext follows."""
    client = peer
    if proxy_protocol:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0 or not await _readable(sock, left):
                raise ProxyHeaderError("no complete PROXY header in time")
            buffered = _peek(sock, MAX_PROXY_HEADER)
            if not buffered:
                return Preamble(Opening.CLOSED, client)
            parsed = parse_proxy_header(buffered)
            if parsed is not None:
                break
            if len(buffered) >= MAX_PROXY_HEADER:
                raise ProxyHeaderError("PROXY header too long")
            await asyncio.sleep(0.005)  # readable stays true: let the rest arrive
        address, length = parsed
        while length:
            length -= len(sock.recv(length))
        client = address or client
    if insist_on_tls:
        return Preamble(Opening.TLS, client)
    if not await _readable(sock, CLEARTEXT_CLIENT_WAIT):
        return Preamble(Opening.CLEARTEXT, client)
    first = _peek(sock, 3)
    if not first:
        return Preamble(Opening.CLOSED, client)
    tls = starts_with_tls_handshake(first) or (len(first) < 3 and first[:1] == b"\x16")
    return Preamble(Opening.TLS if tls else Opening.CLEARTEXT, client)
