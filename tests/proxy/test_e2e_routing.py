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


# -- which name the certificate is checked against -------------------------------------------

TLS_UNAVAILABLE = (451, b"4.7.5 Cannot deliver encrypted as required, try later")

#: The certificate names of each case: the MX host's only, the recipient domain's only, both.
CERTIFICATE_NAMES = {
    "host": ("mx1.provider.test",),
    "domain": ("secure.test",),
    "both": ("mx1.provider.test", "secure.test"),
}


def secure_rules(tls_name_from: str) -> list[dict[str, Any]]:
    return [
        rule(recipient="secure.test", recipient_encryption="required")
        | {"tls_name_from": tls_name_from},
        rule(recipient_encryption="none"),
    ]


@pytest.mark.parametrize(
    ("names", "tls_name_from", "delivered"),
    [
        ("host", "next_hop", True),
        ("host", "recipient_domain", False),
        ("domain", "next_hop", False),
        ("domain", "recipient_domain", True),
        ("both", "next_hop", True),
        ("both", "recipient_domain", True),
    ],
)
def test_the_certificate_is_checked_against_the_name_the_rule_says(
    mx_setup: Any, upstream_ca: trustme.CA, names: str, tls_name_from: str, delivered: bool
) -> None:
    """secure.test's one MX host, mx1.provider.test, presents a certificate for the
    names of the case; the rule checks it against the MX host name (``next_hop``) or
    the recipient's domain. A name that does not match under ``required`` is 451 4.7.5,
    and nothing reaches the host; the name is the one sent as SNI, and ``tls_name``."""
    sni_seen: list[str | None] = []
    context = server_context(upstream_ca.issue_cert(*CERTIFICATE_NAMES[names]), sni_seen=sni_seen)
    gate, hosts = mx_setup(
        ["secure MX 10 mx1.provider", "mx1.provider A 127.0.0.2"],
        {"127.0.0.2": {"starttls_context": context}},
        rules=secure_rules(tls_name_from),
        profile={"validate_certificates": True},
    )
    name = "mx1.provider.test" if tls_name_from == "next_hop" else "secure.test"
    if delivered:
        assert send(gate, "bob@secure.test") == {}
        (message,) = hosts["127.0.0.2"].messages
        assert (message.recipients, message.tls_version) == (["bob@secure.test"], "TLSv1.3")
        record = gate.transaction()
        assert (record["tls_name"], record["upstream_verify"]) == (name, "ok")
    else:
        with pytest.raises(Exception) as refused:
            send(gate, "bob@secure.test")
        assert refused.value.args[0] == {"bob@secure.test": TLS_UNAVAILABLE}
        assert hosts["127.0.0.2"].messages == []
        rejected = gate.wait_record("rcpt_rejected")[0]
        assert rejected["reply"] == 451
        assert "certificate verify failed" in rejected["reason"], rejected["reason"]
    assert sni_seen[0] == name


def test_mx_hosts_without_a_certificate_for_the_domain_are_skipped(
    mx_setup: Any, upstream_ca: trustme.CA
) -> None:
    """Checked against the recipient domain: MX 10's certificate names only itself, so
    it is skipped (logged with the name it was checked for) and MX 20, whose
    certificate names secure.test, gets the mail."""
    host_only = server_context(upstream_ca.issue_cert("mx1.provider.test"))
    domain = server_context(upstream_ca.issue_cert("mx2.provider.test", "secure.test"))
    gate, hosts = mx_setup(
        [
            "secure MX 10 mx1.provider",
            "secure MX 20 mx2.provider",
            "mx1.provider A 127.0.0.2",
            "mx2.provider A 127.0.0.3",
        ],
        {"127.0.0.2": {"starttls_context": host_only}, "127.0.0.3": {"starttls_context": domain}},
        rules=secure_rules("recipient_domain"),
        profile={"validate_certificates": True},
    )
    assert send(gate, "bob@secure.test") == {}
    assert [m.recipients for m in hosts["127.0.0.3"].messages] == [["bob@secure.test"]]
    failed = gate.wait_record("next_hop_failed")[0]
    assert (failed["upstream"], failed["tls_name"]) == (
        f"mx1.provider.test:{hosts.port}",
        "secure.test",
    )
    assert failed["reason"].startswith("TLS handshake failed:"), failed["reason"]
    record = gate.transaction()
    assert (record["upstream"], record["tls_name"]) == (
        f"mx2.provider.test:{hosts.port}",
        "secure.test",
    )


