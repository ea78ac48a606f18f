"""Names of the predefined objects (SPEC.md 3, 4) and the clone naming rule.

Kept apart from :mod:`smtpgate.config.predefined` so the schema can check
names without importing the predefined objects built from it.
"""

from __future__ import annotations

from collections.abc import Collection

TLS_CLIENT_STANDARD = "TLS-Client.Standard"
TLS_SERVER_STANDARD = "TLS-Server.Standard"
SMTP_INCOMING_STANDARD = "SMTP-Incoming.Standard"
SMTP_OUTGOING_STANDARD = "SMTP-Outgoing.Standard"

PREDEFINED_PROFILE_NAMES = frozenset({TLS_CLIENT_STANDARD, TLS_SERVER_STANDARD})
PREDEFINED_ACTION_NAMES = frozenset({SMTP_INCOMING_STANDARD, SMTP_OUTGOING_STANDARD})

DEFAULT_PROFILE_FOR_DIRECTION = {
    "incoming": TLS_SERVER_STANDARD,
    "outgoing": TLS_CLIENT_STANDARD,
}
"""A proxy action without ``starttls.tls_profile`` gets the profile of its side:
incoming actions face sending MTAs as a server, outgoing ones as a client."""


def clone_name(existing_names: Collection[str], base: str) -> str:
    """``base.1``, or the next free ``base.N`` (SPEC 3: ``TLS-Server.Standard.1``, ...)."""
    n = 1
    while f"{base}.{n}" in existing_names:
        n += 1
    return f"{base}.{n}"
