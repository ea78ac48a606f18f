"""Postfix -> smtpgate routing by MX -> three MX hosts (issue 10 item 4).

The sending Postfix relays to smtpgate (``relayhost``); smtpgate's policy has
``upstream = "mx"`` and asks NSD (on a loopback port) for each recipient
domain's MX; a.test, b.test and c.test each have their own MX host
(127.0.0.2, .3, .4, all offering STARTTLS with certificates for their MX
names). One message to all three: smtpgate keeps the first recipient's next
hop for the transaction and answers the others ``452 4.5.3``; Postfix defers
them and sends them in later attempts (run at once with ``postqueue -i``, see
test_interop_postfix.py for why), until each has reached its own MX with the
TLS its rule asks for: a.test ``required`` with the certificate checked
against the MX host name, b.test ``preferred``, c.test ``none``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.certs import LeafFiles, TestPKI
from tests.peers.dns import AuthoritativeDNS, zone
from tests.peers.gate_config import gate_config, rule
from tests.peers.mx_hosts import MXHosts
from tests.peers.postfix import PostfixInstance
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.proxy.helpers import LoopThread

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

DOMAINS = {"a.test": "127.0.0.2", "b.test": "127.0.0.3", "c.test": "127.0.0.4"}
RECIPIENTS = ["bob@a.test", "carol@b.test", "dave@c.test"]


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


def test_one_message_to_three_domains_reaches_each_mx_with_its_tls(
    loop: LoopThread,
    pki: TestPKI,
    gate_cert: LeafFiles,
    tmp_path: Path,
    start_gate: Callable[..., SmtpgateProcess],
    start_postfix: Callable[..., PostfixInstance],
) -> None:
    servers: dict[str, dict[str, Any] | None] = {
        address: {"starttls_context": pki.server_context(pki.issue(f"mx.{domain}"))}
        for domain, address in DOMAINS.items()
    }
    hosts = MXHosts(loop, servers)
    try:
        records = []
        for domain, address in DOMAINS.items():
            name = domain.removesuffix(".test")
            records += [f"{name} MX 10 mx.{name}", f"mx.{name} A {address}"]
        with AuthoritativeDNS(tmp_path / "nsd", {"test": zone("test", *records)}) as dns:
            deliver(hosts, dns, pki, gate_cert, start_gate, start_postfix)
    finally:
        hosts.stop()


def deliver(
    hosts: MXHosts,
    dns: AuthoritativeDNS,
    pki: TestPKI,
    gate_cert: LeafFiles,
    start_gate: Callable[..., SmtpgateProcess],
    start_postfix: Callable[..., PostfixInstance],
) -> None:
    gate = start_gate(
        gate_config(
            1,  # not used: the next hops come from DNS
            server_cert=gate_cert,
            policy={"upstream": "mx", "mx_port": hosts.port},
            gateway={"resolvers": [dns.address]},
            profile={"ca_file": str(pki.ca_file), "validate_certificates": True},
            rules=[
                rule(recipient="a.test", recipient_encryption="required"),
                rule(recipient="b.test", recipient_encryption="preferred"),
                rule(recipient="c.test", recipient_encryption="none"),
            ],
        )
    )
    backoff = 3600  # Postfix's own retries never race the ones the test runs
    snd = start_postfix(
        "snd",
        relayhost=f"[127.0.0.1]:{gate.port()}",
        smtp_tls_security_level="may",
        main_cf={
            "minimal_backoff_time": f"{backoff}s",
            "maximal_backoff_time": f"{backoff}s",
            "queue_run_delay": f"{backoff}s",
        },
    )
    mid = snd.submit("alice@sender.test", RECIPIENTS)
    queue_id = snd.queue_id(mid)
    relay = rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{gate.port()}, "
    sent: list[str] = []
    for attempt in range(3):
        # Each attempt: the first recipient Postfix sends goes out, the rest get 452 4.5.3.
        sent_now = snd.wait_log(
            rf"{queue_id}: to=<(?P<rcpt>(?!{'|'.join(map(re.escape, sent)) or '$^'})[^>]+)>, "
            rf"{relay}.*status=sent "
        )["rcpt"]
        sent.append(sent_now)
        if attempt < 2:
            for deferred in set(RECIPIENTS) - set(sent):
                snd.wait_log(
                    rf"{queue_id}: to=<{re.escape(deferred)}>, {relay}.*dsn=4\.5\.3, "
                    rf"status=deferred \(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 452 4\.5\.3 "
                )
            snd.wait_deferred(queue_id)
            snd.retry(queue_id)
    snd.wait_log(rf"{queue_id}: removed")
    assert sorted(sent) == sorted(RECIPIENTS), snd.diagnostics()

    got = {
        address: [(m.recipients, m.tls_version) for m in hosts[address].messages]
        for address in DOMAINS.values()
    }
    assert got == {
        "127.0.0.2": [(["bob@a.test"], "TLSv1.3")],
        "127.0.0.3": [(["carol@b.test"], "TLSv1.3")],
        "127.0.0.4": [(["dave@c.test"], "none")],
    }, gate.diagnostics()
    transactions = gate.transactions(outcome="delivered", count=3)
    by_domain = {tuple(t["recipient_domains"]): t for t in transactions}
    summary = {
        domain: (t["upstream"], t["next_hop_address"], t["mx_preference"], t["tls_name"])
        for (domain,), t in by_domain.items()
    }
    assert summary == {
        "a.test": (f"mx.a.test:{hosts.port}", "127.0.0.2", 10, "mx.a.test"),
        "b.test": (f"mx.b.test:{hosts.port}", "127.0.0.3", 10, "mx.b.test"),
        "c.test": (f"mx.c.test:{hosts.port}", "127.0.0.4", 10, ""),
    }
    assert by_domain[("a.test",)]["upstream_verify"] == "ok"
