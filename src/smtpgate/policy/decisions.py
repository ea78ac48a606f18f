"""Per-leg encryption decisions of SPEC.md sections 2.1 and 2.2.

Plain data in, decision out: the proxy session asks, these answer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from smtpgate.policy.rules import (
    RecipientEncryption,
    RuleMatch,
    RuleSet,
    SenderEncryption,
    TLSNameFrom,
)

Reply = tuple[int, str]

REPLY_MUST_STARTTLS: Final[Reply] = (530, "5.7.0 Must issue a STARTTLS command first")
"""SPEC 2.1: cleartext MAIL (switch on) or RCPT (switch off) under sender ``required``."""

REPLY_UPSTREAM_TLS_UNAVAILABLE: Final[Reply] = (
    451,
    "4.7.5 Cannot deliver encrypted as required, try later",
)
"""SPEC 2.2 ``required``: upstream offers no STARTTLS or the handshake/checks failed."""

REPLY_OTHER_TRANSACTION: Final[Reply] = (
    452,
    "4.5.3 Recipient needs another transaction, send it again separately",
)
"""SPEC 2.2 last paragraph: this recipient needs a different upstream connection."""


class UpstreamTLS(StrEnum):
    """How the upstream leg of a transaction is encrypted (SPEC 2.2)."""

    REQUIRED = "required"
    """STARTTLS (or implicit TLS) with the profile's checks, else 451 4.7.5; never clear."""
    OPPORTUNISTIC = "opportunistic"
    """STARTTLS when offered; on absence or handshake failure deliver in clear
    over a new connection; certificate validation failures are only logged."""
    NONE = "none"
    """No STARTTLS, even if offered."""


def advertise_starttls(
    *,
    implicit_tls_listener: bool,
    session_encrypted: bool,
    esmtp_enabled: bool,
    starttls_enabled: bool,
    rules: RuleSet,
) -> bool:
    """Whether the EHLO reply lists STARTTLS.

    SPEC 2.1, first bullet: the listener is not implicit TLS, the session is not
    yet encrypted, ESMTP and STARTTLS are enabled (SPEC 4: without ESMTP,
    STARTTLS is off whatever its own setting), and some enabled rule or the
    reachable default wants sender encryption other than ``none``
    (see :meth:`RuleSet.any_sender_encryption_wanted`).
    """
    return (
        not implicit_tls_listener
        and not session_encrypted
        and esmtp_enabled
        and starttls_enabled
        and rules.any_sender_encryption_wanted()
    )


def reject_mail_from_in_clear(
    *,
    rules: RuleSet,
    sender_domain: str,
    client_encrypted: bool,
    require_tls_for_envelope: bool,
) -> bool:
    """Whether ``MAIL FROM`` gets :data:`REPLY_MUST_STARTTLS`.

    SPEC 2.1, ``required`` with ``require_tls_for_envelope`` on: a cleartext
    MAIL FROM is refused when any enabled rule whose sender pattern matches the
    sender domain requires sender encryption, whatever its recipient pattern,
    so neither envelope nor body travels in clear. With the switch off the
    check happens per RCPT instead (:func:`reject_rcpt_in_clear`). A session on
    an implicit-TLS listener counts as encrypted (SPEC 2.1, last bullet); the
    caller passes ``client_encrypted=True`` for it.
    """
    return (
        require_tls_for_envelope
        and not client_encrypted
        and rules.sender_rules_require_tls(sender_domain)
    )


def reject_rcpt_in_clear(
    *,
    match: RuleMatch,
    client_encrypted: bool,
    require_tls_for_envelope: bool,
) -> bool:
    """Whether this ``RCPT TO`` gets :data:`REPLY_MUST_STARTTLS`.

    SPEC 2.1, ``required`` with ``require_tls_for_envelope`` off: each cleartext
    RCPT whose matching rule requires sender encryption is refused; the other
    recipients of the transaction are unaffected, so the body is never taken
    in clear for that recipient. With the switch on, MAIL FROM should already
    have been refused (the matched rule's sender pattern matched); answering
    the same here is a second line of defence, so the result does not depend
    on the switch.
    """
    del require_tls_for_envelope  # same answer either way, see docstring
    return not client_encrypted and match.rule.sender_encryption is SenderEncryption.REQUIRED


def upstream_tls(
    recipient_encryption: RecipientEncryption, *, client_encrypted: bool
) -> UpstreamTLS:
    """The upstream leg's TLS mode for a transaction's first recipient's rule.

    SPEC 2.2: ``required`` -> REQUIRED; ``preferred`` -> OPPORTUNISTIC
    (RFC 7435); ``none`` -> NONE; ``allowed`` mirrors the client leg: REQUIRED
    when the client leg is encrypted (encrypted mail is never silently
    downgraded), NONE when it is in clear.
    """
    if recipient_encryption is RecipientEncryption.REQUIRED:
        return UpstreamTLS.REQUIRED
    if recipient_encryption is RecipientEncryption.PREFERRED:
        return UpstreamTLS.OPPORTUNISTIC
    if recipient_encryption is RecipientEncryption.NONE:
        return UpstreamTLS.NONE
    return UpstreamTLS.REQUIRED if client_encrypted else UpstreamTLS.NONE


def checked_domain(tls_name_from: TLSNameFrom, recipient_domain: str, mode: UpstreamTLS) -> str:
    """The domain the upstream certificate is checked against for this recipient, or
    ``""`` when it is the next hop's host name (issue 10, docs/configuration.md
    "Which name TLS checks").

    ``recipient_domain`` under a rule with ``tls_name_from = "recipient_domain"``
    (Postfix's ``secure``); ``""`` with ``next_hop`` (Postfix's ``verify``), on a
    leg without TLS (nothing is checked), and for an address literal
    (``bob@[192.0.2.1]``), whose next hop is that address and has no other name.
    Recipients of one transaction must share it, as they share a TLS mode.
    """
    if (
        tls_name_from is TLSNameFrom.NEXT_HOP
        or mode is UpstreamTLS.NONE
        or recipient_domain.startswith("[")
    ):
        return ""
    return recipient_domain
