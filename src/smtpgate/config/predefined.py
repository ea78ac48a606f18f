"""Predefined, read-only objects merged into every configuration (SPEC.md 3, 4).

A file may not define objects with these names; ``clone`` makes an editable
copy (:func:`clone_name`, :meth:`Config.clone_profile`, :meth:`Config.clone_action`).
The objects are built in :mod:`smtpgate.config.schema`, right after their
models, so that ``Config`` merges them without importing this module back.
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
from smtpgate.config.schema import (
    PREDEFINED_ACTIONS,
    PREDEFINED_PROFILES,
    SMTP_INCOMING_STANDARD_ACTION,
    SMTP_OUTGOING_STANDARD_ACTION,
    TLS_CLIENT_STANDARD_PROFILE,
    TLS_SERVER_STANDARD_PROFILE,
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
