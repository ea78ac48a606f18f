"""TLS for both legs: profile -> ssl.SSLContext, the proxy CA and its
on-the-fly leaf certificates, and upstream certificate verification results.

See docs/tls.md. Nothing here does I/O per connection except issuing the
first leaf for a new outgoing host and (optionally) OCSP queries.
"""

from smtpgate.tls.certificates import CertificateError, CertificateStore, SNICertificate
from smtpgate.tls.contexts import TLSContextCache
from smtpgate.tls.info import describe_tls, starts_with_tls_handshake
from smtpgate.tls.profile import (
    TLSProfileError,
    TLSProfileLike,
    check_profile,
)
from smtpgate.tls.trust import TrustAnchors
from smtpgate.tls.verification import (
    UpstreamVerifier,
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
    "TrustAnchors",
    "UpstreamVerifier",
    "VerificationResult",
    "check_ocsp",
    "check_ocsp_async",
    "check_profile",
    "describe_tls",
    "starts_with_tls_handshake",
    "verify_peer_certificate",
    "verify_upstream_certificate",
]
