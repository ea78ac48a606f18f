"""``openssl s_client -starttls smtp`` against smtpgate's client leg.

Proves the TLS profile is enforced on the wire (SPEC.md section 3): a profile
with ``min_version = "1.3"`` refuses a TLS 1.2-only client and accepts TLS 1.3;
``pfs = "required"`` refuses a TLS 1.2 client that offers only a
non-forward-secret cipher (``AES128-GCM-SHA256``, RSA key exchange) and accepts
ECDHE. The client-leg certificate is an RSA one from the test CA, so the
refusal cannot be explained by the key type. Also: the certificate is chosen by
SNI, and an implicit-TLS listener speaks TLS from the first byte.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.peers.certs import TestPKI
from tests.peers.openssl import s_client
from tests.peers.relay import Relay

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def _ou(cert: Path) -> str:
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    return str(leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value)


def test_min_version_13_refuses_tls12_client(relay: Relay, pki: TestPKI) -> None:
    _, gate = relay(None, verify=False, profile={"min_version": "1.3"})
    refused = s_client(gate.port(), tls1_2=True)
    assert not refused.ok, refused
    accepted = s_client(gate.port(), tls1_3=True, ca_file=pki.ca_file)
    assert accepted.ok and accepted.version == "TLSv1.3", accepted
    assert accepted.verify_code == 0, accepted  # the configured certificate was presented
    # Without a version switch, the client gets TLS 1.3.
    assert s_client(gate.port()).version == "TLSv1.3"


def test_pfs_required_refuses_rsa_key_exchange_and_accepts_ecdhe(relay: Relay) -> None:
    _, gate = relay(None, verify=False, profile={"pfs": "required"})
    refused = s_client(gate.port(), tls1_2=True, cipher="AES128-GCM-SHA256")
    assert not refused.ok, refused
    accepted = s_client(gate.port(), tls1_2=True, cipher="ECDHE")
    assert accepted.ok and accepted.version == "TLSv1.2", accepted
    assert accepted.cipher is not None and accepted.cipher.startswith("ECDHE-"), accepted


def test_client_leg_certificate_is_chosen_by_sni(relay: Relay, pki: TestPKI) -> None:
    mx2 = pki.issue("mx2.example.test", stem="mx2")
    _, gate = relay(
        None,
        verify=False,
        sni=[{"names": ["mx2.example.test"], "cert": str(mx2.cert), "key": str(mx2.key)}],
    )
    with_sni = s_client(gate.port(), servername="mx2.example.test", ca_file=pki.ca_file)
    assert with_sni.ok and with_sni.verify_code == 0, with_sni
    assert _ou(mx2.cert) in with_sni.output
    default = s_client(gate.port(), servername="unknown.example.test")
    assert default.ok, default
    assert _ou(relay.gate_cert.cert) in default.output
    assert _ou(mx2.cert) not in default.output


def test_implicit_tls_listener(relay: Relay, pki: TestPKI) -> None:
    # tls_compliant_only: a profile without it serves a client that stays silent
    # for 2 s in clear (docs/proxy.md), which the check below would race.
    _, gate = relay(
        None, verify=False, policy={"implicit_tls": True}, profile={"tls_compliant_only": True}
    )
    r = s_client(gate.port(), starttls=False, ca_file=pki.ca_file, wait_for_close=True)
    assert r.ok and r.verify_code == 0, r
    assert "220 mx.example.test" in r.output, r  # the banner came inside TLS
    assert "221 " in r.output, r  # and QUIT was answered inside TLS
    # A cleartext client gets no banner on a TLS-compliant-only implicit-TLS port:
    # the server waits for a ClientHello (or closes), it never speaks SMTP in clear.
    with socket.create_connection(("127.0.0.1", gate.port()), timeout=5) as sock:
        sock.settimeout(2)
        try:
            first = sock.recv(64)
        except TimeoutError:
            first = b""
    assert not first.startswith(b"220"), first