def test_domains_checked_by_their_own_names_are_split_even_on_one_mx_host(
    mx_setup: Any, upstream_ca: trustme.CA
) -> None:
    """a.test and b.test share their MX host, but each is checked against its own name:
    a leg checked for a.test says nothing about b.test, so b.test gets 452 4.5.3 and
    its own connection in the next transaction."""
    both = server_context(upstream_ca.issue_cert("mx.provider.test", "a.test", "b.test"))
    gate, hosts = mx_setup(
        ["a MX 10 mx.provider", "b MX 10 mx.provider", "mx.provider A 127.0.0.2"],
        {"127.0.0.2": {"starttls_context": both}},
        rules=[
            rule(recipient_encryption="required") | {"tls_name_from": "recipient_domain"},
        ],
        profile={"validate_certificates": True},
    )
    other_transaction = (
        452,
        b"4.5.3 Recipient needs another transaction, send it again separately",
    )
    assert send(gate, "bob@a.test", "carol@b.test") == {"carol@b.test": other_transaction}
    assert send(gate, "carol@b.test") == {}
    assert [m.recipients for m in hosts["127.0.0.2"].messages] == [
        ["bob@a.test"],
        ["carol@b.test"],
    ]
    records = gate.wait_record("transaction", count=2)
    assert [r["tls_name"] for r in records] == ["a.test", "b.test"]


# -- the next MX host when one fails before the transaction --------------------------------

UNAVAILABLE = (451, b"4.4.1 Upstream server unavailable, try later")
BROKEN_HANDSHAKE = b"this is not a TLS ServerHello\r\n" * 4
SECURE_RULES = [rule(recipient="secure.test", recipient_encryption="required")]


def failing_host(
    upstream_ca: trustme.CA, faults: dict[str, Any], name: str = "mx1.secure.test"
) -> dict[str, Any]:
    """A scripted MX host for ``name`` that misbehaves as ``faults`` says."""
    named = server_context(upstream_ca.issue_cert(name))
    return {"starttls_context": named, "faults": faults}


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        ({"connect": b"421 4.3.2 Shutting down\r\n"}, "upstream greeting 421 4.3.2 Shutting down"),
        ({"connect": b"554 5.3.2 No service\r\n"}, "upstream greeting 554 5.3.2 No service"),
        (
            {"EHLO": b"502 5.5.1 No\r\n", "HELO": b"421 4.3.2 No\r\n"},
            "upstream refused HELO: 421 4.3.2 No",
        ),
        ({"handshake": BROKEN_HANDSHAKE}, "TLS handshake failed: "),
        ({"MAIL": b"451 4.7.1 Greylisted, try later\r\n"}, "upstream refused MAIL: 451 4.7.1"),
    ],
    ids=["greeting-421", "greeting-554", "ehlo-and-helo-refused", "handshake", "mail-451"],
)
def test_an_mx_host_failing_before_the_transaction_is_skipped(
    mx_setup: Any, upstream_ca: trustme.CA, faults: dict[str, Any], reason: str
) -> None:
    """MX 10 fails before any recipient is accepted on it (its greeting, EHLO and HELO,
    the TLS the rule requires, a temporary refusal of MAIL): MX 20 gets the mail, and
    ``next_hop_failed`` says why MX 10 was skipped."""
    good = server_context(upstream_ca.issue_cert("mx2.secure.test"))
    gate, hosts = mx_setup(
        [
            "secure MX 10 mx1.secure",
            "secure MX 20 mx2.secure",
            "mx1.secure A 127.0.0.2",
            "mx2.secure A 127.0.0.3",
        ],
        {"127.0.0.2": failing_host(upstream_ca, faults), "127.0.0.3": {"starttls_context": good}},
        rules=SECURE_RULES,
        profile={"validate_certificates": True},
    )
    assert send(gate, "bob@secure.test") == {}
    assert hosts["127.0.0.2"].messages == []
    assert [m.recipients for m in hosts["127.0.0.3"].messages] == [["bob@secure.test"]]
    failed = gate.wait_record("next_hop_failed")[0]
    assert (failed["upstream"], failed["trying"]) == (
        f"mx1.secure.test:{hosts.port}",
        f"mx2.secure.test:{hosts.port}",
    )
    assert failed["reason"].startswith(reason), failed["reason"]
    assert gate.transaction()["upstream"] == f"mx2.secure.test:{hosts.port}"


