"""Profile fields -> what a real peer can and cannot negotiate (client leg)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from smtpgate.tls import (
    CertificateStore,
    TLSContextCache,
    TLSProfileError,
)
from tests.tls.tls_testkit import client_context, handshake, tls_profile

V = ssl.TLSVersion
# The test peers use TLS 1.0/1.1 on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")


def _server(cache: TLSContextCache, store: CertificateStore, **fields: object) -> ssl.SSLContext:
    return cache.client_leg_context(tls_profile(**fields), store, outgoing=False)


def test_min_13_refuses_tls12_only_client(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    server = _server(cache, store, min_version="1.3")
    refused = handshake(server, client_context(proxy_ca_file, maximum=V.TLSv1_2), "mx.example.test")
    assert not refused.ok
    accepted = handshake(server, client_context(proxy_ca_file), "mx.example.test")
    assert accepted.ok, accepted
    assert accepted.version == "TLSv1.3"


def test_min_12_accepts_tls12_and_refuses_tls11(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    server = _server(cache, store, min_version="1.2")
    ok = handshake(server, client_context(proxy_ca_file, maximum=V.TLSv1_2), "mx.example.test")
    assert ok.ok and ok.version == "TLSv1.2"
    old = client_context(
        proxy_ca_file, minimum=V.TLSv1, maximum=V.TLSv1_1, ciphers="ALL:@SECLEVEL=0"
    )
    assert not handshake(server, old, "mx.example.test").ok


def test_min_10_really_negotiates_tls10(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    # Without @SECLEVEL=0 OpenSSL 3 refuses TLS 1.0 even when the range allows it.
    server = _server(cache, store, min_version="1.0")
    old = client_context(proxy_ca_file, minimum=V.TLSv1, maximum=V.TLSv1, ciphers="ALL:@SECLEVEL=0")
    outcome = handshake(server, old, "mx.example.test")
    assert outcome.ok, outcome
    assert outcome.version == "TLSv1"
    assert outcome.cipher is not None and outcome.cipher.startswith("ECDHE-")


def test_pfs_required_refuses_static_rsa_and_accepts_ecdhe(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    server = _server(cache, store, pfs="required")
    static = client_context(proxy_ca_file, maximum=V.TLSv1_2, ciphers="AES128-GCM-SHA256")
    assert not handshake(server, static, "mx.example.test").ok
    ecdhe = client_context(proxy_ca_file, maximum=V.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    outcome = handshake(server, ecdhe, "mx.example.test")
    assert outcome.ok and outcome.cipher == "ECDHE-RSA-AES128-GCM-SHA256"


def test_pfs_allowed_prefers_ecdhe_but_accepts_static_rsa(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    server = _server(cache, store, pfs="allowed")
    both = client_context(
        proxy_ca_file, maximum=V.TLSv1_2, ciphers="AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
    )
    outcome = handshake(server, both, "mx.example.test")
    assert outcome.cipher == "ECDHE-RSA-AES128-GCM-SHA256"  # server order wins
    static = client_context(proxy_ca_file, maximum=V.TLSv1_2, ciphers="AES128-GCM-SHA256")
    assert handshake(server, static, "mx.example.test").cipher == "AES128-GCM-SHA256"


def test_pfs_none_negotiates_static_rsa_only(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    server = _server(cache, store, pfs="none")
    offers_both = client_context(
        proxy_ca_file, ciphers="ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384"
    )
    outcome = handshake(server, offers_both, "mx.example.test")
    assert outcome.ok, outcome
    assert (outcome.version, outcome.cipher) == ("TLSv1.2", "AES256-GCM-SHA384")
    ecdhe_only = client_context(proxy_ca_file, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    assert not handshake(server, ecdhe_only, "mx.example.test").ok
    tls13_only = client_context(proxy_ca_file, minimum=V.TLSv1_3)
    assert not handshake(server, tls13_only, "mx.example.test").ok


def test_cipher_lists_match_pfs_mode(cache: TLSContextCache, store: CertificateStore) -> None:
    def kx(pfs: str) -> set[str]:
        ctx = _server(cache, store, pfs=pfs)
        return {c["kea"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"}

    assert kx("required") <= {"kx-ecdhe", "kx-dhe"}
    assert kx("none") == {"kx-rsa"}
    assert {"kx-ecdhe", "kx-rsa"} <= kx("allowed")
    assert _server(cache, store, pfs="none").maximum_version == V.TLSv1_2


def test_pfs_none_with_min_13_is_a_profile_error(
    cache: TLSContextCache, store: CertificateStore
) -> None:
    with pytest.raises(TLSProfileError, match="pfs = 'none'"):
        _server(cache, store, name="Bad", pfs="none", min_version="1.3")


def test_hardening_options_on_every_context(
    cache: TLSContextCache, store: CertificateStore
) -> None:
    profile = tls_profile()
    contexts = [
        cache.client_leg_context(profile, store, outgoing=False),
        cache.client_leg_context(profile, store, outgoing=True),
        cache.client_leg_context_for_upstream(profile, store, "up.example.test"),
        cache.upstream_leg_context(profile, verify=True),
        cache.upstream_leg_context(profile, verify=False),
    ]
    for ctx in contexts:
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_RENEGOTIATION


def test_contexts_are_cached_per_profile_and_cleared(
    cache: TLSContextCache, store: CertificateStore
) -> None:
    profile = tls_profile(name="A")
    first = cache.client_leg_context(profile, store, outgoing=False)
    # An equal profile object (e.g. re-read config) hits the same context.
    assert cache.client_leg_context(tls_profile(name="A"), store, outgoing=False) is first
    assert cache.client_leg_context(profile, store, outgoing=True) is not first
    # Same name, changed field: never the stale context.
    changed = tls_profile(name="A", min_version="1.3")
    assert cache.client_leg_context(changed, store, outgoing=False) is not first
    up = cache.upstream_leg_context(profile, verify=False)
    assert cache.upstream_leg_context(profile, verify=False) is up
    assert cache.upstream_leg_context(profile, verify=True) is not up
    leaf = cache.client_leg_context_for_upstream(profile, store, "Up.Example.Test")
    assert cache.client_leg_context_for_upstream(profile, store, "up.example.test") is leaf
    cache.clear()
    assert cache.client_leg_context(profile, store, outgoing=False) is not first
    assert cache.upstream_leg_context(profile, verify=False) is not up
    assert cache.client_leg_context_for_upstream(profile, store, "up.example.test") is not leaf


def test_outgoing_host_contexts_are_bounded(store: CertificateStore) -> None:
    cache = TLSContextCache(max_upstream_hosts=2)
    profile = tls_profile()
    a = cache.client_leg_context_for_upstream(profile, store, "a.example.test")
    cache.client_leg_context_for_upstream(profile, store, "b.example.test")
    assert cache.client_leg_context_for_upstream(profile, store, "a.example.test") is a
    cache.client_leg_context_for_upstream(profile, store, "c.example.test")  # evicts b
    assert cache.client_leg_context_for_upstream(profile, store, "a.example.test") is a
    assert len(cache._hosts) == 2
