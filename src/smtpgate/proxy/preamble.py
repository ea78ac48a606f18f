"""What comes before the SMTP session: the PROXY header, and TLS or cleartext.

:func:`read_proxy_header` is the one PROXY-header reader of every listener:
it feeds whatever a byte source yields to the sans-IO
:class:`~smtpgate.proxy.proxyproto.ProxyHeaderReader`, under one timeout.
The byte source is a :class:`~smtpgate.proxy.stream.Stream`'s ``read`` on
listeners whose transport is made by the event loop (what follows the header
is handed to the session), or :meth:`PeekingSocket.receive` on listeners that
must look at the first bytes before any transport exists.

Those are implicit-TLS listeners with a PROXY header in front of TLS, or whose
profile does not insist on TLS (``tls_compliant_only = false``: a TLS
ClientHello or a cleartext client). An asyncio transport cannot give back what
it has read, so such a socket is read with ``MSG_PEEK``, exactly the PROXY
header is consumed, and only then is the socket handed to a transport (with
TLS from its first byte, or in clear).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from enum import Enum

from smtpgate.proxy.proxyproto import (
    MAX_PROXY_HEADER,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
)
from smtpgate.tls.info import starts_with_tls_handshake

#: How long a PROXY header may take to arrive.
PROXY_HEADER_TIMEOUT = 10.0
#: A TLS client sends its ClientHello at once; a cleartext SMTP client waits for
#: our banner. Silence this long means the latter.
CLEARTEXT_CLIENT_WAIT = 2.0
#: Peeked bytes stay readable until consumed: wait this long for more to arrive.
_PEEK_AGAIN = 0.005


class Opening(Enum):
    TLS = "tls"
    CLEARTEXT = "cleartext"
    CLOSED = "closed"


async def read_proxy_header(
    receive: Callable[[], Awaitable[bytes]], timeout: float = PROXY_HEADER_TIMEOUT
) -> ProxyHeader | None:
    """The PROXY header from ``receive`` (new bytes each call, ``b""`` at the end);
    None if the connection ended first. :class:`ProxyHeaderError` if it is not
    one, is too long, or is not complete within ``timeout`` seconds."""
    reader = ProxyHeaderReader()
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await receive()
                if not data:
                    return None
                header = reader.feed(data)
                if header is not None:
                    return header
    except TimeoutError:
        raise ProxyHeaderError(f"no PROXY header within {timeout:g} s") from None


class PeekingSocket:
    """An accepted socket looked at before a transport takes it over.

    :meth:`receive` peeks (nothing is consumed) and yields only the bytes not
    yielded before; :meth:`consume` takes exactly the PROXY header off.
    """

    __slots__ = ("_peeked", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: tuple[str, int] | None) -> None:
        self.sock = sock
        self.peer = peer
        self._peeked = 0

    async def receive(self) -> bytes:
        while True:
            await _readable(self.sock, None)
            buffered = _peek(self.sock, MAX_PROXY_HEADER)
            if buffered is None:
                continue  # woken without data after all
            if not buffered:
                return b""
            if len(buffered) > self._peeked:
                new = buffered[self._peeked :]
                self._peeked = len(buffered)
                return new
            await asyncio.sleep(_PEEK_AGAIN)  # readable stays true: let the rest arrive

    def consume(self, length: int) -> None:
        """Take ``length`` bytes off the socket (they were peeked, so they are there)."""
        while length:
            length -= len(self.sock.recv(length))
        self._peeked = 0

    async def opening(self, *, insist_on_tls: bool) -> Opening:
        """Whether TLS or cleartext follows (what is left after any PROXY header)."""
        if insist_on_tls:
            return Opening.TLS
        if not await _readable(self.sock, CLEARTEXT_CLIENT_WAIT):
            return Opening.CLEARTEXT
        first = _peek(self.sock, 3)
        if first is None:
            return Opening.CLEARTEXT
        if not first:
            return Opening.CLOSED
        tls = starts_with_tls_handshake(first) or (len(first) < 3 and first[:1] == b"\x16")
        return Opening.TLS if tls else Opening.CLEARTEXT


async def _readable(sock: socket.socket, timeout: float | None) -> bool:
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


def _peek(sock: socket.socket, size: int) -> bytes | None:
    """What is waiting, without consuming it; ``b""`` at the end, None if nothing yet."""
    try:
        return sock.recv(size, socket.MSG_PEEK)
    except BlockingIOError:
        return None
