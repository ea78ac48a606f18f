"""TLS for both legs: profile -> ssl.SSLContext, the proxy CA and its
on-the-fly leaf certificates, and upstream certificate verification results.

See docs/tls.md. Nothing here does I/O per connection except issuing the
first leaf for a new outgoing host and (optionally) OCSP queries.
"""

from smtpgate.tls.certificates import CertificateError, CertificateStore, SNICertificate
from smtpgate.tls.contexts import (
    TLSContextCache,
    client_leg_context,
    client_leg_context_for_upstream,
    default_cache,
    upstream_leg_context,
)
from smtpgate.tls.info import describe_tls, starts_with_tls_handshake
from smtpgate.tls.profile import (
    TLSProfileError,
    TLSProfileLike,
    TLSProfileSettings,
    check_profile,
)
from smtpgate.tls.verification import (
    VerificationResult,
    check_ocsp,
    check_ocsp_async,
    verify_peer_certificate,
    verify_upstream_certificate,
)

__all__ = [
    "CertificateError",
    "CertificateStore",
    "SNICertificate",
    "TLSContextCache",
    "TLSProfileError",
    "TLSProfileLike",
    "TLSProfileSettings",
    "VerificationResult",
    "check_ocsp",
    "check_ocsp_async",
    "check_profile",
    "client_leg_context",
    "client_leg_context_for_upstream",
    "default_cache",
    "describe_tls",
    "starts_with_tls_handshake",
    "upstream_leg_context",
    "verify_peer_certificate",
    "verify_upstream_certificate",
]
