"""Which certificate the client leg presents (SPEC.md sections 3 and 4)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from smtpgate.tls import CertificateStore, TLSContextCache
from tests.tls.tls_testkit import client_context, handshake, tls_profile

PROFILE = tls_profile(name="sni")


def _names(der: bytes | None) -> list[str]:
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def test_sni_selects_configured_certificate(
    cache: TLSContextCache, store: CertificateStore, sni_ca: object
) -> None:
    server = cache.client_leg_context(PROFILE, store, outgoing=False)
    peer = client_context(verify=False)
    assert "mx2.example.test" in _names(handshake(server, peer, "mx2.example.test").peer_der)
    assert "mx2.example.test" in _names(handshake(server, peer, "MX2.Example.Test").peer_der)
    wild = handshake(server, peer, "a.wild.example.test").peer_der
    assert "*.wild.example.test" in _names(wild)


def test_unknown_or_missing_sni_gets_default_certificate(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    server = cache.client_leg_context(PROFILE, store, outgoing=False)
    for name in ("other.example.test", "a.b.wild.example.test", None):
        names = _names(handshake(server, client_context(verify=False), name).peer_der)
        assert names[0] == "mx.example.test", name
    # The default one verifies against the proxy CA for its own name.
    assert handshake(server, client_context(proxy_ca_file), "mx.example.test").ok


def test_outgoing_leaf_is_for_upstream_host_and_chains_to_proxy_ca(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    server = cache.client_leg_context_for_upstream(PROFILE, store, "mail.upstream.test")
    # check_hostname + CA verification in the client is the proof.
    outcome = handshake(server, client_context(proxy_ca_file), "mail.upstream.test")
    assert outcome.ok, outcome
    assert _names(outcome.peer_der) == ["mail.upstream.test"]
    # Whatever SNI the client sends, the cert describes the real upstream.
    other = handshake(server, client_context(verify=False), "something.else.test")
    assert _names(other.peer_der) == ["mail.upstream.test"]


def test_outgoing_leaf_for_ip_upstream_has_ip_san(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    server = cache.client_leg_context_for_upstream(PROFILE, store, "192.0.2.25")
    outcome = handshake(server, client_context(proxy_ca_file), "192.0.2.25")
    assert outcome.ok, outcome
    cert = x509.load_der_x509_certificate(outcome.peer_der or b"")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.25")]
    assert san.get_values_for_type(x509.DNSName) == []


def test_outgoing_without_known_upstream_issues_for_sni(
    cache: TLSContextCache, store: CertificateStore, proxy_ca_file: Path
) -> None:
    server = cache.client_leg_context(PROFILE, store, outgoing=True)
    outcome = handshake(server, client_context(proxy_ca_file), "relay.partner.test")
    assert outcome.ok, outcome
    assert _names(outcome.peer_der) == ["relay.partner.test"]
    # A configured SNI certificate still wins.
    assert "mx2.example.test" in _names(
        handshake(server, client_context(verify=False), "mx2.example.test").peer_der
    )
    # No SNI: the proxy server certificate.
    assert _names(handshake(server, client_context(verify=False)).peer_der)[0] == (
        "mx.example.test"
    )
