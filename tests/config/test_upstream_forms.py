"""``upstream`` in its forms (one host, hosts in order, "mx", "transparent"), ``mx_port`` and
``[gateway] resolvers``: what loads, what is written back, and errors by key path."""

from __future__ import annotations

import pytest
from config_testkit import errors_of, load

from smtpgate.config import HostPort, dump_config
from smtpgate.config.upstream import MX, configured_hosts


def policy(upstream: str, extra: str = "") -> str:
    return f"""
[[policies]]
name = "p"
listen = "127.0.0.1:2525"
upstream = {upstream}
{extra}
"""


def test_one_host_a_list_and_mx_load_and_are_written_back_as_given() -> None:
    one = load(policy('"mail.internal:25"')).policies[0]
    assert one.upstream == HostPort("mail.internal", 25)
    listed = load(policy('["Primary.internal:25", "[::1]:2526"]')).policies[0]
    assert configured_hosts(listed.upstream) == (
        HostPort("primary.internal", 25),
        HostPort("::1", 2526),
    )
    mx = load(policy('"mx"', "mx_port = 2600")).policies[0]
    assert (mx.upstream, mx.mx_port, configured_hosts(mx.upstream)) == (MX, 2600, ())
    transparent = load(policy('"transparent"')).policies[0]
    assert (transparent.upstream, configured_hosts(transparent.upstream)) == ("transparent", ())
    dumped = dump_config(load(policy('["primary.internal:25", "[::1]:2526"]')))
    assert 'upstream = ["primary.internal:25", "[::1]:2526"]' in dumped
    assert 'upstream = "mx"' in dump_config(load(policy('"mx"')))


@pytest.mark.parametrize(
    ("upstream", "path", "reason"),
    [
        ('["a.test:25", "b.test"]', "policies[1].upstream[2]", "invalid address 'b.test'"),
        ("[]", "policies[1].upstream", "at least 1 item"),
        ('"MX"', "policies[1].upstream", "invalid address 'MX'"),
        ('["127.0.0.1:2526", "127.0.0.1:2525"]', "policies[1].upstream[2]", "mail loop"),
    ],
)
def test_bad_upstreams_name_the_entry(upstream: str, path: str, reason: str) -> None:
    [(where, why)] = errors_of(policy(upstream))
    assert where == path
    assert reason in why


def test_mx_port_only_with_mx() -> None:
    assert errors_of(policy('"mail.internal:25"', "mx_port = 2525")) == [
        ("policies[1].mx_port", 'only used with upstream = "mx"')
    ]


def test_resolvers_are_ip_addresses_with_optional_ports() -> None:
    gateway = load('[gateway]\nresolvers = ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]\n').gateway
    assert gateway.resolvers == (
        HostPort("192.0.2.53", 53),
        HostPort("127.0.0.1", 5353),
        HostPort("::1", 53),
    )
    assert 'resolvers = ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]' in dump_config(
        load('[gateway]\nresolvers = ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]\n')
    )
    [(where, why)] = errors_of('[gateway]\nresolvers = ["192.0.2.53", "dns.example"]\n')
    assert where == "gateway.resolvers[2]"
    assert "not a DNS server address" in why
