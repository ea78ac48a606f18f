"""Outgoing mail by MX against real parts (issue 10 item 4): NSD serving the zones
each test writes on a loopback port, receiving servers on 127.0.0.2, 127.0.0.3, ...
standing in for the MX hosts (all on one port, the policy's ``mx_port``), and the
gateway with ``upstream = "mx"`` and ``[gateway] resolvers`` pointing at NSD.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.peers import wait_until
from tests.peers.dns import AuthoritativeDNS, SilentDNS, zone
from tests.peers.mx_hosts import UNRESPONSIVE, MXHosts
from tests.proxy.helpers import GatewayHarness, LoopThread, rule, server_context, smtplib_send

SENDER = "alice@sender.test"
RULES = [
    rule(recipient="secure.test", recipient_encryption="required"),
    rule(recipient_encryption="none"),
]
TEMPORARY_DNS = (451, b"4.4.3 Temporary DNS failure looking up the recipient domain, try later")


@pytest.fixture
def mx_setup(
    loop: LoopThread, tmp_path: Path, make_gate: Any
) -> Iterator[Callable[..., tuple[GatewayHarness, MXHosts]]]:
    """``mx_setup(records, servers, **gate_kw)``: NSD serving zone ``test`` with
    ``records``, the MX hosts, and a gateway routing by MX through that NSD."""
    started: list[MXHosts] = []
    dns_servers: list[AuthoritativeDNS] = []

    def setup(
        records: list[str],
        servers: Mapping[str, dict[str, Any] | str | None],
        **gate_kw: Any,
    ) -> tuple[GatewayHarness, MXHosts]:
        hosts = MXHosts(loop, servers)
        started.append(hosts)
        dns = AuthoritativeDNS(tmp_path / "nsd", {"test": zone("test", *records)}).__enter__()
        dns_servers.append(dns)
        gate = make_gate(
            1,  # not used: the next hops come from DNS
            policy={"upstream": "mx", "mx_port": hosts.port},
            gateway={"resolvers": [dns.address], "dns_timeout": "3s"},
            rules=gate_kw.pop("rules", RULES),
            **gate_kw,
        )
        return gate, hosts

    yield setup
    for hosts in started:
        hosts.stop()
    for dns in dns_servers:
        dns.__exit__(None, None, None)


def send(gate: GatewayHarness, *recipients: str) -> dict[str, tuple[int, bytes]]:
    return smtplib_send(gate.port, SENDER, list(recipients), starttls=False)


def test_mx_hosts_in_preference_order_and_a_refusing_one_is_skipped(mx_setup: Any) -> None:
    """MX 10 refuses connections, MX 20 takes the mail; MX 30 is never asked."""
    gate, hosts = mx_setup(
        [
            "a MX 30 mx3.a",
            "a MX 10 mx1.a",
            "a MX 20 mx2.a",
            "mx1.a A 127.0.0.2",
            "mx2.a A 127.0.0.3",
            "mx3.a A 127.0.0.4",
        ],
        {"127.0.0.2": None, "127.0.0.3": {}, "127.0.0.4": {}},
    )
    assert send(gate, "bob@a.test") == {}
    assert [m.recipients for m in hosts["127.0.0.3"].messages] == [["bob@a.test"]]
    assert hosts["127.0.0.4"].connections == 0
    failed = gate.wait_record("next_hop_failed")[0]
    assert (failed["upstream"], failed["next_hop_address"], failed["mx_preference"]) == (
        f"mx1.a.test:{hosts.port}",
        "127.0.0.2",
        10,
    )
    assert "Connection refused" in failed["reason"]
    record = gate.transaction()
    assert {k: record[k] for k in ("upstream", "next_hop_address", "mx_preference")} == {
        "upstream": f"mx2.a.test:{hosts.port}",
        "next_hop_address": "127.0.0.3",
        "mx_preference": 20,
    }
    assert record["next_hop_via"] == "mx"


def test_an_mx_host_that_does_not_answer_is_given_up_after_connect_timeout(
    mx_setup: Any,
) -> None:
    """MX 10 drops the connection attempts; after ``connect_timeout`` (1 s here, not
    the 30 s of the replies' timeout) MX 20 gets the mail."""
    gate, hosts = mx_setup(
        ["a MX 10 mx1.a", "a MX 20 mx2.a", "mx1.a A 127.0.0.2", "mx2.a A 127.0.0.3"],
        {"127.0.0.2": UNRESPONSIVE, "127.0.0.3": {}},
        general={"connect_timeout": "1s", "command_timeout": "30s"},
    )
    started = time.monotonic()
    assert send(gate, "bob@a.test") == {}
    assert time.monotonic() - started < 10
    assert [m.recipients for m in hosts["127.0.0.3"].messages] == [["bob@a.test"]]
    failed = gate.wait_record("next_hop_failed")[0]
    assert failed["reason"] == f"connect mx1.a.test:{hosts.port}: timed out"


def test_equal_preferences_are_shuffled(mx_setup: Any) -> None:
    """Two MX hosts of preference 10: over 40 messages both get mail. Each message's
    order is a fresh shuffle, so one host getting all 40 has odds of 2 in 2**40."""
    gate, hosts = mx_setup(
        ["a MX 10 mx1.a", "a MX 10 mx2.a", "mx1.a A 127.0.0.2", "mx2.a A 127.0.0.3"],
        {"127.0.0.2": {}, "127.0.0.3": {}},
    )
    for n in range(40):
        assert send(gate, f"bob{n}@a.test") == {}
    first, second = hosts["127.0.0.2"], hosts["127.0.0.3"]
    wait_until(lambda: first.accepted + second.accepted == 40, lambda: "40 messages", timeout=10)
    assert first.accepted > 0 and second.accepted > 0, (first.accepted, second.accepted)


def test_a_domain_without_mx_gets_its_mail_at_its_address(mx_setup: Any) -> None:
    """RFC 5321 5.1: no MX records, so the domain's A record is an implicit MX."""
    gate, hosts = mx_setup(["b A 127.0.0.5"], {"127.0.0.5": {}})
    assert send(gate, "bob@b.test") == {}
    assert [m.recipients for m in hosts["127.0.0.5"].messages] == [["bob@b.test"]]
    record = gate.transaction()
    assert (record["upstream"], record["next_hop_via"], record["mx_preference"]) == (
        f"b.test:{hosts.port}",
        "implicit_mx",
        0,
    )


def test_a_null_mx_refuses_the_recipient_with_556(mx_setup: Any) -> None:
    gate, hosts = mx_setup(["null MX 0 .", "a MX 10 mx.a", "mx.a A 127.0.0.2"], {"127.0.0.2": {}})
    refused = send(gate, "bob@null.test", "carol@a.test")
    assert refused == {"bob@null.test": (556, b"5.1.10 Recipient address has null MX")}
    assert [m.recipients for m in hosts["127.0.0.2"].messages] == [["carol@a.test"]]
    rejected = gate.wait_record("rcpt_rejected")[0]
    assert (rejected["recipient_domain"], rejected["reply"], rejected["reason"]) == (
        "null.test",
        556,
        "null.test has a null MX (RFC 7505)",
    )


def test_a_dns_server_that_does_not_answer_is_a_temporary_451_4_4_3(
    make_gate: Any,
) -> None:
    with SilentDNS() as silent:
        gate = make_gate(
            1,
            policy={"upstream": "mx"},
            gateway={"resolvers": [silent.address], "dns_timeout": "1s"},
            rules=RULES,
        )
        with pytest.raises(Exception) as refused:
            send(gate, "bob@a.test")
    # smtplib raises when every recipient is refused: the one 451 it got.
    assert refused.value.args[0] == {"bob@a.test": TEMPORARY_DNS}
    rejected = gate.wait_record("rcpt_rejected")[0]
    assert rejected["reason"] == "a.test MX: no answer within 1s"


def test_mx_hosts_with_different_tls_abilities(mx_setup: Any, upstream_ca: trustme.CA) -> None:
    """secure.test requires TLS with the certificate checked against the MX host name:
    its MX 10 offers no STARTTLS and its MX 20 presents a certificate for another
    name, so MX 30 (a certificate for mx3.secure.test) gets the mail. plain.test
    (rule ``none``) shares MX 10, which takes its mail in clear."""
    named = server_context(upstream_ca.issue_cert("mx3.secure.test"))
    misnamed = server_context(upstream_ca.issue_cert("mx1.secure.test"))
    gate, hosts = mx_setup(
        [
            "secure MX 10 mx1.secure",
            "secure MX 20 mx2.secure",
            "secure MX 30 mx3.secure",
            "mx1.secure A 127.0.0.2",
            "mx2.secure A 127.0.0.3",
            "mx3.secure A 127.0.0.4",
            "plain MX 10 mx1.secure",
        ],
        {
            "127.0.0.2": {},
            "127.0.0.3": {"starttls_context": misnamed},
            "127.0.0.4": {"starttls_context": named},
        },
        profile={"validate_certificates": True},
    )
    assert send(gate, "bob@secure.test") == {}
    assert send(gate, "carol@plain.test") == {}
    (secure,) = hosts["127.0.0.4"].messages
    assert (secure.recipients, secure.tls_version) == (["bob@secure.test"], "TLSv1.3")
    (plain,) = hosts["127.0.0.2"].messages
    assert (plain.recipients, plain.tls_version) == (["carol@plain.test"], "none")
    assert hosts["127.0.0.3"].messages == []
    failures = [r["upstream"].split(":")[0] for r in gate.wait_record("next_hop_failed", count=2)]
    assert failures == ["mx1.secure.test", "mx2.secure.test"]
    records = {tuple(r["recipient_domains"]): r for r in gate.wait_record("transaction", count=2)}
    assert (
        records[("secure.test",)]["tls_name"],
        records[("secure.test",)]["upstream_verify"],
    ) == (
        "mx3.secure.test",
        "ok",
    )
    assert records[("plain.test",)]["tls_name"] == ""


def test_recipients_of_three_domains_with_three_mx_hosts_are_split_by_452(
    mx_setup: Any,
) -> None:
    """One message to a.test, b.test and c.test, each with its own MX host: the
    first recipient's next hop carries the transaction, the others get 452 4.5.3;
    a sender that sends them again reaches each one's own MX."""
    records = []
    for name, address in (("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")):
        records += [f"{name} MX 10 mx.{name}", f"mx.{name} A {address}"]
    gate, hosts = mx_setup(records, {"127.0.0.2": {}, "127.0.0.3": {}, "127.0.0.4": {}})
    recipients = ["bob@a.test", "carol@b.test", "dave@c.test"]
    other_transaction = (
        452,
        b"4.5.3 Recipient needs another transaction, send it again separately",
    )
    assert send(gate, *recipients) == {r: other_transaction for r in recipients[1:]}
    assert send(gate, *recipients[1:]) == {"dave@c.test": other_transaction}
    assert send(gate, "dave@c.test") == {}
    got = {address: [m.recipients for m in hosts[address].messages] for address in hosts.servers}
    assert got == {
        "127.0.0.2": [["bob@a.test"]],
        "127.0.0.3": [["carol@b.test"]],
        "127.0.0.4": [["dave@c.test"]],
    }
