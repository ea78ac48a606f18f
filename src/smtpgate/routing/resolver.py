"""DNS for ``upstream = "mx"``: the recipient domain's next hops, through dnspython.

:class:`NextHopResolver` asks the configured DNS servers (``[gateway]
resolvers``; none: the system's, from ``/etc/resolv.conf``) and turns the
answers into a :class:`~smtpgate.routing.nexthops.Route` with the pure logic
of :mod:`smtpgate.routing.nexthops`. One lookup may take ``dns_timeout``,
all servers and retries included; what takes longer is a temporary failure
(``451 4.4.3``), as is every answer that is not a definite "no".

Answers are cached as long as their TTL says (dnspython's LRU cache, also
for "no such name"), on the resolver: the gateway builds one per
configuration, so a reload starts with an empty cache and the new servers.
The proxy driver calls :meth:`NextHopResolver.route` when its session asks
(:class:`~smtpgate.proxy.commands.ResolveNextHops`); nothing else here does I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Callable, Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from smtpgate.config.schema import Gateway
from smtpgate.routing.nexthops import (
    MAX_ADDRESSES,
    REPLY_DNS_TEMPORARY,
    REPLY_NO_MAIL_SERVER,
    REPLY_NO_SUCH_DOMAIN,
    REPLY_NULL_MX,
    MXRecord,
    NextHop,
    NoRoute,
    Resolution,
    Route,
    Shuffle,
    Via,
    hops_of,
    mx_key,
    null_mx,
    order_exchanges,
)

CACHE_ENTRIES = 10_000
#: How long one server gets before the next is asked (within the lookup's lifetime).
PER_SERVER_TIMEOUT = 2.0


class _Temporary(Exception):
    """No definite answer: a timeout, SERVFAIL from every server, a malformed reply."""


class NextHopResolver:
    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]],
        timeout: float,
        *,
        shuffle: Shuffle | None = None,
    ) -> None:
        """``nameservers``: (address, port) pairs; empty for the system's.
        ``shuffle``: orders hosts of equal preference (tests pass a seeded one)."""
        #: Why there is no DNS server to ask (no resolv.conf), else empty.
        self.unconfigured = ""
        try:
            resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration as exc:
            resolver = dns.asyncresolver.Resolver(configure=False)
            self.unconfigured = f"no DNS servers configured: {exc}"
        if nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers
            ]
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, PER_SERVER_TIMEOUT)
        resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
        self._resolver = resolver
        self._shuffle = shuffle if shuffle is not None else random.Random().shuffle

    async def route(self, domain: str, port: int) -> Resolution:
        """The next hops for mail to ``domain`` (lower-case A-labels) on ``port``."""
        if domain.startswith("[") and domain.endswith("]"):
            return _literal_route(domain, port)
        if not domain:
            return NoRoute(REPLY_NO_SUCH_DOMAIN, "the recipient has no domain")
        if self.unconfigured:
            return NoRoute(REPLY_DNS_TEMPORARY, self.unconfigured)
        try:
            answer = await self._query(domain, dns.rdatatype.MX)
        except dns.resolver.NXDOMAIN:
            return NoRoute(REPLY_NO_SUCH_DOMAIN, f"{domain}: no such domain (NXDOMAIN)")
        except _Temporary as exc:
            return NoRoute(REPLY_DNS_TEMPORARY, f"{domain} MX: {exc}")
        if answer is None:
            return await self._implicit_mx(domain, port)
        records: list[MXRecord] = [(rdata.preference, _name(rdata.exchange)) for rdata in answer]
        if null_mx(records):
            return NoRoute(REPLY_NULL_MX, f"{domain} has a null MX (RFC 7505)")
        exchanges = order_exchanges(records, self._shuffle)
        addresses: dict[str, Sequence[str]] = {}
        problems: list[str] = []
        found = 0
        for _, host in exchanges:
            if found >= MAX_ADDRESSES:
                break
            addresses[host], problem = await self._addresses(host)
            found += len(addresses[host])
            if problem:
                problems.append(problem)
        hops = hops_of(exchanges, addresses, port)
        if not hops:
            why = "; ".join(problems) or "none has an A or AAAA record"
            return NoRoute(REPLY_DNS_TEMPORARY, f"{domain}: no address for its MX hosts: {why}")
        return Route(hops, mx_key(records))

    async def _implicit_mx(self, domain: str, port: int) -> Resolution:
        """No MX records: the domain's own addresses, preference 0 (RFC 5321 5.1)."""
        found, problem = await self._addresses(domain)
        if found:
            implicit = [(0, domain)]
            return Route(
                hops_of(implicit, {domain: found}, port, Via.IMPLICIT_MX), mx_key(implicit)
            )
        if problem:
            return NoRoute(REPLY_DNS_TEMPORARY, f"{domain} has no MX; {problem}")
        return NoRoute(REPLY_NO_MAIL_SERVER, f"{domain} has no MX, A or AAAA record")

    async def _addresses(self, host: str) -> tuple[list[str], str]:
        """``host``'s IPv4 then IPv6 addresses, and what failed temporarily (or "")."""
        found: list[str] = []
        problems: list[str] = []
        answers = await asyncio.gather(
            self._query(host, dns.rdatatype.A),
            self._query(host, dns.rdatatype.AAAA),
            return_exceptions=True,
        )
        for rdtype, answer in zip(("A", "AAAA"), answers, strict=True):
            if isinstance(answer, dns.resolver.NXDOMAIN) or answer is None:
                continue
            if isinstance(answer, BaseException):
                problems.append(f"{host} {rdtype}: {answer}")
                continue
            found += [rdata.to_text() for rdata in answer]
        return found, "; ".join(problems)

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
        """The answer's records, None when the name has none of ``rdtype``.
        NXDOMAIN passes; anything else that is not an answer is :class:`_Temporary`."""
        try:
            answer = await self._resolver.resolve(
                dns.name.from_text(name), rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            raise
        except dns.resolver.LifetimeTimeout:
            raise _Temporary(f"no answer within {self._resolver.lifetime:g}s") from None
        except dns.resolver.NoNameservers as exc:
            raise _Temporary(f"no DNS server gave an answer ({_first_error(exc)})") from None
        except dns.exception.DNSException as exc:
            raise _Temporary(str(exc) or type(exc).__name__) from None
        return answer.rrset


def gateway_resolver(gateway: Gateway) -> NextHopResolver:
    """The resolver ``[gateway] resolvers`` and ``dns_timeout`` describe."""
    return NextHopResolver([(ns.host, ns.port) for ns in gateway.resolvers], gateway.dns_timeout)


def blocking_lookup(gateway: Gateway) -> Callable[[str, int], Resolution]:
    """Route lookups for code without an event loop (``rules test``, the API's tester)."""
    resolver = gateway_resolver(gateway)

    def lookup(domain: str, port: int) -> Resolution:
        return asyncio.run(resolver.route(domain, port))

    return lookup


def _name(name: dns.name.Name) -> str:
    """A host name as routes and logs show it: lower case, no final dot; ``""`` for the root."""
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def _first_error(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    if not errors:
        return "all failed"
    server, _tcp, _port, error, *_ = errors[0]
    return f"{server}: {error}"


def _literal_route(domain: str, port: int) -> Resolution:
    """``bob@[192.0.2.1]``: the address itself (RFC 5321 4.1.3); no DNS."""
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        address = str(ipaddress.ip_address(text))
    except ValueError:
        return NoRoute(REPLY_NO_SUCH_DOMAIN, f"{domain} is not an address literal")
    return Route(
        (NextHop(address, port, address, None, Via.ADDRESS_LITERAL),), ("literal", address)
    )
