"""What happens to a proxy session: the driver turns I/O into these and hands
them to :meth:`smtpgate.proxy.session.Session.handle`.

Frozen and slotted: several are created per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from smtpgate.proxy.upstream import TLSFacts, UpstreamLeg


class Side(Enum):
    """Which connection of the session: the sending MTA's or the upstream's."""

    CLIENT = "client"
    UPSTREAM = "upstream"


@dataclass(frozen=True, slots=True)
class ClientData:
    """Bytes from the client, everything that arrived since the last read."""

    data: bytes


@dataclass(frozen=True, slots=True)
class UpstreamData:
    """Bytes from the upstream server (replies, possibly several)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class UpstreamConnected:
    """The :class:`~smtpgate.proxy.commands.OpenUpstream` succeeded.

    ``leg`` is a new connection (its greeting is owed; its implicit TLS, if
    any, is in ``leg.tls``) or one taken from the pool (``leg.reused``, at rest).
    """

    leg: UpstreamLeg


@dataclass(frozen=True, slots=True)
class UpstreamConnectFailed:
    """The TCP connect (or the implicit-TLS handshake, ``tls``) failed."""

    reason: str
    tls: bool = False


@dataclass(frozen=True, slots=True)
class TLSDone:
    """A :class:`~smtpgate.proxy.commands.StartTLS` handshake finished."""

    side: Side
    facts: TLSFacts


@dataclass(frozen=True, slots=True)
class TLSFailed:
    side: Side
    reason: str


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Nothing arrived on ``side`` within the session's :attr:`~Session.wait` timeout,
    or the phase's deadline passed; ``reason`` says which (the ``session_end`` reason)."""

    side: Side
    reason: str = "timeout"


@dataclass(frozen=True, slots=True)
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
    | TLSDone
    | TLSFailed
    | TimedOut
    | ConnectionLost
)
