"""What happens to a proxy session: the driver turns I/O into these and hands
them to :meth:`smtpgate.proxy.session.Session.handle`.

Slotted, not frozen: several are created per message, and a frozen dataclass's
``__init__`` costs twice as much (``object.__setattr__`` per field). Nobody
changes one after it is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from smtpgate.proxy.upstream import TLSFacts, UpstreamLeg
from smtpgate.routing.nexthops import Resolution


class Side(Enum):
    """Which connection of the session: the sending MTA's or the upstream's."""

    CLIENT = "client"
    UPSTREAM = "upstream"


@dataclass(slots=True)
class ClientData:
    """Bytes from the client, everything that arrived since the last read."""

    data: bytes


@dataclass(slots=True)
class UpstreamData:
    """Bytes from the upstream server (replies, possibly several)."""

    data: bytes


@dataclass(slots=True)
class UpstreamConnected:
    """The :class:`~smtpgate.proxy.commands.OpenUpstream` succeeded.

    ``leg`` is a new connection (its greeting is owed; its implicit TLS, if
    any, is in ``leg.tls``) or one taken from the pool (``leg.reused``, at rest).
    """

    leg: UpstreamLeg


@dataclass(slots=True)
class UpstreamConnectFailed:
    """The TCP connect (or the implicit-TLS handshake, ``tls``) failed."""

    reason: str
    tls: bool = False


@dataclass(frozen=True, slots=True)
class NextHopsResolved:
    """The answer to :class:`~smtpgate.proxy.commands.ResolveNextHops`: the route,
    or why there is none."""

    domain: str
    resolution: Resolution


@dataclass(slots=True)
class TLSDone:
    """A :class:`~smtpgate.proxy.commands.StartTLS` handshake finished."""

    side: Side
    facts: TLSFacts


@dataclass(slots=True)
class TLSFailed:
    side: Side
    reason: str


@dataclass(slots=True)
class TimedOut:
    """Nothing arrived on ``side`` within the session's :attr:`~Session.wait` timeout,
    or the phase's deadline passed; ``reason`` says which (the ``session_end`` reason)."""

    side: Side
    reason: str = "timeout"


@dataclass(slots=True)
class ConnectionLost:
    """``side`` closed its connection (or the driver found it closed, or ended it).

    ``reason``: for the upstream, why (for the log); for the client, the
    ``session_end`` reason (``client_disconnected``, ``client_not_reading``,
    ``server_shutdown``, ``internal_error``; docs/logs.md).
    """

    side: Side
    reason: str = ""


ProxyEvent = (
    ClientData
    | UpstreamData
    | UpstreamConnected
    | UpstreamConnectFailed
    | NextHopsResolved
    | TLSDone
    | TLSFailed
    | TimedOut
    | ConnectionLost
)
