"""Encryption coverage per domain, and the rules that would tighten a leg without
refusing any message seen (docs/api.md, "Suggestions").

Pure: it gets the grouped counts of :mod:`.queries` and the configuration
the suggestions are for, and decides with the configuration's own rule
matching (:meth:`RuleSet.match`), so a suggestion is placed before the rule
that decides that mail today, whatever the rules looked like when the mail
passed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from smtpgate.config.schema import Config, ProxyAction
from smtpgate.policy.patterns import DomainPattern, PatternError, PatternKind
from smtpgate.policy.rules import (
    DEFAULT_RULE,
    EncryptionRule,
    RecipientEncryption,
    RuleMatch,
    SenderEncryption,
)
from smtpgate.traffic.queries import sort_versions
from smtpgate.traffic.rows import CLEAR


@dataclass
class Leg:
    """What one leg of a domain's transactions looked like."""

    encrypted: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    verified: int = 0
    verify_failed: int = 0

    def add(self, tls: str, verified: str, count: int) -> None:
        if tls != CLEAR:
            self.encrypted += count
        self.versions[tls] += count
        if verified == "ok":
            self.verified += count
        elif verified == "failed":
            self.verify_failed += count

    def as_json(self, messages: int, *, upstream: bool) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "encrypted": self.encrypted,
            "share": round(self.encrypted / messages, 4) if messages else 0.0,
            "versions": {v: self.versions[v] for v in sort_versions(set(self.versions))},
        }
        if upstream:
            shown["verified"] = self.verified
            shown["verify_failed"] = self.verify_failed
        return shown


@dataclass
class DomainFigures:
    messages: int = 0
    delivered: int = 0
    client: Leg = field(default_factory=Leg)
    upstream: Leg = field(default_factory=Leg)

    def add(self, client_tls: str, upstream_tls: str, verified: str, outcome: str, n: int) -> None:
        self.messages += n
        if outcome == "delivered":
            self.delivered += n
        self.client.add(client_tls, "", n)
        self.upstream.add(upstream_tls, verified, n)

    def as_json(self, domain: str) -> dict[str, Any]:
        return {
            "domain": domain,
            "messages": self.messages,
            "delivered": self.delivered,
            "client": self.client.as_json(self.messages, upstream=False),
            "upstream": self.upstream.as_json(self.messages, upstream=True),
        }


@dataclass
class Evidence:
    """The transactions of one domain through one action, for a suggestion on one leg."""

    messages: int = 0
    #: Every one of them would have passed with the leg required.
    fits: bool = True
    policies: set[str] = field(default_factory=set)
    #: The domain at the other end of each pair (sender for a recipient domain...).
    partners: set[str] = field(default_factory=set)
    #: Recipient leg: whether a failed certificate check would refuse it.
    checks_certificates: bool = True


def coverage(
    senders: Iterable[tuple[Any, ...]],
    recipients: Iterable[tuple[Any, ...]],
    config: Config,
) -> dict[str, Any]:
    """``senders``/``recipients``: rows of :func:`.queries.sender_groups` and
    :func:`.queries.recipient_groups`. The answer's ``senders``, ``recipients`` and
    ``suggestions``."""
    by_sender: dict[str, DomainFigures] = {}
    by_recipient: dict[str, DomainFigures] = {}
    from_domain: dict[tuple[str, str], Evidence] = {}  # (action, sender domain)
    to_domain: dict[tuple[str, str], Evidence] = {}  # (action, recipient domain)
    actions = {p.name: p.proxy_action for p in config.policies}
    # A failed certificate check refuses a required leg only when the action's profile
    # enforces checks (the session's rule: validation or OCSP on).
    enforced = {
        name: config.profile_for(name).validate_certificates or config.profile_for(name).ocsp
        for name in set(actions.values())
    }

    for policy, sender, client_tls, upstream_tls, verified, outcome, count in senders:
        n = int(count)
        by_sender.setdefault(sender, DomainFigures()).add(
            client_tls, upstream_tls, verified, outcome, n
        )
        if policy in actions:
            evidence = from_domain.setdefault((actions[policy], sender), Evidence())
            evidence.messages += n
            evidence.fits &= client_tls != CLEAR
            evidence.policies.add(policy)

    for row in recipients:
        policy, sender, client_tls, upstream_tls, verified, outcome, domain, count = row
        n = int(count)
        by_recipient.setdefault(domain, DomainFigures()).add(
            client_tls, upstream_tls, verified, outcome, n
        )
        if policy in actions:
            evidence = to_domain.setdefault((actions[policy], domain), Evidence())
            evidence.checks_certificates = enforced[actions[policy]]
            evidence.messages += n
            action = actions[policy]
            evidence.fits &= upstream_tls != CLEAR and not (
                verified == "failed" and enforced[action]
            )
            evidence.policies.add(policy)
            evidence.partners.add(sender)
            if (actions[policy], sender) in from_domain:
                from_domain[(actions[policy], sender)].partners.add(domain)

    suggestions: list[dict[str, Any]] = []
    for (action_name, domain), evidence in sorted(from_domain.items()):
        suggestions += _suggest(config.action(action_name), "sender", domain, evidence)
    for (action_name, domain), evidence in sorted(to_domain.items()):
        suggestions += _suggest(config.action(action_name), "recipient", domain, evidence)
    return {
        "senders": _listing(by_sender),
        "recipients": _listing(by_recipient),
        "suggestions": suggestions,
    }


