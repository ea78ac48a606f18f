"""HAProxy PROXY protocol v1 and v2 headers (haproxy.org/download/2.9/doc/proxy-protocol.txt).

Read once, before the SMTP greeting, on policies with ``proxy_protocol = true``.
"""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1 = 107


class ProxyHeaderError(ValueError):
    pass


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
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 header")
    try:
        ip = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError as exc:
        raise ProxyHeaderError(f"malformed PROXY v1 address: {exc}") from exc
    return (str(ip), port), end + 2


def _parse_v2(buf: bytes) -> tuple[tuple[str, int] | None, int] | None:
    version_command, family, length = struct.unpack("!BBH", buf[12:16])
    if version_command >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY protocol version")
    total = 16 + length
    if len(buf) < total:
        return None
    if version_command & 0x0F == 0:  # LOCAL: health check from the proxy itself
        return None, total
    body = buf[16:total]
    if family >> 4 == 1 and len(body) >= 12:
        return (str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0]), total
    if family >> 4 == 2 and len(body) >= 36:
        return (str(ipaddress.IPv6Address(body[0:16])), struct.unpack("!H", body[32:34])[0]), total
    return None, total
