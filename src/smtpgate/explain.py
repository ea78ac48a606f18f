"""``smtpgate rules test``: the decisions of SPEC 2 for one sender/recipient pair."""

from __future__ import annotations

from typing import Any

from smtpgate.config.schema import ProxyAction
from smtpgate.policy.decisions import (
    UpstreamTLS,
    reject_mail_from_in_clear,
    reject_rcpt_in_clear,
    upstream_tls,
)
from smtpgate.policy.patterns import normalize_domain


def _domain(address: str) -> str:
    return normalize_domain(address.rpartition("@")[2] if "@" in address else address)


def explain(
    action: ProxyAction, sender: str, recipient: str, *, client_tls: bool
) -> dict[str, Any]:
    rules = action.rule_set
    sender_domain = "" if sender in ("", "<>") else _domain(sender)
    recipient_domain = _domain(recipient)
    match = rules.match(sender_domain, recipient_domain)
    envelope = action.starttls.require_tls_for_envelope
    if reject_mail_from_in_clear(
        rules=rules,
        sender_domain=sender_domain,
        client_encrypted=client_tls,
        require_tls_for_envelope=envelope,
    ):
        client_leg = "530 at MAIL FROM: must issue STARTTLS first"
    elif reject_rcpt_in_clear(
        match=match, client_encrypted=client_tls, require_tls_for_envelope=envelope
    ):
        client_leg = "530 at RCPT TO: must issue STARTTLS first"
    else:
        client_leg = "accepted " + ("encrypted" if client_tls else "in clear")
    mode = upstream_tls(match.rule.recipient_encryption, client_encrypted=client_tls)
    upstream = {
        UpstreamTLS.REQUIRED: "STARTTLS required (451 4.7.5 if unavailable; never in clear)",
        UpstreamTLS.OPPORTUNISTIC: "STARTTLS if offered, else in clear",
        UpstreamTLS.NONE: "in clear (no STARTTLS)",
    }[mode]
    return {
        "action": action.name,
        "sender_domain": sender_domain,
        "recipient_domain": recipient_domain,
        "rule": match.label,
        "sender_encryption": str(match.rule.sender_encryption),
        "recipient_encryption": str(match.rule.recipient_encryption),
        "client_leg": client_leg,
        "upstream_leg": upstream,
        "upstream_mode": str(mode),
    }
