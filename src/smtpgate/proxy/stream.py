"""A TCP connection as the session sees it: read what arrived, write a batch,
switch to TLS in place.

A bare :class:`asyncio.Protocol` rather than asyncio streams: received
``bytes`` objects are handed to the SMTP core as they are (StreamReader would
copy them into its own buffer and out again), and a batch of replies or body
chunks goes out in one ``writelines``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, cast

#: Stop reading from the peer once this much is waiting for the session.
READ_HIGH_WATER = 256 * 1024
#: How early a timer may fire (libuv counts milliseconds).
_TIMER_SLACK = 0.002


class Stream(asyncio.Protocol):
    def __init__(
        self, on_connect: Callable[[Stream], Coroutine[Any, Any, None]] | None = None
    ) -> None:
        self.transport: asyncio.Transport | None = None
        #: The loop the connection runs on, kept from :meth:`connection_made`: in Python
        #: 3.11 every ``asyncio.get_running_loop()`` is a ``getpid`` system call (its
        #: fork check), and a read asked for it twice (here and in the driver).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._on_connect = on_connect
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._reading_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        #: When the waiting read times out (None: never), and the timer that checks it.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._drain_waiter: asyncio.Future[None] | None = None
        #: The transport's write buffer is over its high-water mark: :meth:`drain` waits.
        self.writing_paused = False
        self.task: asyncio.Task[None] | None = None
        self._tls = False
        #: The peer's address, read as soon as the connection is made: uvloop asks the
        #: socket only when asked, and once a client has reset the connection (a
        #: balancer's health check does) the socket no longer knows it.
        self._peername: tuple[str, int] | None = None
        #: What ended the connection, when the transport said (None: a close or EOF).
        self.lost_because: Exception | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._tls = transport.get_extra_info("ssl_object") is not None
        peer: Any = transport.get_extra_info("peername")
        self._peername = (str(peer[0]), int(peer[1])) if peer else None
        loop = self.loop = asyncio.get_running_loop()
        if self._on_connect is not None:
            self.task = loop.create_task(self._on_connect(self))

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_because = exc
        self._eof = True
        self._wake_reader()
        if self._timer is not None:  # it would keep this stream alive until it fires
            self._timer.cancel()
            self._timer = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what the session uses ----------------------------------------------------------------

    async def read(self, timeout: float | None = None, max_bytes: int | None = None) -> bytes:
        """Everything received so far, waiting if nothing is there; ``b""`` at end of stream.

        With ``max_bytes``, at most that much; the rest stays for the next call
        (input a peer piled up while we did not read it comes in bounded pieces).

        Raises TimeoutError when nothing arrives for ``timeout`` seconds. Not
        ``asyncio.timeout``, nor a timer per read: this runs several times per
        message, and one timer per stream serves them all (:meth:`_expire_at`).
        """
        if not self._chunks:
            if self._eof:
                return b""
            loop = self.loop
            assert loop is not None  # reads follow connection_made
            waiter = self._read_waiter = loop.create_future()
            if timeout is not None:
                self._expire_at(loop, loop.time() + timeout)
            else:
                self._deadline = None
            try:
                await waiter
            finally:
                self._read_waiter = None
            if not self._chunks:
                return b""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if max_bytes is not None and len(data) > max_bytes:
            chunks.append(data[max_bytes:])
            data = data[:max_bytes]
        self._buffered = len(chunks[0]) if chunks else 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def _expire_at(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Time the waiting read out at ``deadline``.

        A timer made and cancelled per read costs more than the read's own
        work, so the timer stays armed across reads: each read only moves the
        deadline (later, mostly), and the timer is replaced only when the
        deadline comes before it. When it fires it ends a read that waits past
        its deadline, arms itself again for a read that waits but whose
        deadline is later, and lapses when no read waits.
        """
        self._deadline = deadline
        timer = self._timer
        if timer is None or self._timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        waiter, deadline = self._read_waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return
        loop = self.loop
        assert loop is not None
        # Within the event loop's timer resolution: a timer may fire a little early.
        if loop.time() + _TIMER_SLACK >= deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._check_deadline)

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def writelines(self, data: list[bytes | memoryview]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._tls and len(data) > 1:
            # A TLS transport encrypts each piece into its own record and write;
            # one joined buffer is one record and one system call.
            transport.write(b"".join(data))
        else:
            transport.writelines(data)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait while the transport's write buffer is over its high-water mark.

        Not reading meanwhile is the back-pressure: a peer that does not take
        what we write gets nothing more read from it (``data_received`` pauses
        the transport at :data:`READ_HIGH_WATER`). Raises TimeoutError when the
        buffer does not drop below the mark for ``timeout`` seconds.
        """
        if self.writing_paused and self.transport is not None and not self.transport.is_closing():
            loop = asyncio.get_running_loop()
            waiter = self._drain_waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._drain_waiter = None
                if timer is not None:
                    timer.cancel()

    async def start_tls(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Upgrade in place. Plaintext not yet consumed is dropped (RFC 3207)."""
        assert self.transport is not None
        self._chunks.clear()
        self._buffered = 0
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self.transport,
            self,
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=timeout,
        )
        if transport is None:
            raise ConnectionError("TLS handshake did not complete")
        self.transport = transport
        self._tls = True

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        if self.transport is None:
            return None
        obj: Any = self.transport.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject | ssl.SSLSocket) else None  # type: ignore[return-value]

    @property
    def peername(self) -> tuple[str, int] | None:
        return self._peername

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def open_stream(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 30.0,
) -> Stream:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(
            Stream,
            host,
            port,
            ssl=ssl_context,
            server_hostname=server_hostname if ssl_context else None,
            ssl_handshake_timeout=timeout if ssl_context else None,
        ),
        timeout,
    )
    return protocol