@pytest.mark.parametrize(
    ("first", "last", "reply"),
    [
        ("greeting-421", "handshake", TLS_UNAVAILABLE),
        ("handshake", "greeting-421", UNAVAILABLE),
        ("handshake", "mail-451", (451, b"4.7.1 Greylisted, try later")),
    ],
)
def test_when_every_mx_host_fails_the_reply_is_the_last_failures(
    mx_setup: Any, upstream_ca: trustme.CA, first: str, last: str, reply: tuple[int, bytes]
) -> None:
    """Both MX hosts fail: the recipient gets the reply of the last one's failure
    (451 4.4.1 for a host that would not talk, 451 4.7.5 for TLS that could not be
    had, the host's own temporary refusal of MAIL), and the reason names both."""
    faults = {
        "greeting-421": {"connect": b"421 4.3.2 Shutting down\r\n"},
        "handshake": {"handshake": BROKEN_HANDSHAKE},
        "mail-451": {"MAIL": b"451 4.7.1 Greylisted, try later\r\n"},
    }
    gate, hosts = mx_setup(
        [
            "secure MX 10 mx1.secure",
            "secure MX 20 mx2.secure",
            "mx1.secure A 127.0.0.2",
            "mx2.secure A 127.0.0.3",
        ],
        {
            "127.0.0.2": failing_host(upstream_ca, faults[first]),
            "127.0.0.3": failing_host(upstream_ca, faults[last], "mx2.secure.test"),
        },
        rules=SECURE_RULES,
        profile={"validate_certificates": True},
    )
    with pytest.raises(Exception) as refused:
        send(gate, "bob@secure.test")
    assert refused.value.args[0] == {"bob@secure.test": reply}
    rejected = gate.wait_record("rcpt_rejected")[0]
    assert rejected["reply"] == 451
    assert rejected["reason"].startswith(
        f"all 2 next hops failed: mx1.secure.test:{hosts.port}: "
    ), rejected["reason"]
    assert f"; mx2.secure.test:{hosts.port}: " in rejected["reason"]
    assert hosts["127.0.0.2"].messages == hosts["127.0.0.3"].messages == []


def test_a_backup_host_takes_the_mail_when_the_primary_greets_with_421(
    loop: LoopThread, make_gate: Any
) -> None:
    """``upstream = [primary, backup]``: the same as for MX hosts, in the order written."""
    hosts = MXHosts(
        loop,
        {"127.0.0.2": {"faults": {"connect": b"421 4.3.2 Busy\r\n"}}, "127.0.0.3": {}},
    )
    try:
        primary, backup = f"127.0.0.2:{hosts.port}", f"127.0.0.3:{hosts.port}"
        gate = make_gate(
            1,
            policy={"upstream": [primary, backup]},
            rules=[rule(recipient_encryption="none")],
        )
        assert send(gate, "bob@a.test") == {}
        assert [m.recipients for m in hosts["127.0.0.3"].messages] == [["bob@a.test"]]
        failed = gate.wait_record("next_hop_failed")[0]
        assert (failed["upstream"], failed["reason"], failed["trying"]) == (
            primary,
            "upstream greeting 421 4.3.2 Busy",
            backup,
        )
        record = gate.transaction()
        assert (record["upstream"], record["next_hop_via"]) == (backup, "configured")
    finally:
        hosts.stop()
