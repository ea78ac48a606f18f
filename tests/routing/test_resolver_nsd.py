"""The resolver against a real authoritative server (NSD on a loopback port): MX
order, shuffling, implicit and null MX, IPv6 after IPv4, failures that are
temporary, and a cache that honours TTLs."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.routing.nexthops import (
    REPLY_DNS_TEMPORARY,
    REPLY_NO_MAIL_SERVER,
    REPLY_NO_SUCH_DOMAIN,
    REPLY_NULL_MX,
    NoRoute,
    Resolution,
    Route,
    Via,
)
from smtpgate.routing.resolver import NextHopResolver
from tests.peers.dns import AuthoritativeDNS, SilentDNS, zone

RECORDS = (
    "a MX 20 mx2.a",
    "a MX 10 mx1.a",
    "mx1.a A 127.0.0.2",
    "mx2.a A 127.0.0.3",
    "mx2.a AAAA ::1",
    "tie MX 10 x.tie",
    "tie MX 10 y.tie",
    "x.tie A 127.0.0.4",
    "y.tie A 127.0.0.5",
    "plain A 127.0.0.6",
    "null MX 0 .",
    "nomail TXT no mail here",
    "lost MX 10 nowhere.lost",
)


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthoritativeDNS]:
    with AuthoritativeDNS(tmp_path_factory.mktemp("nsd"), {"test": zone("test", *RECORDS)}) as dns:
        yield dns


def route(resolver: NextHopResolver, domain: str) -> Resolution:
    return asyncio.run(resolver.route(domain, 2525))


def resolver_for(dns: AuthoritativeDNS, **kwargs: object) -> NextHopResolver:
    return NextHopResolver([(dns.host, dns.port)], 3.0, **kwargs)  # type: ignore[arg-type]


def hosts(resolution: Resolution) -> list[tuple[str, str, int | None]]:
    assert isinstance(resolution, Route), resolution
    return [(hop.host, hop.address, hop.preference) for hop in resolution.hops]


def test_mx_hosts_in_preference_order_ipv4_before_ipv6(nsd: AuthoritativeDNS) -> None:
    assert hosts(route(resolver_for(nsd), "A.Test")) == [
        ("mx1.a.test", "127.0.0.2", 10),
        ("mx2.a.test", "127.0.0.3", 20),
        ("mx2.a.test", "::1", 20),
    ]


def test_equal_preferences_come_in_the_order_of_the_injected_shuffle(
    nsd: AuthoritativeDNS,
) -> None:
    orders = [
        [
            host
            for host, _, _ in hosts(
                route(resolver_for(nsd, shuffle=random.Random(seed).shuffle), "tie.test")
            )
        ]
        for seed in range(8)
    ]
    assert {tuple(order) for order in orders} == {
        ("x.tie.test", "y.tie.test"),
        ("y.tie.test", "x.tie.test"),
    }


def test_equal_preferences_are_shuffled_per_lookup(nsd: AuthoritativeDNS) -> None:
    """64 lookups (cached after the first): both orders occur. That one order came
    every time has odds of 2 in 2**64."""
    resolver = resolver_for(nsd)
    firsts = {hosts(route(resolver, "tie.test"))[0][0] for _ in range(64)}
    assert firsts == {"x.tie.test", "y.tie.test"}


def test_no_mx_is_an_implicit_mx_of_preference_0(nsd: AuthoritativeDNS) -> None:
    resolution = route(resolver_for(nsd), "plain.test")
    assert hosts(resolution) == [("plain.test", "127.0.0.6", 0)]
    assert isinstance(resolution, Route) and resolution.hops[0].via is Via.IMPLICIT_MX


@pytest.mark.parametrize(
    ("domain", "reply"),
    [
        ("null.test", REPLY_NULL_MX),
        ("nomail.test", REPLY_NO_MAIL_SERVER),
        ("nx.test", REPLY_NO_SUCH_DOMAIN),
        # MX hosts without any address: a DNS mistake its owner may fix, so temporary.
        ("lost.test", REPLY_DNS_TEMPORARY),
        # Outside the server's zones it answers REFUSED: no answer, temporary.
        ("elsewhere.example", REPLY_DNS_TEMPORARY),
    ],
)
def test_domains_without_route(nsd: AuthoritativeDNS, domain: str, reply: tuple[int, str]) -> None:
    resolution = route(resolver_for(nsd), domain)
    assert isinstance(resolution, NoRoute), resolution
    assert resolution.reply == reply


def test_a_server_that_never_answers_is_temporary_within_the_timeout() -> None:
    with SilentDNS() as silent:
        host, port = silent.address.split(":")
        resolver = NextHopResolver([(host, int(port))], 0.5)
        started = time.monotonic()
        resolution = route(resolver, "a.test")
        took = time.monotonic() - started
    assert resolution == NoRoute(REPLY_DNS_TEMPORARY, "a.test MX: no answer within 0.5s")
    assert took < 2


def test_answers_are_cached_as_long_as_their_ttl(tmp_path: Path) -> None:
    """long.test's MX has a TTL of 300 s, short.test's 1 s. After the zone changes,
    the same resolver still routes long.test by its cached answer, short.test by the
    new one; a new resolver (what a reload builds) sees the change for both."""

    def records(host: str) -> list[str]:
        return [
            f"long 300 MX 10 {host}",
            f"short 1 MX 10 {host}",
            "old A 127.0.0.2",
            "new A 127.0.0.3",
        ]

    with AuthoritativeDNS(tmp_path, {"test": zone("test", *records("old"))}) as dns:
        resolver = resolver_for(dns)
        asked = time.monotonic()
        assert hosts(route(resolver, "long.test"))[0][0] == "old.test"
        assert hosts(route(resolver, "short.test"))[0][0] == "old.test"
        dns.reload({"test": zone("test", *records("new"))})
        time.sleep(max(0.0, asked + 1.5 - time.monotonic()))  # the 1 s TTL is over
        assert hosts(route(resolver, "long.test"))[0][0] == "old.test"
        assert hosts(route(resolver, "short.test"))[0][0] == "new.test"
        assert hosts(route(resolver_for(dns), "long.test"))[0][0] == "new.test"
