"""Encryption policy: domain patterns, rules and per-leg decisions (SPEC.md 2).

Pure functions over plain data: no I/O, no asyncio, no configuration import.
"""

from smtpgate.policy.decisions import (
    REPLY_MUST_STARTTLS,
    REPLY_OTHER_TRANSACTION,
    REPLY_UPSTREAM_TLS_UNAVAILABLE,
    Reply,
    UpstreamTLS,
    advertise_starttls,
    reject_mail_from_in_clear,
    reject_rcpt_in_clear,
    upstream_tls,
)
from smtpgate.policy.patterns import (
    MAX_PATTERN_LENGTH,
    DomainPattern,
    PatternError,
    PatternKind,
    normalize_domain,
)
from smtpgate.policy.rules import (
    DEFAULT_RULE,
    EncryptionRule,
    RecipientEncryption,
    RuleMatch,
    RuleSet,
    SenderEncryption,
)

__all__ = [
    "DEFAULT_RULE",
    "MAX_PATTERN_LENGTH",
    "REPLY_MUST_STARTTLS",
    "REPLY_OTHER_TRANSACTION",
    "REPLY_UPSTREAM_TLS_UNAVAILABLE",
    "DomainPattern",
    "EncryptionRule",
    "PatternError",
    "PatternKind",
    "RecipientEncryption",
    "Reply",
    "RuleMatch",
    "RuleSet",
    "SenderEncryption",
    "UpstreamTLS",
    "advertise_starttls",
    "normalize_domain",
    "reject_mail_from_in_clear",
    "reject_rcpt_in_clear",
    "upstream_tls",
]
