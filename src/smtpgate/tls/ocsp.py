"""OCSP revocation check (RFC 6960) against the responder named in the
certificate's Authority Information Access extension.

Blocking (urllib); call it through ``check_ocsp_async`` or ``asyncio.to_thread``
from the event loop. Anything short of a fresh, correctly signed answer is
"unavailable", which ``allow_unavailable`` turns into ok-with-reason or failed.
Stapled responses are not used: Python's ssl module cannot read them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from smtpgate.logs import describe_error
from smtpgate.tls.result import VerificationResult

DEFAULT_TIMEOUT = 3.0
MAX_RESPONSE = 64 * 1024  # real responses are 1-4 KiB
CLOCK_SKEW = dt.timedelta(minutes=5)


class _Unavailable(Exception):
    """No trustworthy answer; the message is the log reason."""


def responder_url(cert: x509.Certificate) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            desc.access_location, x509.UniformResourceIdentifier
        ):
            url = desc.access_location.value
            # urllib would happily open file:// or ftp:// URLs from a
            # certificate an untrusted server sent us.
            if url.lower().startswith(("http://", "https://")):
                return url
    return None


def _fetch(url: str, request_der: bytes, timeout: float) -> bytes:
    req = urllib.request.Request(
        url,
        data=request_der,
        headers={
            "Content-Type": "application/ocsp-request",
            "Accept": "application/ocsp-response",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body: bytes = resp.read(MAX_RESPONSE + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _Unavailable(f"responder {url} unreachable ({describe_error(exc)})") from exc
    if len(body) > MAX_RESPONSE:
        raise _Unavailable(f"responder {url} sent an oversized response")
    return body


def _verify_signature(key: object, resp: ocsp.OCSPResponse) -> None:
    algorithm = resp.signature_hash_algorithm
    data, sig = resp.tbs_response_bytes, resp.signature
    if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
        key.verify(sig, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
        key.verify(sig, data, ec.ECDSA(algorithm))
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(sig, data)
    else:
        raise InvalidSignature("unsupported OCSP signature key")


def _responder_matches(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if resp.responder_name is not None:
        return resp.responder_name == cert.subject
    key_hash = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return resp.responder_key_hash == key_hash


def _check_signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate) -> None:
    """The issuer itself, or a delegated responder it certified (RFC 6960 4.2.2.2)."""
    now = dt.datetime.now(dt.UTC)
    for signer in [issuer, *resp.certificates]:
        if not _responder_matches(resp, signer):
            continue
        if signer is not issuer:
            try:
                signer.verify_directly_issued_by(issuer)
                eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
                continue
            if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
                continue
            if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
                continue
        try:
            _verify_signature(signer.public_key(), resp)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return
    raise _Unavailable("OCSP response not signed by the issuer or its responder")


def _single(
    resp: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse:
    for single in resp.responses:
        digest = hashes.Hash(single.hash_algorithm)
        digest.update(issuer.subject.public_bytes())
        if (
            single.serial_number == cert.serial_number
            and single.issuer_name_hash == digest.finalize()
        ):
            return single
    raise _Unavailable("OCSP response does not cover this certificate")


def _query(cert: x509.Certificate, issuer: x509.Certificate, timeout: float) -> VerificationResult:
    url = responder_url(cert)
    if url is None:
        raise _Unavailable("no OCSP responder URL in certificate")
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    body = _fetch(url, request.public_bytes(Encoding.DER), timeout)
    try:
        resp = ocsp.load_der_ocsp_response(body)
    except ValueError as exc:
        raise _Unavailable(f"malformed OCSP response from {url}") from exc
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _Unavailable(f"OCSP responder answered {resp.response_status.name}")
    _check_signer(resp, issuer)
    single = _single(resp, cert, issuer)
    now = dt.datetime.now(dt.UTC)
    if single.this_update_utc > now + CLOCK_SKEW or (
        single.next_update_utc is not None and single.next_update_utc < now - CLOCK_SKEW
    ):
        raise _Unavailable("stale OCSP response")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        why = single.revocation_reason
        return VerificationResult(
            "failed", "certificate revoked (OCSP" + (f", {why.name})" if why else ")")
        )
    if status == ocsp.OCSPCertStatus.UNKNOWN:
        raise _Unavailable("OCSP responder does not know the certificate")
    return VerificationResult("ok", "OCSP good")


def check_ocsp(
    cert_der: bytes,
    issuer_der: bytes | None,
    allow_unavailable: bool,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> VerificationResult:
    """Revocation status of ``cert_der``; blocks for at most about ``timeout``."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        if issuer_der is None:
            raise _Unavailable("issuer certificate not available")
        issuer = x509.load_der_x509_certificate(issuer_der)
        return _query(cert, issuer, timeout)
    except (_Unavailable, ValueError) as exc:
        reason = f"OCSP unavailable: {describe_error(exc)}"
        return VerificationResult("ok" if allow_unavailable else "failed", reason)


async def check_ocsp_async(
    cert_der: bytes,
    issuer_der: bytes | None,
    allow_unavailable: bool,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> VerificationResult:
    """:func:`check_ocsp` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(
        check_ocsp, cert_der, issuer_der, allow_unavailable, timeout=timeout
    )
