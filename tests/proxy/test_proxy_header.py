"""The one PROXY-header reader: sans-IO, then fed by a Stream or by a peeked socket,
then end to end on each kind of listener (STARTTLS, implicit TLS that insists on
TLS, implicit TLS that also serves cleartext clients)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers import TIMEOUT, AiosmtpdUpstream, LoopThread, insecure_client_context

from smtpgate.proxy.preamble import PeekingSocket, read_proxy_header
from smtpgate.proxy.proxyproto import (
    MAX_PROXY_HEADER,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
)
from smtpgate.proxy.stream import Stream

pytestmark = pytest.mark.timeout(30)

V1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 25\r\n"


def v2(client: str = "192.0.2.8", port: int = 40002, tlvs: bytes = b"") -> bytes:
    """A PROXY v2 PROXY/TCP4 header, with ``tlvs`` appended to the address block."""
    addresses = socket.inet_aton(client) + socket.inet_aton("127.0.0.1")
    addresses += struct.pack("!HH", port, 25) + tlvs
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


# -- sans-IO --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "client"), [(V1, ("192.0.2.7", 40001)), (v2(), ("192.0.2.8", 40002))]
)
def test_reader_takes_a_header_fed_byte_by_byte(header: bytes, client: tuple[str, int]) -> None:
    reader = ProxyHeaderReader()
    stream = header + b"\x16\x03\x01"
    results = [reader.feed(stream[i : i + 1]) for i in range(len(header))]
    assert results[:-1] == [None] * (len(header) - 1)
    assert results[-1] == ProxyHeader(client, len(header), header)
    assert ProxyHeaderReader().feed(stream).after == b"\x16\x03\x01"  # type: ignore[union-attr]


def test_reader_refuses_what_is_not_a_header() -> None:
    with pytest.raises(ProxyHeaderError, match=r"^connection does not start with a PROXY"):
        ProxyHeaderReader().feed(b"EHLO client.test\r\n")


def test_reader_refuses_a_v2_header_over_the_limit_even_when_complete() -> None:
    header = v2(tlvs=b"\x00" * MAX_PROXY_HEADER)
    with pytest.raises(ProxyHeaderError, match=r"^PROXY header too long$"):
        ProxyHeaderReader().feed(header)


def test_reader_refuses_an_incomplete_v2_header_at_the_limit() -> None:
    reader = ProxyHeaderReader()
    head = v2(tlvs=b"\x00" * MAX_PROXY_HEADER)[: MAX_PROXY_HEADER - 1]
    assert reader.feed(head) is None
    with pytest.raises(ProxyHeaderError, match=r"^PROXY header too long$"):
        reader.feed(b"\x00")


# -- the same reader over real sockets: a Stream, and a socket peeked at ----------------------


async def _stream_and_peer() -> tuple[Stream, socket.socket]:
    ours, theirs = socket.socketpair()
    _, stream = await asyncio.get_running_loop().connect_accepted_socket(Stream, ours)
    return stream, theirs


def test_slow_header_times_out_the_same_from_a_stream_and_a_peeked_socket() -> None:
    async def from_stream() -> str:
        stream, peer = await _stream_and_peer()
        peer.sendall(V1[:10])
        try:
            await read_proxy_header(stream.read, timeout=0.3)
        except ProxyHeaderError as exc:
            return str(exc)
        finally:
            stream.abort()
            peer.close()
        return "no error"

    async def from_socket() -> str:
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        peer.sendall(V1[:10])
        try:
            await read_proxy_header(PeekingSocket(ours, None).receive, timeout=0.3)
        except ProxyHeaderError as exc:
            return str(exc)
        finally:
            ours.close()
            peer.close()
        return "no error"

    loop = LoopThread()
    try:
        assert loop.run(from_stream()) == "no PROXY header within 0.3 s"
        assert loop.run(from_socket()) == "no PROXY header within 0.3 s"
    finally:
        loop.stop()


def test_peeked_socket_gives_up_exactly_the_header() -> None:
    """The bytes after the header (a ClientHello) stay on the socket for TLS."""

    async def read() -> tuple[ProxyHeader | None, bytes]:
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        peeking = PeekingSocket(ours, None)
        peer.sendall(V1[:20])
        task = asyncio.create_task(read_proxy_header(peeking.receive))
        await asyncio.sleep(0.05)
        peer.sendall(V1[20:] + b"\x16\x03\x01rest")
        header = await task
        assert header is not None
        peeking.consume(header.length)
        left = ours.recv(100)
        ours.close()
        peer.close()
        return header, left

    loop = LoopThread()
    try:
        header, left = loop.run(read())
    finally:
        loop.stop()
    assert header is not None and header.client == ("192.0.2.7", 40001)
    assert left == b"\x16\x03\x01rest"


# -- end to end, on each kind of listener -------------------------------------------------------

LISTENERS = {
    "starttls": {},
    "implicit-tls-only": {
        "policy": {"implicit_tls": True},
        "profile": {"tls_compliant_only": True},
    },
    "implicit-or-clear": {
        "policy": {"implicit_tls": True},
        "profile": {"tls_compliant_only": False},
    },
}


@pytest.fixture
def upstream(make_upstream: Callable[..., AiosmtpdUpstream]) -> AiosmtpdUpstream:
    return make_upstream()


def _gate(make_gate: Any, upstream: AiosmtpdUpstream, listener: str) -> Any:
    shape = LISTENERS[listener]
    policy = {**shape.get("policy", {}), "proxy_protocol": True}
    return make_gate(upstream.port, policy=policy, profile=shape.get("profile", {}))


def _converse(sock: socket.socket) -> list[bytes]:
    """Banner, EHLO, QUIT: the first line of each reply."""
    buf, firsts = b"", []
    for command in (b"", b"EHLO client.test\r\n", b"QUIT\r\n"):
        sock.sendall(command)
        while not any(line[3:4] == b" " for line in buf.split(b"\r\n")):
            chunk = sock.recv(4096)
            assert chunk, (firsts, buf)
            buf += chunk
        firsts.append(buf[:3])
        buf = b""
    return firsts


def _connect_with(port: int, header: bytes, listener: str) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    raw.sendall(header)
    if listener == "starttls":
        return raw
    return insecure_client_context().wrap_socket(raw)


@pytest.mark.parametrize("listener", list(LISTENERS))
@pytest.mark.parametrize(
    ("header", "client"), [(V1, "192.0.2.7:40001"), (v2(), "192.0.2.8:40002")], ids=["v1", "v2"]
)
def test_proxy_header_in_front_of_each_listener(
    make_gate: Any, upstream: AiosmtpdUpstream, listener: str, header: bytes, client: str
) -> None:
    gate = _gate(make_gate, upstream, listener)
    with _connect_with(gate.port, header, listener) as sock:
        assert _converse(sock) == [b"220", b"250", b"221"]
    start = gate.wait_record("session_start")[0]
    assert start["client"] == client
    if listener == "starttls":
        assert start["client_tls"] == "none"
    else:
        assert start["client_tls"].startswith("TLSv1.")


@pytest.mark.parametrize("listener", list(LISTENERS))
@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (b"EHLO no-header.test\r\n", "connection does not start with a PROXY protocol header"),
        (b"PROXY TCP4 192.0.2.7 127.0.0.1 x 25\r\n", "malformed PROXY v1 address: "),
        (v2(tlvs=b"\x00" * MAX_PROXY_HEADER), "PROXY header too long"),
    ],
    ids=["none", "malformed", "too-long"],
)
def test_bad_proxy_header_is_logged_and_the_connection_closed(
    make_gate: Any, upstream: AiosmtpdUpstream, listener: str, first: bytes, reason: str
) -> None:
    gate = _gate(make_gate, upstream, listener)
    with socket.create_connection(("127.0.0.1", gate.port), timeout=TIMEOUT) as sock:
        sock.sendall(first)
        try:
            answer = sock.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert answer == b""  # no banner: closed
    record = gate.wait_record("proxy_header_error")[0]
    assert record["policy"] == "p"
    assert record["reason"].startswith(reason)
    assert gate.records("session_start") == []
    assert upstream.messages == []


def test_client_closing_before_a_header_is_not_an_error(
    make_gate: Any, upstream: AiosmtpdUpstream
) -> None:
    """A health check that connects and closes: no record, and the listener goes on."""
    for listener in LISTENERS:
        gate = _gate(make_gate, upstream, listener)
        socket.create_connection(("127.0.0.1", gate.port), timeout=TIMEOUT).close()
        with _connect_with(gate.port, V1, listener) as sock:
            assert _converse(sock) == [b"220", b"250", b"221"]
        gate.wait_record("session_start")
        assert gate.records("proxy_header_error") == []


def _banner_over_tls_sent_with_the_header(port: int, header: bytes) -> bytes:
    """The PROXY header and the ClientHello in one write (one segment): the
    listener must consume exactly the header and leave the ClientHello to TLS."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = insecure_client_context().wrap_bio(incoming, outgoing)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        pending = header
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(pending + outgoing.read())
                pending = b""
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        sock.sendall(outgoing.read())
        while True:
            try:
                return tls.read(1024)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                assert data, "closed before the banner"
                incoming.write(data)


@pytest.mark.parametrize("listener", ["implicit-tls-only", "implicit-or-clear"])
def test_header_and_client_hello_in_one_segment_under_load(
    make_gate: Any, upstream: AiosmtpdUpstream, listener: str
) -> None:
    gate = _gate(make_gate, upstream, listener)
    clients = 24
    with ThreadPoolExecutor(clients) as pool:
        banners = list(
            pool.map(lambda _: _banner_over_tls_sent_with_the_header(gate.port, V1), range(clients))
        )
    assert all(banner.startswith(b"220 ") for banner in banners)
    starts = gate.wait_record("session_start", count=clients)
    assert {(r["client"], r["client_tls"][:6]) for r in starts} == {("192.0.2.7:40001", "TLSv1.")}
    assert gate.records("proxy_header_error") == gate.records("tls_handshake_failed") == []