def _listing(figures: dict[str, DomainFigures]) -> list[dict[str, Any]]:
    ordered = sorted(figures.items(), key=lambda item: (-item[1].messages, item[0]))
    return [f.as_json(domain) for domain, f in ordered]


def _exact_pattern(domain: str) -> bool:
    """Whether ``domain`` written as a pattern means exactly this domain."""
    try:
        pattern = DomainPattern.parse(domain)
    except PatternError:
        return False
    return pattern.kind is PatternKind.EXACT and pattern.domain == domain


def _suggest(
    action: ProxyAction, leg: str, domain: str, evidence: Evidence
) -> list[dict[str, Any]]:
    if not evidence.fits or not evidence.partners or not _exact_pattern(domain):
        return []
    rules = action.rule_set
    sender_leg = leg == "sender"
    if (
        sender_leg
        and action.starttls.require_tls_for_envelope
        and rules.sender_rules_require_tls(domain)
    ):
        return []  # MAIL FROM this domain in clear is refused already
    deciding: dict[int | None, RuleMatch] = {}
    for partner in evidence.partners:
        match = rules.match(domain, partner) if sender_leg else rules.match(partner, domain)
        deciding.setdefault(match.position, match)
    suggestions = []
    for match in sorted(deciding.values(), key=lambda m: -1 if m.position is None else m.position):
        rule = match.rule
        if sender_leg and rule.sender_encryption is SenderEncryption.REQUIRED:
            continue
        if not sender_leg and rule.recipient_encryption is RecipientEncryption.REQUIRED:
            continue
        suggestions.append(_suggestion(action, leg, domain, evidence, match))
    return suggestions


def _suggestion(
    action: ProxyAction, leg: str, domain: str, evidence: Evidence, match: RuleMatch
) -> dict[str, Any]:
    rule: EncryptionRule = match.rule if match.position is not None else DEFAULT_RULE
    n = evidence.messages
    if leg == "sender":
        what = f"{n} message{'s' if n != 1 else ''} from {domain}"
        why = "all arrived encrypted"
        body: dict[str, Any] = {
            "sender": domain,
            "recipient": rule.recipient.text,
            "sender_encryption": str(SenderEncryption.REQUIRED),
            "recipient_encryption": str(rule.recipient_encryption),
        }
    else:
        what = f"{n} message{'s' if n != 1 else ''} to {domain}"
        why = (
            "all sent on encrypted, no certificate check failed"
            if evidence.checks_certificates
            else "all sent on encrypted (the TLS profile does not check certificates)"
        )
        body = {
            "sender": rule.sender.text,
            "recipient": domain,
            "sender_encryption": str(rule.sender_encryption),
            "recipient_encryption": str(RecipientEncryption.REQUIRED),
        }
    body["comment"] = f"suggested by coverage: {what}, {why}"
    if match.position is not None:
        body["position"] = match.position + 1
    return {
        "leg": leg,
        "domain": domain,
        "action": action.name,
        "action_read_only": action.read_only,
        "policies": sorted(evidence.policies),
        "messages": n,
        "decided_by": match.label,
        "reason": f"{what} in the period, {why}",
        "rule": body,
    }
