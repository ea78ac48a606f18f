"""TLS facts for log lines and the Received header (SPEC.md section 7)."""

from __future__ import annotations

import ssl


def describe_tls(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, str]:
    """(version, cipher), e.g. ("TLSv1.3", "TLS_AES_256_GCM_SHA384"); ("none", "none")
    for a cleartext leg or a handshake that has not completed."""
    if ssl_object is None:
        return "none", "none"
    cipher = ssl_object.cipher()
    return ssl_object.version() or "none", cipher[0] if cipher else "none"


def starts_with_tls_handshake(prefix: bytes) -> bool:
    """Whether the first bytes of a connection can be a TLS ClientHello record.

    For ``tls_compliant_only`` on implicit-TLS listeners: content type 22
    (handshake), record version 3.x. Needs at least 3 bytes; fewer -> False.
    """
    return len(prefix) >= 3 and prefix[0] == 0x16 and prefix[1] == 0x03 and prefix[2] <= 0x04
