"""Stream.read timeouts with one timer per stream (not one per read), on the event
loop serve runs (uvloop) and real loopback sockets: each read still times out
after its own timeout, no sooner and no later, whatever the reads before it
asked; and a closed stream is not kept alive by its timer."""

from __future__ import annotations

import asyncio
import functools
import gc
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import uvloop

from smtpgate.proxy.stream import Stream, open_stream


def on_uvloop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the coroutine test on the loop serve runs (uvloop), 30 s at most."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return run


@contextmanager
def listening() -> Iterator[socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        yield listener


async def stream_to(listener: socket.socket) -> tuple[Stream, socket.socket]:
    """Our Stream to ``listener`` and the raw peer socket it accepted."""
    loop = asyncio.get_running_loop()
    accept = loop.create_task(loop.sock_accept(listener))
    stream = await open_stream("127.0.0.1", listener.getsockname()[1], timeout=5)
    peer, _ = await accept
    return stream, peer


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[Stream, socket.socket]]:
    """Our Stream and the raw peer socket at the other end."""
    with listening() as listener:
        stream, peer = await stream_to(listener)
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


async def assert_times_out(stream: Stream, timeout: float) -> None:
    """A read with nothing to read times out after ``timeout``: no sooner, not much later."""
    data, took = await timed_read(stream, timeout)
    assert data is None
    assert timeout - 0.01 <= took < timeout + 1.2


@on_uvloop
async def test_a_read_times_out_after_its_timeout() -> None:
    async with connected() as (stream, _):
        await assert_times_out(stream, 0.3)


@on_uvloop
async def test_a_shorter_timeout_after_a_longer_one_times_out_on_time() -> None:
    async with connected() as (stream, peer):
        send_later(peer, 0.05, b"EHLO a\r\n")
        assert (await timed_read(stream, 30))[0] == b"EHLO a\r\n"
        await assert_times_out(stream, 0.3)  # the timer armed for 30 s is early enough


@on_uvloop
async def test_a_later_deadline_is_not_cut_by_an_earlier_read_s() -> None:
    async with connected() as (stream, peer):
        send_later(peer, 0.05, b"MAIL\r\n")
        assert (await timed_read(stream, 0.4))[0] == b"MAIL\r\n"
        # The first read's deadline (0.4 s after it began) passes while this one waits.
        send_later(peer, 0.7, b"RCPT\r\n")
        data, took = await timed_read(stream, 2.0)
        assert data == b"RCPT\r\n"
        assert took >= 0.6


@on_uvloop
async def test_a_read_without_timeout_waits_past_an_earlier_deadline() -> None:
    async with connected() as (stream, peer):
        send_later(peer, 0.05, b"one\r\n")
        assert (await timed_read(stream, 0.2))[0] == b"one\r\n"
        send_later(peer, 0.5, b"two\r\n")
        assert (await timed_read(stream, None))[0] == b"two\r\n"


@pytest.mark.parametrize("end", ["peer closes", "we abort"])
@on_uvloop
async def test_a_closed_stream_is_not_kept_alive_by_its_timer(end: str) -> None:
    # Not connected(): its frame would keep a reference to the stream.
    with listening() as listener:
        stream, peer = await stream_to(listener)
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
