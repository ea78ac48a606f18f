"""Upstream leg: verified handshakes, and what an unverified one *would* say."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import ec

from smtpgate.config.schema import TLSProfile
from smtpgate.tls import (
    CertificateError,
    TLSContextCache,
    TrustAnchors,
    UpstreamVerifier,
    describe_tls,
    issuing,
    verify_peer_certificate,
)
from tests.tls.tls_testkit import handshake, server_context, tls_connection, tls_profile


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(ca_file, cert, key) of an upstream server 'mx.upstream.test'."""
    d = tmp_path_factory.mktemp("upstream")
    ca = trustme.CA(key_type=trustme.KeyType.RSA)  # RSA: static-RSA suites possible
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    leaf = ca.issue_cert("mx.upstream.test", key_type=trustme.KeyType.RSA)
    leaf.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(d / "key.pem"))
    return d / "ca.pem", d / "cert.pem", d / "key.pem"


def _profile(ca_file: Path | None) -> TLSProfile:
    return tls_profile(name="up", ca_file=ca_file)


def _opportunistic(
    cache: TLSContextCache,
    upstream: tuple[Path, Path, Path],
    profile: TLSProfile,
    host: str,
) -> str:
    _, cert, key = upstream
    client = cache.upstream_leg_context(profile, verify=False)
    with tls_connection(server_context(cert, key), client, host) as (tls, _):
        return str(verify_peer_certificate(tls, profile, host, TrustAnchors()))


def test_unverified_handshake_reports_ok(
    cache: TLSContextCache, upstream: tuple[Path, Path, Path]
) -> None:
    result = _opportunistic(cache, upstream, _profile(upstream[0]), "mx.upstream.test")
    assert result == "ok"


def test_unverified_handshake_reports_hostname_mismatch(
    cache: TLSContextCache, upstream: tuple[Path, Path, Path]
) -> None:
    result = _opportunistic(cache, upstream, _profile(upstream[0]), "other.upstream.test")
    assert result == "failed: hostname mismatch"


def test_unverified_handshake_reports_unknown_ca(
    cache: TLSContextCache, upstream: tuple[Path, Path, Path]
) -> None:
    # Without ca_file, only the system anchors: the test CA is unknown, yet
    # the opportunistic handshake itself succeeded.
    assert _opportunistic(cache, upstream, _profile(None), "mx.upstream.test") == (
        "failed: unknown CA"
    )


