"""Encryption rules and first-match evaluation (SPEC.md section 2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

from smtpgate.policy.patterns import ANY_DOMAIN, DomainPattern

MATCH_CACHE_SIZE = 4096
"""Bounded per-RuleSet cache of (sender, recipient) -> RuleMatch."""


class SenderEncryption(StrEnum):
    """What a rule asks of the client leg (SPEC 2.1)."""

    REQUIRED = "required"
    NONE = "none"
    OPTIONAL = "optional"


class RecipientEncryption(StrEnum):
    """What a rule asks of the upstream leg (SPEC 2.2)."""

    REQUIRED = "required"
    NONE = "none"
    PREFERRED = "preferred"
    ALLOWED = "allowed"


class TLSNameFrom(StrEnum):
    """Which name the upstream leg sends as SNI and checks in the certificate
    (under ``validate_certificates``), for a rule's recipients."""

    NEXT_HOP = "next_hop"
    """The next hop's host name: the configured host, or the MX host name (Postfix's
    ``verify``, RFC 7672's "MX host name")."""
    RECIPIENT_DOMAIN = "recipient_domain"
    """The recipient's domain, whichever host DNS names (Postfix's ``secure`` with
    ``match=nexthop``): an MX answer changed on the way cannot redirect the mail to a
    host with a valid certificate for another name."""


@dataclass(frozen=True, slots=True)
class EncryptionRule:
    enabled: bool = True
    sender: DomainPattern = ANY_DOMAIN
    recipient: DomainPattern = ANY_DOMAIN
    sender_encryption: SenderEncryption = SenderEncryption.OPTIONAL
    recipient_encryption: RecipientEncryption = RecipientEncryption.PREFERRED
    tls_name_from: TLSNameFrom = TLSNameFrom.NEXT_HOP
    #: The rule's stable name (config ``name``), shown beside its position.
    name: str | None = None

    @property
    def is_catch_all(self) -> bool:
        """Matches every (sender, recipient) pair, so nothing after it is reached."""
        return self.sender.is_any and self.recipient.is_any


DEFAULT_RULE = EncryptionRule()
"""SPEC 2: applies when no enabled rule matches: sender optional, recipient preferred."""


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """The rule that decided a pair: ``position`` is its 0-based index in the
    action's list, or ``None`` for the built-in default.

    ``label`` is how logs and ``rules test`` name it: the 1-based position as
    users count rules, with the rule's name when it has one (``"3 (partners)"``),
    or ``"default"`` (SPEC 6, 7). A RuleSet makes one RuleMatch per rule, so
    the label is formatted once, not per recipient.
    """

    position: int | None
    rule: EncryptionRule
    label: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if self.position is None:
            label = "default"
        elif self.rule.name is None:
            label = str(self.position + 1)
        else:
            label = f"{self.position + 1} ({self.rule.name})"
        object.__setattr__(self, "label", label)


_DEFAULT_MATCH = RuleMatch(None, DEFAULT_RULE)


class RuleSet:
    """An action's ordered rules, compiled for per-recipient evaluation.

    Disabled rules are dropped once here, and evaluation stops at the first
    enabled catch-all rule, so :meth:`match` only loops over rules that can
    still win. Results are cached per (sender, recipient) pair.
    """

    __slots__ = (
        "_candidates",
        "_default_reachable",
        "_match_cached",
        "_sender_required",
        "rules",
    )

    def __init__(self, rules: Sequence[EncryptionRule]) -> None:
        self.rules: tuple[EncryptionRule, ...] = tuple(rules)
        enabled = [RuleMatch(i, r) for i, r in enumerate(self.rules) if r.enabled]
        candidates: list[RuleMatch] = []
        for entry in enabled:
            candidates.append(entry)
            if entry.rule.is_catch_all:
                break
        self._candidates: tuple[RuleMatch, ...] = tuple(candidates)
        self._default_reachable = not (candidates and candidates[-1].rule.is_catch_all)
        # SPEC 2.1 "any enabled rule whose sender pattern matches": all enabled
        # rules count here, also those shadowed by an earlier catch-all.
        self._sender_required: tuple[DomainPattern, ...] = tuple(
            e.rule.sender for e in enabled if e.rule.sender_encryption is SenderEncryption.REQUIRED
        )
        self._match_cached = lru_cache(maxsize=MATCH_CACHE_SIZE)(self._match_uncached)

    def match(self, sender_domain: str, recipient_domain: str) -> RuleMatch:
        """First enabled rule whose sender and recipient patterns both match,
        else the default (SPEC 2). Domains must already be normalized."""
        return self._match_cached(sender_domain, recipient_domain)

    def _match_uncached(self, sender_domain: str, recipient_domain: str) -> RuleMatch:
        for entry in self._candidates:
            rule = entry.rule
            if rule.sender.matches(sender_domain) and rule.recipient.matches(recipient_domain):
                return entry
        return _DEFAULT_MATCH

    def sender_rules_require_tls(self, sender_domain: str) -> bool:
        """Whether any enabled rule whose sender pattern matches requires sender
        encryption, whatever its recipient pattern (SPEC 2.1, switch on)."""
        return any(p.matches(sender_domain) for p in self._sender_required)

    def any_sender_encryption_wanted(self) -> bool:
        """Whether STARTTLS is worth advertising (SPEC 2.1, first bullet).

        Counts every enabled rule with sender encryption other than ``none``,
        and the default (``optional``) only while it can still apply, that is
        unless an enabled catch-all rule (``*`` / ``*``) precedes it. So a
        single enabled rule ``* -> * none`` switches STARTTLS off; counting
        the default unconditionally would make the SPEC condition always true.
        """
        if self._default_reachable and DEFAULT_RULE.sender_encryption is not SenderEncryption.NONE:
            return True
        return any(
            r.enabled and r.sender_encryption is not SenderEncryption.NONE for r in self.rules
        )

    def __repr__(self) -> str:
        return f"RuleSet({list(self.rules)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuleSet) and self.rules == other.rules

    def __hash__(self) -> int:
        return hash(self.rules)
