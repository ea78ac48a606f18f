"""HAProxy PROXY protocol v1 and v2 headers (haproxy.org/download/2.9/doc/proxy-protocol.txt).

Read once, before the SMTP greeting, on policies with ``proxy_protocol = true``.
:class:`ProxyHeaderReader` is the one reader, sans-IO: whichever way the bytes
arrive (a stream, or a socket peeked at), they are fed to it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1 = 107
#: PROXY v2 headers may carry TLVs; nothing legitimate comes near this.
MAX_PROXY_HEADER = 4096


class ProxyHeaderError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    #: The client address the proxy reports; None for LOCAL/UNKNOWN (use the peer's).
    client: tuple[str, int] | None
    #: How many bytes the header takes.
    length: int
    #: Everything fed so far: the header and whatever came after it.
    received: bytes

    @property
    def after(self) -> bytes:
        """The bytes that followed the header (the start of the SMTP or TLS conversation)."""
        return self.received[self.length :]


class ProxyHeaderReader:
    """Buffers what arrives until a complete header is there, at most
    :data:`MAX_PROXY_HEADER` bytes; :class:`ProxyHeaderError` if it is not one."""

    __slots__ = ("_received",)

    def __init__(self) -> None:
        self._received = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        """The header once it is complete, else None (feed more)."""
        received = self._received = self._received + data
        parsed = parse_proxy_header(received)
        if parsed is None:
            if len(received) >= MAX_PROXY_HEADER:
                raise ProxyHeaderError("PROXY header too long")
            return None
        client, length = parsed
        if length > MAX_PROXY_HEADER:
            raise ProxyHeaderError("PROXY header too long")
        return ProxyHeader(client, length, received)


def parse_proxy_header(buf: bytes) -> tuple[tuple[str, int] | None, int] | None:
    """``((client ip, port) or None for LOCAL/UNKNOWN, header length)``, or None if incomplete."""
    if buf.startswith(V2_SIGNATURE[: len(buf)]) and len(buf) < 16:
        return None
    if buf.startswith(V2_SIGNATURE):
        return _parse_v2(buf)
    if b"PROXY "[: len(buf)] == buf[:6] and len(buf) < 6:
        return None
    if buf.startswith(b"PROXY "):
        return _parse_v1(buf)
    raise ProxyHeaderError("connection does not start with a PROXY protocol header")


def _parse_v1(buf: bytes) -> tuple[tuple[str, int] | None, int] | None:
    end = buf.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(buf) >= MAX_V1:
            raise ProxyHeaderError("PROXY v1 header too long")
        return None
    parts = buf[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None, end + 2
    if len(parts) != 6 or parts[1] not in _V1_FAMILIES:
        raise ProxyHeaderError("malformed PROXY v1 header")
    family = _V1_FAMILIES[parts[1]]
    ip, _ = (_v1_address(family, address, parts[1]) for address in parts[2:4])
    source_port, _ = (_v1_port(port) for port in parts[4:6])
    return (str(ip), source_port), end + 2


#: The v1 protocol names and the address each one must carry.
_V1_FAMILIES: dict[str, type[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {
    "TCP4": ipaddress.IPv4Address,
    "TCP6": ipaddress.IPv6Address,
}


def _v1_address(
    family: type[ipaddress.IPv4Address | ipaddress.IPv6Address], text: str, protocol: str
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return family(text)
    except ValueError:
        raise ProxyHeaderError(
            f"malformed PROXY v1 address: {text!r} is not a {protocol} address"
        ) from None


def _v1_port(text: str) -> int:
    """A v1 port: decimal digits, 0..65535 (not what ``int`` also takes: ``+25``, ``1_000``,
    ``-1``, other scripts' digits)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise ProxyHeaderError(f"malformed PROXY v1 address: port {text!r} is not 0..65535")
    return int(text)


def _parse_v2(buf: bytes) -> tuple[tuple[str, int] | None, int] | None:
    version_command, family, length = struct.unpack("!BBH", buf[12:16])
    if version_command >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY protocol version")
    total = 16 + length
    if len(buf) < total:
        return None
    command = version_command & 0x0F
    if command == 0:  # LOCAL: health check from the proxy itself
        return None, total
    if command != 1:  # PROXY; the specification says to drop anything else
        raise ProxyHeaderError(f"unsupported PROXY v2 command {command}")
    body = buf[16:total]
    if family >> 4 == 1 and len(body) >= 12:
        return (str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0]), total
    if family >> 4 == 2 and len(body) >= 36:
        return (str(ipaddress.IPv6Address(body[0:16])), struct.unpack("!H", body[32:34])[0]), total
    return None, total
