"""Profile -> OpenSSL protocol range, cipher string and options.

Shared by both legs so the client leg and the upstream leg speak the same
dialect for the same profile.
"""

from __future__ import annotations

import ssl
import warnings

from smtpgate.tls.profile import TLSProfileLike, check_profile

# Forward-secret (ephemeral key exchange) suites, AEAD first, CBC after for
# TLS 1.0/1.1 peers that know nothing else.
FORWARD_SECRET = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:DHE+AES"
# Static RSA key exchange: the server's RSA key decrypts the premaster
# secret, so a later key compromise exposes recorded sessions.
RSA_KEY_EXCHANGE = "kRSA+AESGCM:kRSA+AES"
# Never: unauthenticated, unencrypted, broken or exotic primitives.
EXCLUDED = "!aNULL:!eNULL:!EXPORT:!MD5:!RC4:!3DES:!DES:!DSS:!PSK:!SRP:!AESCCM:!ARIA:!CAMELLIA"

_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def cipher_string(profile: TLSProfileLike) -> str:
    """The OpenSSL cipher string (TLS <= 1.2 suites) for a profile."""
    if profile.pfs == "required":
        suites = FORWARD_SECRET
    elif profile.pfs == "none":
        suites = RSA_KEY_EXCHANGE
    else:
        suites = f"{FORWARD_SECRET}:{RSA_KEY_EXCHANGE}"
    cipher = f"{suites}:{EXCLUDED}"
    if profile.min_version in ("1.0", "1.1"):
        # OpenSSL 3 forbids the MD5-SHA1 handshake signatures of TLS 1.0/1.1
        # from security level 1 up, so old versions only work at level 0.
        cipher += ":@SECLEVEL=0"
    return cipher


def apply_profile(ctx: ssl.SSLContext, profile: TLSProfileLike) -> None:
    """Set protocol range, ciphers and hardening options on ``ctx``."""
    check_profile(profile)
    with warnings.catch_warnings():
        # Python deprecates TLSv1/TLSv1_1; a profile asking for them is an
        # explicit administrator decision, not a programming error.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = _VERSIONS[profile.min_version]
    # TLS 1.3 has no non-forward-secret suites, so "none" caps at 1.2;
    # otherwise leave the maximum open (MAXIMUM_SUPPORTED).
    ctx.maximum_version = (
        ssl.TLSVersion.TLSv1_2 if profile.pfs == "none" else ssl.TLSVersion.MAXIMUM_SUPPORTED
    )
    ctx.set_ciphers(cipher_string(profile))
    # CRIME-style attacks; renegotiation is a DoS vector and an old injection
    # bug, and SMTP never needs it.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
