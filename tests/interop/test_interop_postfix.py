"""Postfix -> smtpgate -> Postfix: two real MTAs on either side of the proxy.

The sending Postfix relays everything to smtpgate (``relayhost =
[127.0.0.1]:<policy port>``); smtpgate's upstream is a receiving Postfix whose
smtpd offers STARTTLS with a certificate from the test CA and delivers to a
Maildir. Proves:

- the message arrives (same Message-ID) and the sender's queue drains;
- the TLS versions (and ciphers) that Postfix logs on each side ("TLS connection
  established to 127.0.0.1[127.0.0.1]:<gate>" / "... from ...") are the ones
  smtpgate's transaction record reports as ``client_tls`` / ``upstream_tls``;
- ``smtp_tls_security_level = may`` falls back to clear when smtpgate does not
  offer STARTTLS (all rules say sender ``none``), and ``encrypt`` then defers
  instead of sending in clear;
- a ``451 4.7.5`` (recipient ``required``, receiver without STARTTLS) makes the
  real MTA keep the message queued: nothing is lost, nothing is sent in clear;
- ``452 4.5.3`` for a recipient that needs another upstream outcome makes the
  real MTA send that recipient again in a second transaction: both arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.peers.certs import LeafFiles, TestPKI
from tests.peers.postfix import PostfixInstance
from tests.peers.smtpgate_proc import SmtpgateProcess, gate_config, rule

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

StartGate = Callable[..., SmtpgateProcess]
StartPostfix = Callable[..., PostfixInstance]
Chain = Callable[..., tuple[PostfixInstance, SmtpgateProcess, PostfixInstance]]


@pytest.fixture
def chain(start_postfix: StartPostfix, start_gate: StartGate, gate_cert: LeafFiles) -> Chain:
    """``chain(level, receiver_cert, **gate_config)``: a receiving Postfix (STARTTLS
    with ``receiver_cert``; ``None``: none), smtpgate in front of it (``gate_cert``
    on the client leg), and a sending Postfix relaying to smtpgate with
    ``smtp_tls_security_level = level``."""

    def build(
        level: str, receiver_cert: LeafFiles | None, **gate_kw: Any
    ) -> tuple[PostfixInstance, SmtpgateProcess, PostfixInstance]:
        rcv = start_postfix(
            "rcv", smtpd_cert=receiver_cert, virtual_domains=("receiver.test", "other.test")
        )
        gate = start_gate(gate_config(rcv.port, server_cert=gate_cert, **gate_kw))
        snd = start_postfix(
            "snd", relayhost=f"[127.0.0.1]:{gate.port()}", smtp_tls_security_level=level
        )
        return rcv, gate, snd

    return build


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_postfix_to_postfix_through_smtpgate_tls_versions_agree(
    level: str, chain: Chain, pki: TestPKI, upstream_cert: LeafFiles
) -> None:
    rcv, gate, snd = chain(level, upstream_cert, ca_file=pki.ca_file, validate_certificates=True)

    mid = snd.submit("alice@sender.test", "bob@receiver.test", subject=f"via smtpgate ({level})")
    delivered = rcv.wait_delivered(1)
    snd.wait_queue_empty()
    assert delivered[0]["Message-ID"] == mid
    assert delivered[0]["Delivered-To"] == "bob@receiver.test"
    snd.wait_log(rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{gate.port()}\b.*status=sent")

    tx = gate.transactions(outcome="delivered")[0]
    assert tx["reply"] == 250
    assert tx["sender_domain"] == "sender.test"
    assert tx["recipient_domains"] == ["receiver.test"]
    assert tx["client"].startswith("127.0.0.1:")

    client_leg = snd.tls_lines("to")
    assert client_leg, f"the sending Postfix did not log TLS\n{snd.diagnostics()}"
    assert client_leg[-1].peer == f"127.0.0.1[127.0.0.1]:{gate.port()}"
    assert tx["client_tls"] == client_leg[-1].version
    assert client_leg[-1].cipher in tx["client_cipher"]

    upstream_leg = rcv.tls_lines("from")
    assert upstream_leg, f"the receiving Postfix did not log TLS\n{rcv.diagnostics()}"
    assert tx["upstream_tls"] == upstream_leg[-1].version
    assert upstream_leg[-1].cipher in tx["upstream_cipher"]
    assert tx["upstream_verify"] == "ok"
    # The receiver's Received: line records the upstream leg's TLS too.
    received = " ".join(str(delivered[0]["Received"]).split())
    assert f"using {upstream_leg[-1].version}" in received


def test_postfix_may_sends_in_clear_when_smtpgate_does_not_offer_starttls(
    chain: Chain, upstream_cert: LeafFiles
) -> None:
    rcv, gate, snd = chain("may", upstream_cert, rules=[rule(sender_encryption="none")])
    mid = snd.submit("alice@sender.test", "bob@receiver.test")
    assert rcv.wait_delivered(1)[0]["Message-ID"] == mid
    snd.wait_queue_empty()
    assert snd.tls_lines("to") == []
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["client_tls"] == "none"
    # recipient "preferred": the upstream leg is still encrypted.
    assert tx["upstream_tls"] == rcv.tls_lines("from")[-1].version


def test_postfix_encrypt_defers_when_smtpgate_does_not_offer_starttls(
    chain: Chain, upstream_cert: LeafFiles
) -> None:
    rcv, gate, snd = chain("encrypt", upstream_cert, rules=[rule(sender_encryption="none")])
    snd.submit("alice@sender.test", "bob@receiver.test")
    snd.wait_log(r"TLS is required, but was not offered by host 127\.0\.0\.1")
    assert snd.queue_files()
    assert rcv.delivered() == []
    assert gate.records("transaction") == []


def test_recipient_required_towards_cleartext_postfix_keeps_mail_queued(chain: Chain) -> None:
    # The receiving smtpd offers no STARTTLS.
    rcv, _, snd = chain("may", None, rules=[rule(recipient_encryption="required")])
    snd.submit("alice@sender.test", "bob@receiver.test")
    snd.wait_log(r"status=deferred .*451 4\.7\.5")
    assert snd.queue_files(), "a temporary failure keeps the message queued"
    assert rcv.delivered() == []
    # smtpgate may have connected to look for STARTTLS, but sent no MAIL FROM in clear.
    assert "client=" not in rcv.log(), rcv.diagnostics()


def test_recipients_needing_different_upstream_outcomes_are_split_by_452(
    chain: Chain, upstream_cert: LeafFiles
) -> None:
    rcv, gate, snd = chain(
        "may",
        upstream_cert,
        rules=[
            rule(recipient="receiver.test", recipient_encryption="preferred"),
            rule(recipient="other.test", recipient_encryption="none"),
        ],
    )
    snd.submit("alice@sender.test", ["bob@receiver.test", "carol@other.test"])
    delivered = rcv.wait_delivered(2, timeout=40)
    snd.wait_queue_empty(timeout=40)
    assert sorted(str(m["Delivered-To"]) for m in delivered) == [
        "bob@receiver.test",
        "carol@other.test",
    ]
    snd.wait_log(r"452 4\.5\.3")
    txs = gate.transactions(outcome="delivered", count=2, timeout=10)
    by_domain = {tuple(t["recipient_domains"]): t for t in txs}
    assert by_domain[("receiver.test",)]["upstream_tls"] != "none"
    assert by_domain[("other.test",)]["upstream_tls"] == "none"
