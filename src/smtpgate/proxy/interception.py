"""``upstream = "transparent"``: the next hop is where the client was going.

smtpgate sits in-line in a Linux firewall (docs/deployment.md). A firewall
rule diverts port-25 connections that pass through to smtpgate's listener,
and the kernel keeps where each one was going:

- after a ``REDIRECT`` (nftables ``redirect``, iptables ``-j REDIRECT``),
  ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` (IPv4) or
  ``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`` (IPv6) on the accepted
  socket gives the destination before the rewrite, as a ``sockaddr``;
- under ``TPROXY`` nothing is rewritten: the accepted socket's own address
  *is* the original destination (the listener has ``IP_TRANSPARENT``,
  policy key ``tproxy``).

This module is the part without I/O: the ``sockaddr`` parser, the loop
check and the replies. The gateway's accept path asks the socket and hands
the session an :class:`Interception`, data about the client connection like
its address.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from smtpgate.config.netaddr import HostPort

#: ``linux/netfilter_ipv4.h``; the IPv6 one (``linux/netfilter_ipv6/ip6_tables.h``) has
#: the same number at level SOL_IPV6.
SO_ORIGINAL_DST: Final = 80
IP6T_SO_ORIGINAL_DST: Final = 80
#: ``sizeof(struct sockaddr_in6)``: room for either answer.
SOCKADDR_SIZE: Final = 28

REPLY_LOOP: Final = (421, "4.4.6 Mail loop: the original destination is smtpgate itself")
"""The client connected to smtpgate itself, or was going to one of its listeners: relaying
would come back here. Temporary, so that nothing bounces while the firewall is fixed."""

REPLY_NOT_INTERCEPTED: Final = (
    421,
    "4.3.5 No original destination: the connection was not intercepted",
)
"""The kernel knows no original destination (no REDIRECT rule matched this connection)."""


@dataclass(frozen=True, slots=True)
class Interception:
    """Where an intercepted client was going, as the accept path found it."""

    #: The original destination; None when the kernel knows none.
    destination: HostPort | None
    #: Why the connection is not relayed ("" when it is), and the client's reply.
    refusal: str = ""
    reply: tuple[int, str] | None = None


def intercepted(destination: HostPort, *, loops: bool) -> Interception:
    """The connection was going to ``destination``; ``loops``: that is smtpgate itself."""
    if loops:
        return Interception(destination, f"{destination} is smtpgate's own listener", REPLY_LOOP)
    return Interception(destination)


def not_intercepted(why: str) -> Interception:
    return Interception(None, why, REPLY_NOT_INTERCEPTED)


def parse_sockaddr(raw: bytes) -> HostPort:
    """A ``sockaddr_in`` or ``sockaddr_in6`` as the kernel writes it (the family in
    host byte order, port and address in network order); ``ValueError`` otherwise.

    An IPv4-mapped IPv6 address is given as the IPv4 address it maps. The IPv6
    scope id is not kept: a link-local next hop cannot be named in ``host:port``.
    """
    if len(raw) < 2:
        raise ValueError(f"a {len(raw)}-byte sockaddr has no address family")
    family = int.from_bytes(raw[:2], sys.byteorder)
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == socket.AF_INET and len(raw) >= 8:
        address = ipaddress.IPv4Address(raw[4:8])
    elif family == socket.AF_INET6 and len(raw) >= 24:
        address = ipaddress.IPv6Address(raw[8:24])
        address = address.ipv4_mapped or address
    else:
        raise ValueError(f"a {len(raw)}-byte sockaddr of address family {family}")
    port = int.from_bytes(raw[2:4], "big")
    if port == 0:
        raise ValueError(f"sockaddr of {address} has port 0")
    return HostPort(str(address), port)


def loops_back(
    destination: HostPort,
    *,
    listeners: Iterable[HostPort],
    local: HostPort | None,
    is_local_address: Callable[[str], bool],
) -> bool:
    """Whether relaying to ``destination`` would land on smtpgate again.

    ``local``: the accepted socket's own address after a REDIRECT (a destination
    equal to it was not rewritten: the client connected to smtpgate itself);
    None under TPROXY, where the local address is the destination by design.
    ``listeners``: every policy's ``listen``. One on the destination's port
    catches it when its host is the destination, or when it is a wildcard or a
    host name and the destination is an address of this machine
    (``is_local_address``, asked only then). That errs towards refusing: a
    listener's name that resolves to another of this machine's addresses is
    still taken as this one.
    """
    if local is not None and destination == local:
        return True
    for listener in listeners:
        if listener.port != destination.port:
            continue
        if listener.host == destination.host:
            return True
        if not _is_address(listener.host) and is_local_address(destination.host):
            return True
    return False


def platform_problem(platform: str, *, tproxy: bool) -> str | None:
    """Why this platform cannot do transparent mode; None when it can.

    ``SO_ORIGINAL_DST`` and TPROXY are Linux netfilter's; whether the rules are
    in place is the firewall's business, and a connection they did not divert
    is refused with :data:`REPLY_NOT_INTERCEPTED`.
    """
    if not platform.startswith("linux"):
        return (
            'upstream = "transparent" needs Linux (netfilter SO_ORIGINAL_DST or TPROXY); '
            f"this is {platform}"
        )
    if tproxy and not hasattr(socket, "IP_TRANSPARENT"):
        return "tproxy needs IP_TRANSPARENT, which this Python's socket module lacks"
    return None


def _is_address(host: str) -> bool:
    """An IP address, not a wildcard or a host name."""
    if host in ("0.0.0.0", "::"):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
