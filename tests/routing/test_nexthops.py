"""The pure next-hop logic: MX order (RFC 5321 5.1), null MX (RFC 7505), route keys."""

from __future__ import annotations

from smtpgate.routing.nexthops import (
    MAX_ADDRESSES,
    NextHop,
    Via,
    configured_route,
    hops_of,
    mx_key,
    null_mx,
    order_exchanges,
)


def keep(hosts: list[str]) -> None:
    """A shuffle that leaves the (alphabetical) order."""


def reverse(hosts: list[str]) -> None:
    hosts.reverse()


def test_exchanges_go_by_ascending_preference_whatever_the_answer_order() -> None:
    records = [(30, "c.test"), (10, "a.test"), (20, "b.test")]
    assert order_exchanges(records, keep) == [(10, "a.test"), (20, "b.test"), (30, "c.test")]


def test_only_hosts_of_equal_preference_are_shuffled() -> None:
    records = [(10, "a.test"), (10, "b.test"), (20, "c.test"), (20, "d.test"), (5, "e.test")]
    assert order_exchanges(records, reverse) == [
        (5, "e.test"),
        (10, "b.test"),
        (10, "a.test"),
        (20, "d.test"),
        (20, "c.test"),
    ]


def test_a_host_listed_twice_counts_at_its_best_preference() -> None:
    assert order_exchanges([(20, "a.test"), (10, "a.test"), (15, "b.test")], keep) == [
        (10, "a.test"),
        (15, "b.test"),
    ]


def test_null_mx_is_the_root_as_the_only_record() -> None:
    assert null_mx([(0, "")])
    assert not null_mx([(0, ""), (10, "a.test")])
    # A broken null MX beside real hosts: the real hosts are used (RFC 7505 3).
    assert order_exchanges([(0, ""), (10, "a.test")], keep) == [(10, "a.test")]


def test_domains_with_the_same_mx_set_share_a_key_whatever_the_order() -> None:
    assert mx_key([(10, "a.test"), (10, "b.test")]) == mx_key([(10, "b.test"), (10, "a.test")])
    assert mx_key([(10, "a.test")]) != mx_key([(20, "a.test")])
    assert mx_key([(10, "a.test")]) != configured_route([("a.test", 25)]).key


def test_hops_are_each_hosts_addresses_in_order_up_to_the_limit() -> None:
    exchanges = [(10, "a.test"), (20, "none.test"), (30, "b.test")]
    addresses = {
        "a.test": ["192.0.2.1", "2001:db8::1"],
        "b.test": [f"192.0.2.{n}" for n in range(10, 20)],
    }
    hops = hops_of(exchanges, addresses, 25)
    assert len(hops) == MAX_ADDRESSES
    assert hops[:3] == (
        NextHop("a.test", 25, "192.0.2.1", 10, Via.MX),
        NextHop("a.test", 25, "2001:db8::1", 10, Via.MX),
        NextHop("b.test", 25, "192.0.2.10", 30, Via.MX),
    )


def test_a_route_holds_a_leg_to_any_of_its_hosts() -> None:
    route = configured_route([("primary.test", 25), ("backup.test", 25)])
    assert route.position(NextHop("backup.test", 25, "192.0.2.9")) == 1
    assert NextHop("primary.test", 25) in route
    assert NextHop("primary.test", 26) not in route
