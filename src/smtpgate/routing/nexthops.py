"""Next hops: which servers a recipient's mail goes to, in the order they are tried.

Pure logic, no I/O: what DNS answered goes in, a :class:`Route` (or the
:class:`NoRoute` reply the recipient gets) comes out.
:mod:`smtpgate.routing.resolver` asks DNS; the proxy session tries the hops.

MX (RFC 5321 5.1): hosts in ascending preference; hosts of equal preference
in random order (spreading load as the domain asked), each host's IPv4
addresses before its IPv6 ones; no MX records: the domain's own A/AAAA as an
implicit MX of preference 0; a null MX (RFC 7505, the only record, exchange
``.``) refuses the recipient with ``556 5.1.10``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

Reply = tuple[int, str]

SMTP_PORT: Final = 25

MAX_ADDRESSES: Final = 5
"""Addresses tried for one recipient domain, over all its MX hosts (Postfix's
``smtp_mx_address_limit``): past that, waiting on more dead hosts only delays
the 4xx that makes the sender retry later."""

REPLY_NULL_MX: Final[Reply] = (556, "5.1.10 Recipient address has null MX")
"""RFC 7505 section 4.2: the domain declares it accepts no mail."""

REPLY_DNS_TEMPORARY: Final[Reply] = (
    451,
    "4.4.3 Temporary DNS failure looking up the recipient domain, try later",
)
"""RFC 3463 X.4.3 (directory server failure): a timeout, SERVFAIL, no usable
answer. Never a refusal: the sender keeps the mail and retries."""

REPLY_NO_SUCH_DOMAIN: Final[Reply] = (550, "5.1.2 Recipient domain does not exist")
"""The domain's name server says the name does not exist (NXDOMAIN)."""

REPLY_NO_MAIL_SERVER: Final[Reply] = (
    550,
    "5.1.2 Recipient domain has no mail server (no MX, A or AAAA record)",
)
"""The domain exists but names no server at all (RFC 5321 5.1: nothing to deliver to)."""


class Via(StrEnum):
    """Where a next hop came from (the ``next_hop_via`` log field)."""

    CONFIGURED = "configured"
    MX = "mx"
    IMPLICIT_MX = "implicit_mx"
    """No MX: the domain's own address (RFC 5321 5.1)."""
    ADDRESS_LITERAL = "address_literal"
    """``bob@[192.0.2.1]``: the address itself (RFC 5321 4.1.3)."""


@dataclass(frozen=True, slots=True)
class NextHop:
    """One server to try."""

    #: The name connected to: sent as SNI and checked against the certificate.
    host: str
    port: int
    #: The address DNS gave for ``host``; empty for a configured host (the system resolves it).
    address: str = ""
    #: The MX preference (0 for an implicit MX); None for a configured host.
    preference: int | None = None
    via: Via = Via.CONFIGURED

    @property
    def connect_to(self) -> str:
        return self.address or self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Route:
    """The next hops of a recipient, in the order they are tried.

    ``key`` says which recipients may share one upstream transaction (SPEC
    2.2): those whose routes have equal keys. For MX it is the domain's MX
    set (preferences and host names, not their shuffled order), so two
    domains served by the same MX hosts go together; for configured hosts it
    is the list itself.
    """

    hops: tuple[NextHop, ...]
    key: Hashable

    def __contains__(self, hop: object) -> bool:
        """Whether a leg open to ``hop`` (same host and port) serves this route."""
        return isinstance(hop, NextHop) and self.position(hop) >= 0

    def position(self, hop: NextHop) -> int:
        """Where the server of ``hop`` is in :attr:`hops`; -1 when it is not."""
        for i, mine in enumerate(self.hops):
            if mine.host == hop.host and mine.port == hop.port:
                return i
        return -1


@dataclass(frozen=True, slots=True)
class NoRoute:
    """The recipient cannot be routed now; ``reply`` tells the client why."""

    reply: Reply
    reason: str


Resolution = Route | NoRoute


def configured_route(hosts: Sequence[tuple[str, int]]) -> Route:
    """The fixed next hops of a policy: its ``upstream`` host or hosts, in order."""
    hops = tuple(NextHop(host, port) for host, port in hosts)
    return Route(hops, ("configured", hops))


# -- MX --------------------------------------------------------------------------------------


MXRecord = tuple[int, str]
"""(preference, exchange) with the exchange as a lower-case name without the final dot
(``""`` for the root, a null MX)."""

Shuffle = Callable[[list[str]], None]


def null_mx(records: Sequence[MXRecord]) -> bool:
    """RFC 7505: the domain's only MX record names the root (``.``)."""
    return len(records) == 1 and records[0][1] == ""


def order_exchanges(records: Sequence[MXRecord], shuffle: Shuffle) -> list[MXRecord]:
    """MX hosts in the order to try them: ascending preference, equal preferences
    shuffled (RFC 5321 5.1). A host listed twice counts at its best preference;
    a root exchange among real ones (a broken null MX, RFC 7505 3) is skipped."""
    best: dict[str, int] = {}
    for preference, host in records:
        if host and (host not in best or preference < best[host]):
            best[host] = preference
    ordered: list[MXRecord] = []
    for preference in sorted(set(best.values())):
        hosts = sorted(h for h, p in best.items() if p == preference)
        shuffle(hosts)
        ordered += [(preference, h) for h in hosts]
    return ordered


def mx_key(records: Sequence[MXRecord]) -> Hashable:
    """What two domains must share to share a transaction: the same MX set."""
    return ("mx", frozenset(order_exchanges(records, lambda hosts: None)))


def hops_of(
    exchanges: Sequence[MXRecord],
    addresses: dict[str, Sequence[str]],
    port: int,
    via: Via = Via.MX,
) -> tuple[NextHop, ...]:
    """Each exchange's addresses in order, at most :data:`MAX_ADDRESSES` in all;
    a host without addresses is left out."""
    hops: list[NextHop] = []
    for preference, host in exchanges:
        for address in addresses.get(host, ()):
            hops.append(NextHop(host, port, address, preference, via))
            if len(hops) == MAX_ADDRESSES:
                return tuple(hops)
    return tuple(hops)
