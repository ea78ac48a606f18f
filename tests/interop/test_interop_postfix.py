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
  real MTA defer that recipient to its queue and send it in a second
  transaction when its queue timers say so: both arrive.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from tests.peers.certs import LeafFiles, TestPKI
from tests.peers.gate_config import gate_config, rule
from tests.peers.postfix import PostfixInstance
from tests.peers.smtpgate_proc import SmtpgateProcess

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

StartGate = Callable[..., SmtpgateProcess]
StartPostfix = Callable[..., PostfixInstance]
Chain = Callable[..., tuple[PostfixInstance, SmtpgateProcess, PostfixInstance]]


@pytest.fixture
def chain(start_postfix: StartPostfix, start_gate: StartGate, gate_cert: LeafFiles) -> Chain:
    """``chain(level, receiver_cert, **gate_config)``: a receiving Postfix (STARTTLS
    with ``receiver_cert``; ``None``: none), smtpgate in front of it (``gate_cert``
    on the client leg), and a sending Postfix relaying to smtpgate with
    ``smtp_tls_security_level = level`` and ``sender_main_cf`` on top of the
    harness's ``main.cf``."""

    def build(
        level: str,
        receiver_cert: LeafFiles | None,
        *,
        sender_main_cf: Mapping[str, str] | None = None,
        **gate_kw: Any,
    ) -> tuple[PostfixInstance, SmtpgateProcess, PostfixInstance]:
        rcv = start_postfix(
            "rcv", smtpd_cert=receiver_cert, virtual_domains=("receiver.test", "other.test")
        )
        profile = {"validate_certificates": False, **gate_kw.pop("profile", {})}
        gate = start_gate(gate_config(rcv.port, server_cert=gate_cert, profile=profile, **gate_kw))
        snd = start_postfix(
            "snd",
            relayhost=f"[127.0.0.1]:{gate.port()}",
            smtp_tls_security_level=level,
            main_cf=sender_main_cf,
        )
        return rcv, gate, snd

    return build


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_postfix_to_postfix_through_smtpgate_tls_versions_agree(
    level: str, chain: Chain, pki: TestPKI, upstream_cert: LeafFiles
) -> None:
    rcv, gate, snd = chain(
        level,
        upstream_cert,
        profile={"ca_file": str(pki.ca_file), "validate_certificates": True},
    )

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
    """What the sending Postfix does with ``452 4.5.3``, step by step.

    Postfix 3.7's SMTP client treats a 452 to RCPT like any other 4xx reply to
    RCPT (``smtp_proto.c`` hands it to ``smtp_rcpt_fail()``; no reply code or
    text is recognised as "too many recipients"):
    the recipient is deferred (``dsn=4.5.3, status=deferred``) and the message
    goes to the others in the same transaction. Once the attempt is over, the
    queue manager moves the message to the deferred queue, with the next
    attempt at now + its age clamped to [``minimal_backoff_time``,
    ``maximal_backoff_time``] as the queue file's time stamp, and the deferred
    queue scan (every ``queue_run_delay``) sends it then: 5 to 10 minutes later
    with Postfix's defaults. (Only when the server that answered 452 is not the
    last one Postfix would try, e.g. a second MX host, does it keep the
    recipient and try the next server at once.)

    So the second transaction comes from the queue timers, not from the reply.
    The test sets them to an hour, so Postfix's own retry cannot race it,
    checks the next-attempt time in the deferred queue file, and then runs that
    attempt with ``postqueue -i <queue id>``.
    """
    backoff = 3600
    rcv, gate, snd = chain(
        "may",
        upstream_cert,
        sender_main_cf={
            "minimal_backoff_time": f"{backoff}s",
            "maximal_backoff_time": f"{backoff}s",
            "queue_run_delay": f"{backoff}s",
        },
        rules=[
            rule(recipient="receiver.test", recipient_encryption="preferred"),
            rule(recipient="other.test", recipient_encryption="none"),
        ],
    )
    recipients = ["bob@receiver.test", "carol@other.test"]
    mid = snd.submit("alice@sender.test", recipients)
    queue_id = snd.queue_id(mid)
    relay = rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{gate.port()}, "

    # First attempt: whichever recipient Postfix sends second gets the 452 and is
    # deferred; the first is delivered in that transaction.
    split = snd.wait_log(
        rf"{queue_id}: to=<(?P<rcpt>[^>]+)>, {relay}.*dsn=4\.5\.3, status=deferred "
        rf"\(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 452 4\.5\.3 "
    )
    deferred = split["rcpt"]
    (first,) = (r for r in recipients if r != deferred)
    snd.wait_log(rf"{queue_id}: to=<{re.escape(first)}>, {relay}.*status=sent ")
    queue_file = snd.wait_deferred(queue_id)
    next_attempt = queue_file.stat().st_mtime - time.time()
    assert backoff - 30 < next_attempt <= backoff, snd.diagnostics()
    assert [str(m["Delivered-To"]) for m in rcv.wait_delivered(1)] == [first]

    # The attempt the queue manager would make in an hour, now.
    snd.retry(queue_id)
    snd.wait_log(rf"{queue_id}: to=<{re.escape(deferred)}>, {relay}.*status=sent ")
    snd.wait_log(rf"{queue_id}: removed")
    delivered = rcv.wait_delivered(2)
    assert sorted(str(m["Delivered-To"]) for m in delivered) == recipients
    assert {str(m["Message-ID"]) for m in delivered} == {mid}
    txs = gate.transactions(outcome="delivered", count=2, timeout=10)
    by_domain = {tuple(t["recipient_domains"]): t for t in txs}
    assert by_domain[("receiver.test",)]["upstream_tls"] != "none"
    assert by_domain[("other.test",)]["upstream_tls"] == "none"
