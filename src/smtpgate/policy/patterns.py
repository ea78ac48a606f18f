"""Domain names and domain patterns (SPEC.md section 2).

Everything here compares IDNA A-labels in lower case, so a rule written as
``bücher.example`` matches mail for ``xn--bcher-kva.example`` and vice versa.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache

import idna

MAX_PATTERN_LENGTH = 200
"""SPEC 2: a pattern is at most 200 characters (counted on the text as written)."""

_WILDCARD_PREFIX = "*."


class PatternError(ValueError):
    """A domain pattern that cannot be used; the message says why."""


def _strip_root(domain: str) -> str:
    # "example.com." is the same domain as "example.com"; without this a
    # trailing dot would let a sender slip past an exact rule.
    return domain[:-1] if domain.endswith(".") else domain


@lru_cache(maxsize=4096)
def _normalize_non_ascii(domain: str) -> str:
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return domain.lower()


def normalize_domain(domain: str) -> str:
    """Return the lower-case IDNA A-label form of ``domain``.

    ``""`` (the null sender) stays ``""``. A domain that IDNA cannot encode
    (an address literal, a label with ``_``) falls back to the lower-cased
    input: this runs on every MAIL/RCPT and must never raise. A single
    trailing dot is removed.
    """
    domain = _strip_root(domain)
    if domain.isascii():
        # UTS 46 maps ASCII only by lower-casing it, and an invalid ASCII
        # domain falls back to lower-casing too: skip the IDNA codec.
        return domain.lower()
    return _normalize_non_ascii(domain)


def _encode_pattern_domain(text: str, domain: str) -> str:
    """A-label form of a domain inside a pattern, validated strictly."""
    if not domain:
        raise PatternError(f"pattern {text!r} has no domain")
    try:
        encoded = idna.encode(_strip_root(domain), uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise PatternError(f"pattern {text!r} is not a valid domain: {exc}") from None
    return encoded


class PatternKind(enum.Enum):
    ANY = "any"
    EXACT = "exact"
    SUBDOMAINS = "subdomains"


@dataclass(frozen=True, slots=True)
class DomainPattern:
    """A parsed domain pattern: ``*``, ``example.com`` or ``*.example.com``.

    ``text`` is the pattern as written (for display and export); ``domain`` is
    the A-label form of the domain part (``""`` for ``*``). Build instances
    with :meth:`parse`.
    """

    text: str
    kind: PatternKind
    domain: str

    @classmethod
    def parse(cls, text: str) -> DomainPattern:
        """Parse and validate ``text``; raise :class:`PatternError` if unusable."""
        if not text:
            raise PatternError("pattern is empty")
        if len(text) > MAX_PATTERN_LENGTH:
            raise PatternError(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
        if text != text.strip():
            raise PatternError(f"pattern {text!r} has leading or trailing white space")
        if text == "*":
            return cls(text, PatternKind.ANY, "")
        if text.startswith(_WILDCARD_PREFIX):
            rest = text[len(_WILDCARD_PREFIX) :]
            kind = PatternKind.SUBDOMAINS
        else:
            rest = text
            kind = PatternKind.EXACT
        if "*" in rest:
            raise PatternError(
                f"pattern {text!r}: '*' is allowed only as the whole pattern "
                "or as a leading '*.' label"
            )
        return cls(text, kind, _encode_pattern_domain(text, rest))

    @property
    def is_any(self) -> bool:
        return self.kind is PatternKind.ANY

    def matches(self, normalized_domain: str) -> bool:
        """Whether the pattern matches a domain already passed through
        :func:`normalize_domain`. Only ``*`` matches the null sender ``""``."""
        if self.kind is PatternKind.ANY:
            return True
        if self.kind is PatternKind.EXACT:
            return normalized_domain == self.domain
        # SUBDOMAINS: at least one more label in front of ".<domain>".
        suffix_len = len(self.domain) + 1
        return (
            len(normalized_domain) > suffix_len
            and normalized_domain.endswith(self.domain)
            and normalized_domain[-suffix_len] == "."
        )

    def __str__(self) -> str:
        return self.text


ANY_DOMAIN = DomainPattern.parse("*")
