"""Stream.read timeouts with one timer per stream (not one per read), on the event
loop serve runs (uvloop) and real loopback sockets: each read still times out
after its own timeout, no sooner and no later, whatever the reads before it
asked; and a closed stream is not kept alive by its timer."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

from smtpgate.proxy.stream import Stream, open_stream


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(test(), 30))


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[Stream, socket.socket]]:
    """Our Stream and the raw peer socket at the other end."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        accept = loop.create_task(loop.sock_accept(listener))
        stream = await open_stream("127.0.0.1", listener.getsockname()[1], timeout=5)
        peer, _ = await accept
        with peer:
            try:
                yield stream, peer
            finally:
                stream.abort()


def send_later(peer: socket.socket, delay: float, data: bytes) -> None:
    asyncio.get_running_loop().call_later(delay, peer.send, data)


async def timed_read(stream: Stream, timeout: float | None) -> tuple[bytes | None, float]:
    """What the read returned (None: it timed out) and how long it took."""
    started = time.monotonic()
    try:
        data: bytes | None = await stream.read(timeout)
    except TimeoutError:
        data = None
    return data, time.monotonic() - started


def test_a_read_times_out_after_its_timeout() -> None:
    async def test() -> None:
        async with connected() as (stream, _):
            data, took = await timed_read(stream, 0.3)
            assert data is None
            assert 0.29 <= took < 1.5

    run(test)


def test_a_shorter_timeout_after_a_longer_one_times_out_on_time() -> None:
    async def test() -> None:
        async with connected() as (stream, peer):
            send_later(peer, 0.05, b"EHLO a\r\n")
            assert (await timed_read(stream, 30))[0] == b"EHLO a\r\n"
            data, took = await timed_read(stream, 0.3)  # the timer armed for 30 s is early enough
            assert data is None
            assert 0.29 <= took < 1.5

    run(test)


def test_a_later_deadline_is_not_cut_by_an_earlier_read_s() -> None:
    async def test() -> None:
        async with connected() as (stream, peer):
            send_later(peer, 0.05, b"MAIL\r\n")
            assert (await timed_read(stream, 0.4))[0] == b"MAIL\r\n"
            # The first read's deadline (0.4 s after it began) passes while this one waits.
            send_later(peer, 0.7, b"RCPT\r\n")
            data, took = await timed_read(stream, 2.0)
            assert data == b"RCPT\r\n"
            assert took >= 0.6

    run(test)


def test_a_read_without_timeout_waits_past_an_earlier_deadline() -> None:
    async def test() -> None:
        async with connected() as (stream, peer):
            send_later(peer, 0.05, b"one\r\n")
            assert (await timed_read(stream, 0.2))[0] == b"one\r\n"
            send_later(peer, 0.5, b"two\r\n")
            assert (await timed_read(stream, None))[0] == b"two\r\n"

    run(test)


@pytest.mark.parametrize("end", ["peer closes", "we abort"])
def test_a_closed_stream_is_not_kept_alive_by_its_timer(end: str) -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.setblocking(False)
            accept = loop.create_task(loop.sock_accept(listener))
            stream = await open_stream("127.0.0.1", listener.getsockname()[1], timeout=5)
            peer, _ = await accept
            with peer:
                send_later(peer, 0.05, b"QUIT\r\n")
                assert await stream.read(300) == b"QUIT\r\n"  # the timer is armed for 300 s
                if end == "peer closes":
                    peer.close()
                    assert await stream.read(5) == b""
                else:
                    stream.abort()
                await asyncio.sleep(0.1)  # connection_lost
                gone = weakref.ref(stream)
                del stream
                gc.collect()
                assert gone() is None

    run(test)
