"""What the upstream certificate check says, also after an unverified handshake.

Opportunistic TLS (``preferred`` recipient encryption) handshakes with
CERT_NONE and must still log what verification *would* have said. This module
re-checks the peer certificate with cryptography's WebPKI verifier against the
system anchors plus the profile's ``ca_file``, both taken from the
:class:`~smtpgate.tls.trust.TrustAnchors` of the running configuration.
:class:`UpstreamVerifier` bundles profile, anchors and the remembered
verdicts of one policy; a reload replaces it with its configuration.

Limitation: Python 3.11 exposes only the peer's leaf certificate
(``get_unverified_chain`` arrived in 3.13), so intermediates the server sent
are unknown here. A leaf issued by an intermediate that is not in the system
store or ``ca_file`` reports ``failed: unknown CA`` even though the full
handshake chain might have verified.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Subject,
    VerificationError,
)

from smtpgate.tls.certificates import CertificateError
from smtpgate.tls.issuing import normalize_host
from smtpgate.tls.ocsp import DEFAULT_TIMEOUT, check_ocsp, check_ocsp_async
from smtpgate.tls.profile import TLSProfileLike
from smtpgate.tls.result import NOT_CHECKED, OK, VerificationResult
from smtpgate.tls.trust import TrustAnchors

__all__ = [
    "NOT_CHECKED",
    "OK",
    "UpstreamVerifier",
    "VerificationResult",
    "check_ocsp",
    "check_ocsp_async",
    "verify_peer_certificate",
    "verify_upstream_certificate",
]

TLSObject = ssl.SSLObject | ssl.SSLSocket


_SERVER_EKUS = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)


def _eku_allows_server(
    _policy: Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    if eku is not None and not any(oid in eku for oid in _SERVER_EKUS):
        raise ValueError("certificate not for TLS servers (extendedKeyUsage)")


# WebPKI defaults, except where OpenSSL (the verified-handshake path) is more
# lenient and private CAs commonly differ: any criticality of subjectAltName
# and extendedKeyUsage, and no authorityKeyIdentifier. This check should say
# what the handshake would have said. The serverAuth purpose is enforced.
_EE_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .require_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _eku_allows_server)
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


def _reason(exc: VerificationError) -> str:
    """Short, stable log reasons from cryptography's verbose messages."""
    text = str(exc).lower()
    if "no matching subjectaltname" in text:
        return "hostname mismatch"
    if "not valid at validation time" in text or "expired" in text:
        return "certificate expired or not yet valid"
    if "candidates exhausted" in text:
        return "unknown CA"
    return f"invalid certificate ({text.split(' (encountered', 1)[0]})"


def _subject(server_hostname: str) -> Subject:
    host = normalize_host(server_hostname)
    return x509.DNSName(host) if isinstance(host, str) else x509.IPAddress(host)


def _verified_in_handshake(ssl_object: TLSObject) -> bool:
    ctx = ssl_object.context
    return ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def _check(
    ssl_object: TLSObject, profile: TLSProfileLike, server_hostname: str, trust: TrustAnchors
) -> tuple[VerificationResult, x509.Certificate | None, x509.Certificate | None]:
    """(result, leaf, issuer if known)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return VerificationResult("failed", "no peer certificate"), None, None
    try:
        leaf = x509.load_der_x509_certificate(der)
    except ValueError:
        return VerificationResult("failed", "malformed certificate"), None, None
    if _verified_in_handshake(ssl_object):
        # OpenSSL already checked chain and name; only the issuer (for OCSP)
        # is left to find.
        return OK, leaf, trust.find_issuer(leaf, profile.ca_file)
    try:
        subject = _subject(server_hostname)
    except ValueError as exc:
        return VerificationResult("failed", f"invalid host name ({exc})"), leaf, None
    try:
        verifier = (
            PolicyBuilder()
            .store(trust.store(profile.ca_file))
            .time(dt.datetime.now(dt.UTC))
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
            .build_server_verifier(subject)
        )
        chain = verifier.verify(leaf, [])
    except CertificateError as exc:
        return VerificationResult("failed", str(exc)), leaf, None
    except VerificationError as exc:
        return VerificationResult("failed", _reason(exc)), leaf, None
    return OK, leaf, chain[1] if len(chain) > 1 else None


def verify_peer_certificate(
    ssl_object: TLSObject, profile: TLSProfileLike, server_hostname: str, trust: TrustAnchors
) -> VerificationResult:
    """Chain and host name check of the peer certificate (no network).

    For a handshake already verified by OpenSSL (CERT_REQUIRED and
    check_hostname) the answer is ``ok`` without further work.
    """
    return _check(ssl_object, profile, server_hostname, trust)[0]


async def verify_upstream_certificate(
    ssl_object: TLSObject,
    profile: TLSProfileLike,
    server_hostname: str,
    trust: TrustAnchors,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check_chain: bool = True,
) -> VerificationResult:
    """:func:`verify_peer_certificate`, then OCSP if the profile asks for it.

    OCSP runs in a worker thread; a certificate that already failed is not
    sent to a responder. With ``check_chain=False`` (a profile that does not
    validate certificates) only revocation is checked: ``ocsp`` must not turn
    chain and host-name validation back on.
    """
    if check_chain:
        result, leaf, issuer = _check(ssl_object, profile, server_hostname, trust)
    else:
        der = ssl_object.getpeercert(binary_form=True)
        try:
            leaf = x509.load_der_x509_certificate(der) if der else None
        except ValueError:
            leaf = None
        issuer = trust.find_issuer(leaf, profile.ca_file) if leaf is not None else None
        result = NOT_CHECKED
    if result.failed or not profile.ocsp or leaf is None:
        return result
    return await check_ocsp_async(
        leaf.public_bytes(Encoding.DER),
        None if issuer is None else issuer.public_bytes(Encoding.DER),
        profile.ocsp_allow_unavailable,
        timeout=timeout,
    )


class UpstreamVerifier:
    """Upstream certificate checks of one policy under one configuration.

    Opportunistic handshakes skip verification; what it would have said is
    computed once per (certificate, host) and remembered here, not per
    message. The verifier is built with the policy's runtime, so a reload
    (new ``ca_file``, new system bundle) starts with new anchors and no
    remembered verdicts, and two policies never share a verdict.
    """

    __slots__ = ("_remembered", "_size", "profile", "trust")

    def __init__(self, profile: TLSProfileLike, trust: TrustAnchors, *, size: int = 256) -> None:
        self.profile = profile
        self.trust = trust
        self._size = size
        self._remembered: OrderedDict[tuple[bytes, str], VerificationResult] = OrderedDict()

    def check(self, ssl_object: TLSObject, server_hostname: str) -> VerificationResult:
        """:func:`verify_peer_certificate`, remembered per (certificate, host)."""
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            return verify_peer_certificate(ssl_object, self.profile, server_hostname, self.trust)
        key = (der, server_hostname)
        result = self._remembered.get(key)
        if result is None:
            result = verify_peer_certificate(ssl_object, self.profile, server_hostname, self.trust)
            self._remembered[key] = result
            if len(self._remembered) > self._size:
                self._remembered.popitem(last=False)
        return result

    async def check_with_ocsp(
        self, ssl_object: TLSObject, server_hostname: str, *, check_chain: bool
    ) -> VerificationResult:
        """:func:`verify_upstream_certificate`; never remembered, as revocation
        needs a fresh answer per connection."""
        return await verify_upstream_certificate(
            ssl_object, self.profile, server_hostname, self.trust, check_chain=check_chain
        )