def test_unverified_handshake_reports_expired(cache: TLSContextCache, tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issuing.make_ca("test", ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    old = issuing.make_leaf(
        ["old.upstream.test"],
        key.public_key(),
        ca,
        ca_key,
        days=1,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=5),
    )
    (tmp_path / "ca.pem").write_bytes(issuing.cert_pem(ca))
    (tmp_path / "c.pem").write_bytes(issuing.cert_pem(old))
    (tmp_path / "k.pem").write_bytes(issuing.key_pem(key))
    profile = _profile(tmp_path / "ca.pem")
    client = cache.upstream_leg_context(profile, verify=False)
    server = server_context(tmp_path / "c.pem", tmp_path / "k.pem")
    with tls_connection(server, client, "old.upstream.test") as (tls, _):
        result = verify_peer_certificate(tls, profile, "old.upstream.test", TrustAnchors())
    assert (result.status, result.reason) == ("failed", "certificate expired or not yet valid")


def test_verified_handshake_with_ca_file(
    cache: TLSContextCache, upstream: tuple[Path, Path, Path]
) -> None:
    ca_file, cert, key = upstream
    profile = _profile(ca_file)
    client = cache.upstream_leg_context(profile, verify=True)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    with tls_connection(server_context(cert, key), client, "mx.upstream.test") as (tls, _):
        assert (
            str(verify_peer_certificate(tls, profile, "mx.upstream.test", TrustAnchors())) == "ok"
        )
    bad_name = handshake(server_context(cert, key), client, "other.upstream.test")
    assert isinstance(bad_name.client_error, ssl.SSLCertVerificationError)
    unknown = cache.upstream_leg_context(_profile(None), verify=True)
    unknown_ca = handshake(server_context(cert, key), unknown, "mx.upstream.test")
    assert isinstance(unknown_ca.client_error, ssl.SSLCertVerificationError)


def test_upstream_sends_sni(cache: TLSContextCache, upstream: tuple[Path, Path, Path]) -> None:
    _, cert, key = upstream
    seen: list[str | None] = []
    server = server_context(cert, key)
    server.sni_callback = lambda _obj, name, _ctx: seen.append(name)
    client = cache.upstream_leg_context(_profile(None), verify=False)
    assert handshake(server, client, "mx.upstream.test").ok
    assert seen == ["mx.upstream.test"]


def test_upstream_profile_limits_apply(
    cache: TLSContextCache, upstream: tuple[Path, Path, Path]
) -> None:
    _, cert, key = upstream
    strict = cache.upstream_leg_context(tls_profile(name="s", min_version="1.3"), verify=False)
    old_server = server_context(cert, key, maximum=ssl.TLSVersion.TLSv1_2)
    assert not handshake(old_server, strict, "mx.upstream.test").ok
    pfs = cache.upstream_leg_context(tls_profile(name="p", pfs="required"), verify=False)
    static_only = server_context(cert, key, maximum=ssl.TLSVersion.TLSv1_2)
    static_only.set_ciphers("kRSA")
    assert not handshake(static_only, pfs, "mx.upstream.test").ok
    allowed = cache.upstream_leg_context(tls_profile(name="a"), verify=False)
    assert handshake(static_only, allowed, "mx.upstream.test").cipher == "AES256-GCM-SHA384"


def test_missing_ca_file_is_a_certificate_error(cache: TLSContextCache, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"nope\.pem"):
        cache.upstream_leg_context(_profile(tmp_path / "nope.pem"), verify=True)


def test_describe_tls(cache: TLSContextCache, upstream: tuple[Path, Path, Path]) -> None:
    _, cert, key = upstream
    assert describe_tls(None) == ("none", "none")
    client = cache.upstream_leg_context(_profile(None), verify=False)
    with tls_connection(server_context(cert, key), client, "mx.upstream.test") as (tls, _):
        version, cipher = describe_tls(tls)
    assert version == "TLSv1.3" and cipher.startswith("TLS_")


def test_trust_anchors_are_read_per_instance(
    cache: TLSContextCache, upstream: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A reload builds new anchors: a replaced ca_file counts from then on;
    the anchors of the configuration still running keep what it loaded."""
    _, cert, key = upstream
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(upstream[0].read_bytes())
    profile = _profile(ca_file)
    loaded = TrustAnchors()
    client = cache.upstream_leg_context(profile, verify=False)
    with tls_connection(server_context(cert, key), client, "mx.upstream.test") as (tls, _):
        assert str(verify_peer_certificate(tls, profile, "mx.upstream.test", loaded)) == "ok"
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        assert str(verify_peer_certificate(tls, profile, "mx.upstream.test", loaded)) == "ok"
        reloaded = TrustAnchors()
        result = verify_peer_certificate(tls, profile, "mx.upstream.test", reloaded)
    assert str(result) == "failed: unknown CA"


def test_verifiers_keep_their_own_verdicts(
    cache: TLSContextCache, upstream: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """One certificate, two policies whose ca_file differ: each remembers its own verdict."""
    ca_file, cert, key = upstream
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    trust = TrustAnchors()
    trusting = UpstreamVerifier(_profile(ca_file), trust)
    other = UpstreamVerifier(tls_profile(name="other", ca_file=other_ca), trust)
    client = cache.upstream_leg_context(_profile(None), verify=False)
    for _ in range(2):  # the second round answers from what each remembered
        with tls_connection(server_context(cert, key), client, "mx.upstream.test") as (tls, _):
            assert str(trusting.check(tls, "mx.upstream.test")) == "ok"
            assert str(other.check(tls, "mx.upstream.test")) == "failed: unknown CA"
