"""Predefined, read-only objects merged into every configuration (SPEC.md 3, 4).

A file may not define objects with these names; ``clone`` makes an editable
copy (:func:`clone_name`, :meth:`Config.clone_profile`, :meth:`Config.clone_action`).
"""

from __future__ import annotations

from smtpgate.config.names import (
    PREDEFINED_ACTION_NAMES,
    PREDEFINED_PROFILE_NAMES,
    SMTP_INCOMING_STANDARD,
    SMTP_OUTGOING_STANDARD,
    TLS_CLIENT_STANDARD,
    TLS_SERVER_STANDARD,
    clone_name,
)
from smtpgate.config.schema import ProxyAction, TLSProfile

# SPEC 3: both with min_version 1.2; the client one does not insist on
# TLS-compliant traffic, the server one does.
TLS_CLIENT_STANDARD_PROFILE = TLSProfile(
    name=TLS_CLIENT_STANDARD, min_version="1.2", tls_compliant_only=False
)
TLS_SERVER_STANDARD_PROFILE = TLSProfile(
    name=TLS_SERVER_STANDARD, min_version="1.2", tls_compliant_only=True
)
PREDEFINED_PROFILES: tuple[TLSProfile, ...] = (
    TLS_CLIENT_STANDARD_PROFILE,
    TLS_SERVER_STANDARD_PROFILE,
)

# SPEC 4: default limits and ESMTP, no rules (so the default rule applies).
SMTP_INCOMING_STANDARD_ACTION = ProxyAction.model_validate(
    {"name": SMTP_INCOMING_STANDARD, "direction": "incoming"}
)
SMTP_OUTGOING_STANDARD_ACTION = ProxyAction.model_validate(
    {"name": SMTP_OUTGOING_STANDARD, "direction": "outgoing"}
)
PREDEFINED_ACTIONS: tuple[ProxyAction, ...] = (
    SMTP_INCOMING_STANDARD_ACTION,
    SMTP_OUTGOING_STANDARD_ACTION,
)

__all__ = [
    "PREDEFINED_ACTIONS",
    "PREDEFINED_ACTION_NAMES",
    "PREDEFINED_PROFILES",
    "PREDEFINED_PROFILE_NAMES",
    "SMTP_INCOMING_STANDARD",
    "SMTP_INCOMING_STANDARD_ACTION",
    "SMTP_OUTGOING_STANDARD",
    "SMTP_OUTGOING_STANDARD_ACTION",
    "TLS_CLIENT_STANDARD",
    "TLS_CLIENT_STANDARD_PROFILE",
    "TLS_SERVER_STANDARD",
    "TLS_SERVER_STANDARD_PROFILE",
    "clone_name",
]
