"""What a proxy session asks of its driver, in order: the session's only way
to act on the world. The driver (:mod:`smtpgate.proxy.driver`) carries them
out; tests read them.

Slotted, not frozen: several are created per message, and a frozen
dataclass's ``__init__`` costs twice as much (``object.__setattr__`` per
field). Nobody changes one after it is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smtpgate.proxy.events import Side
from smtpgate.proxy.upstream import UpstreamLeg, UpstreamTarget


@dataclass(slots=True)
class SendClient:
    """One write of replies to the client."""

    data: bytes


@dataclass(slots=True)
class SendUpstream:
    """One write to the upstream: commands, or body chunks (never copied) and the dot."""

    data: list[bytes | memoryview]


@dataclass(slots=True)
class OpenUpstream:
    """Connect to ``target`` (or take a parked leg of its mode, unless ``fresh``); answered
    by :class:`~smtpgate.proxy.events.UpstreamConnected` or ``UpstreamConnectFailed``."""

    target: UpstreamTarget
    #: A new connection, never a parked one: for AUTH, whose exchange cannot be
    #: replayed on another connection when a parked one turns out dead.
    fresh: bool = False


@dataclass(frozen=True, slots=True)
class ResolveNextHops:
    """Look up where mail to ``domain`` goes (``upstream = "mx"``); answered by
    :class:`~smtpgate.proxy.events.NextHopsResolved`."""

    domain: str


@dataclass(slots=True)
class StartTLS:
    """Handshake on ``side`` (the client leg as server, the upstream leg as client);
    answered by :class:`~smtpgate.proxy.events.TLSDone` or ``TLSFailed``."""

    side: Side


@dataclass(slots=True)
class ReleaseUpstream:
    """The session is done with ``leg``: park it when it is at rest, else QUIT and close."""

    leg: UpstreamLeg


@dataclass(slots=True)
class AbortUpstream:
    """Cut ``leg``'s connection now (mid-body: nothing may reach the upstream's queue)."""

    leg: UpstreamLeg


@dataclass(slots=True)
class CloseClient:
    """Close the client connection after what was sent; the session is over."""


@dataclass(slots=True)
class Log:
    """One record of the event log (SPEC 7)."""

    event: str
    fields: dict[str, Any]


Command = (
    SendClient
    | SendUpstream
    | OpenUpstream
    | ResolveNextHops
    | StartTLS
    | ReleaseUpstream
    | AbortUpstream
    | CloseClient
    | Log
)
