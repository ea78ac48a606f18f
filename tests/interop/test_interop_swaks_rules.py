"""swaks through smtpgate to an aiosmtpd upstream, one test per rule outcome.

Proves, with a real client on the client leg and a real server on the upstream
leg, each outcome of SPEC.md section 2:

- sender ``required`` in clear: ``530 5.7.0`` at RCPT (other recipients of the
  same transaction unaffected) when ``require_tls_for_envelope`` is off, at MAIL
  when it is on; the same mail over STARTTLS or implicit TLS is delivered;
- recipient ``required`` towards an upstream without STARTTLS: ``451 4.7.5`` and
  nothing reaches the upstream; with STARTTLS it is delivered encrypted and the
  certificate is verified against the test CA;
- ``preferred``: encrypted when offered, clear when not; ``none``: clear even if
  offered; ``allowed``: mirrors the client leg, never silently downgrades;
- what the upstream saw (TLS version and cipher) is what smtpgate logged.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.peers.gate_config import rule
from tests.peers.relay import Relay
from tests.peers.swaks import SwaksResult, run_swaks
from tests.peers.upstream import AiosmtpdUpstream

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


def _delivered_once(up: AiosmtpdUpstream, res: SwaksResult) -> Any:
    assert res.returncode == 0, res
    assert res.end_of_data is not None and res.end_of_data.code == 250, res
    msgs = up.wait_messages(1)
    assert len(msgs) == 1
    return msgs[0]


# -- sender encryption -------------------------------------------------------------


def test_sender_required_in_clear_gets_530_at_rcpt_other_recipients_unaffected(
    relay: Relay,
) -> None:
    up, gate = relay(rules=[rule("sender.test", "secure.test", sender_encryption="required")])
    res = run_swaks(
        gate.port(),
        tls="plain",
        sender="alice@sender.test",
        to=["bob@secure.test", "carol@receiver.test"],
    )
    rcpts = [r for r in res.replies if r.command.upper().startswith("RCPT")]
    assert [r.code for r in rcpts] == [530, 250], res
    assert rcpts[0].text.startswith("5.7.0"), res
    assert "STARTTLS" in rcpts[0].text
    msg = _delivered_once(up, res)
    assert msg.rcpt_tos == ["carol@receiver.test"]  # the 530 recipient never got the body

    rejected = gate.wait_record("rcpt_rejected", lambda r: r.get("reply") == 530)
    assert rejected[0]["rule"] == "1"
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["client_tls"] == "none"
    assert tx["sender_domain"] == "sender.test"
    assert tx["reply"] == 250


def test_sender_required_over_starttls_is_delivered(relay: Relay) -> None:
    up, gate = relay(rules=[rule("sender.test", sender_encryption="required")])
    res = run_swaks(gate.port(), tls="starttls", sender="alice@sender.test")
    msg = _delivered_once(up, res)
    assert msg.rcpt_tos == ["bob@receiver.test"]
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["client_tls"] == res.tls_version
    assert res.tls_cipher and res.tls_cipher in tx["client_cipher"]
    assert tx["rule"] == "1"


def test_sender_required_with_envelope_switch_gets_530_at_mail(relay: Relay) -> None:
    up, gate = relay(
        starttls={"require_tls_for_envelope": True},
        rules=[rule("sender.test", "secure.test", sender_encryption="required")],
    )
    res = run_swaks(gate.port(), tls="plain", sender="alice@sender.test", to="carol@receiver.test")
    assert res.returncode == 23, res  # swaks: error in MAIL transaction
    mail = res.reply_to("MAIL")
    assert mail is not None and mail.code == 530 and mail.text.startswith("5.7.0"), res
    assert res.reply_to("RCPT") is None  # the envelope never left the client in clear

    # Another sender domain is not concerned by the rule.
    ok = run_swaks(gate.port(), tls="plain", sender="dave@other.test", to="carol@receiver.test")
    assert _delivered_once(up, ok).mail_from == "dave@other.test"

    # And over STARTTLS the first sender's mail is accepted.
    enc = run_swaks(gate.port(), tls="starttls", sender="alice@sender.test", to="bob@secure.test")
    assert enc.returncode == 0, enc
    assert up.wait_messages(2)[1].rcpt_tos == ["bob@secure.test"]


def test_implicit_tls_listener_counts_as_encrypted(relay: Relay) -> None:
    up, gate = relay(
        policy={"implicit_tls": True},
        starttls={"require_tls_for_envelope": True},
        rules=[rule("sender.test", sender_encryption="required")],
    )
    res = run_swaks(gate.port(), tls="implicit", sender="alice@sender.test")
    assert res.tls_version in TLS_VERSIONS, res
    ehlo = res.reply_to("EHLO")
    assert ehlo is not None and res.inside_tls(ehlo)
    assert "STARTTLS" not in res.transcript.split("MAIL FROM")[0], "no STARTTLS on implicit TLS"
    _delivered_once(up, res)
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["client_tls"] == res.tls_version


# -- recipient encryption ----------------------------------------------------------


def test_recipient_required_without_upstream_starttls_is_a_tempfail_nothing_sent(
    relay: Relay,
) -> None:
    up, gate = relay(None, rules=[rule(recipient_encryption="required")])
    for mode in ("plain", "starttls"):
        res = run_swaks(gate.port(), tls=mode)
        rcpt = res.reply_to("RCPT")
        assert rcpt is not None and rcpt.code == 451 and rcpt.text.startswith("4.7.5"), res
        assert res.returncode == 24, res  # no RCPT accepted
    assert up.messages == []
    # One refusal per session; a worker's records reach the log just after its reply,
    # and swaks may have exited before: wait for both.
    rejected = gate.wait_record("rcpt_rejected", lambda r: r["reply"] == 451, count=2)
    assert {r["reason"] for r in rejected} == {"upstream does not offer STARTTLS"}


def test_recipient_required_with_upstream_starttls_is_delivered_and_verified(relay: Relay) -> None:
    up, gate = relay(rules=[rule(recipient_encryption="required")])
    msg = _delivered_once(up, run_swaks(gate.port(), tls="plain"))
    assert msg.tls_version in TLS_VERSIONS
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["upstream_tls"] == msg.tls_version
    assert msg.tls_cipher and msg.tls_cipher in tx["upstream_cipher"]
    assert tx["upstream_verify"] == "ok"
    assert tx["recipient_domains"] == ["receiver.test"]


# (recipient_encryption, client leg, upstream offers STARTTLS) -> upstream encrypted?
# None means: refused with 451 4.7.5, nothing delivered.
OUTCOMES = [
    ("preferred", "plain", True, True),
    ("preferred", "plain", False, False),
    ("preferred", "starttls", False, False),
    ("none", "plain", True, False),
    ("none", "starttls", True, False),
    ("allowed", "starttls", True, True),
    ("allowed", "plain", True, False),
    ("allowed", "starttls", False, None),
]


@pytest.mark.parametrize(("recipient_encryption", "client", "offers", "expected"), OUTCOMES)
def test_recipient_encryption_outcome(
    recipient_encryption: str,
    client: str,
    offers: bool,
    expected: bool | None,
    relay: Relay,
) -> None:
    up, gate = relay(
        "starttls" if offers else None,
        rules=[rule("sender.test", "receiver.test", recipient_encryption=recipient_encryption)],
    )
    res = run_swaks(gate.port(), tls=client)
    if expected is None:
        rcpt = res.reply_to("RCPT")
        assert rcpt is not None and rcpt.code == 451 and rcpt.text.startswith("4.7.5"), res
        assert up.messages == []
        return
    msg = _delivered_once(up, res)
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["rule"] == "1"
    assert tx["client_tls"] == (res.tls_version or "none")
    if expected:
        assert msg.tls_version in TLS_VERSIONS
        assert tx["upstream_tls"] == msg.tls_version
    else:
        assert msg.tls_version is None, "the upstream leg must be in clear"
        assert tx["upstream_tls"] == "none"


def test_default_rule_applies_when_no_rule_matches(relay: Relay) -> None:
    up, gate = relay(
        rules=[
            rule("elsewhere.test", sender_encryption="required", recipient_encryption="none"),
            rule("sender.test", enabled=False, recipient_encryption="none"),
        ]
    )
    msg = _delivered_once(up, run_swaks(gate.port(), tls="plain"))
    assert msg.tls_version in TLS_VERSIONS  # default: recipient preferred
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["rule"] == "default"
