"""CertificateStore: what is generated, with which permissions, and reuse."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from smtpgate.tls import (
    CertificateError,
    CertificateStore,
    TLSContextCache,
    issuing,
)
from tests.tls.tls_testkit import client_context, handshake, tls_profile


def _load(state: Path, hostname: str = "mx.example.test", **kw: object) -> CertificateStore:
    args: dict[str, object] = {
        "server_cert": None,
        "server_key": None,
        "ca_cert": None,
        "ca_key": None,
        "sni": [],
    }
    args.update(kw)
    return CertificateStore.load(state, hostname=hostname, **args)  # type: ignore[arg-type]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _first_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CertificateStore]:
    state = tmp_path_factory.mktemp("gen")
    return state, _load(state)


def test_first_start_generates_ca_server_and_leaf_key_with_0600(
    generated: tuple[Path, CertificateStore],
) -> None:
    state, _ = generated
    tls = state / "tls"
    for key in (
        "ca.key",
        "server.key",
        "server-ecdsa.key",
        "leaves/leaf.key",
        "leaves/ecdsa/leaf.key",
    ):
        assert _mode(tls / key) == 0o600, key
    assert _mode(tls) == 0o700 and _mode(tls / "leaves") == 0o700
    assert _mode(tls / "leaves/ecdsa") == 0o700
    assert not list(tls.rglob(".*.tmp")), "temporary files left behind"


def test_generated_ca_is_a_signing_ca(generated: tuple[Path, CertificateStore]) -> None:
    _, store = generated
    ca = x509.load_pem_x509_certificate(store.ca_pem())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign
    assert ca == store.ca_certificate


def test_generated_server_cert_names_and_chain(generated: tuple[Path, CertificateStore]) -> None:
    _, store = generated
    cert = _first_cert(store.server_cert_path)
    san = _san(cert)
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.test", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    cert.verify_directly_issued_by(store.ca_certificate)


def test_second_start_reuses_everything(generated: tuple[Path, CertificateStore]) -> None:
    state, store = generated
    tls = state / "tls"
    before = {p: p.read_bytes() for p in tls.rglob("*") if p.is_file()}
    again = _load(state)
    assert again.ca_pem() == store.ca_pem()
    assert {p: p.read_bytes() for p in tls.rglob("*") if p.is_file()} == before


def test_hostname_change_renews_server_cert_but_keeps_ca(tmp_path: Path) -> None:
    first = _load(tmp_path, "old.example.test")
    second = _load(tmp_path, "new.example.test")
    assert second.ca_pem() == first.ca_pem()
    assert _san(_first_cert(second.server_cert_path)).get_values_for_type(x509.DNSName)[0] == (
        "new.example.test"
    )


def test_leaf_is_cached_persisted_and_reused_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _load(tmp_path)
    cert_path, key_path = store.leaf_for("Mail.Upstream.Test")
    assert cert_path.parent == tmp_path / "tls" / "leaves" / "ecdsa"
    assert _mode(key_path) == 0o600
    leaf = _first_cert(cert_path)
    assert _san(leaf).get_values_for_type(x509.DNSName) == ["mail.upstream.test"]
    leaf.verify_directly_issued_by(store.ca_certificate)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=89) < lifetime < dt.timedelta(days=92)

    # Second call and a restart: no new certificate is made.
    def no_issuing(*a: object, **k: object) -> x509.Certificate:
        raise AssertionError("leaf re-issued")

    monkeypatch.setattr(issuing, "make_leaf", no_issuing)
    assert store.leaf_for("mail.upstream.test") == (cert_path, key_path)
    restarted = _load(tmp_path)
    assert restarted.leaf_for("mail.upstream.test") == (cert_path, key_path)
    assert _first_cert(cert_path).serial_number == leaf.serial_number


def test_all_leaves_share_one_key(generated: tuple[Path, CertificateStore]) -> None:
    _, store = generated
    a = store.leaf_for("a.example.test")
    b = store.leaf_for("b.example.test")
    assert a[1] == b[1] and a[0] != b[0]


def test_expired_leaf_is_replaced(tmp_path: Path) -> None:
    store = _load(tmp_path)
    path, key_path = store.leaf_for("old.example.test")
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    ca_key = serialization.load_pem_private_key((tmp_path / "tls/ca.key").read_bytes(), None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    expired = issuing.make_leaf(
        ["old.example.test"],
        key.public_key(),  # type: ignore[arg-type]
        store.ca_certificate,
        ca_key,
        days=2,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10),
    )
    path.write_bytes(issuing.cert_pem(expired, store.ca_certificate))
    fresh_path, _ = _load(tmp_path).leaf_for("old.example.test")
    fresh = _first_cert(fresh_path)
    assert fresh.serial_number != expired.serial_number
    assert fresh.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=80)


def test_leaf_names_idn_ip_and_invalid(generated: tuple[Path, CertificateStore]) -> None:
    _, store = generated
    idn = _first_cert(store.leaf_for("bücher.example")[0])
    assert _san(idn).get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example"]
    v6 = _first_cert(store.leaf_for("[2001:db8::25]")[0])
    assert _san(v6).get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("2001:db8::25")]
    for bad in ("", "a..b", "under_score.test", "../../etc"):
        with pytest.raises(CertificateError):
            store.leaf_for(bad)


@pytest.fixture(scope="module")
def user_ca() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.RSA)


def _write(cert: trustme.LeafCert, d: Path, stem: str) -> tuple[Path, Path]:
    cert.cert_chain_pems[0].write_to_path(str(d / f"{stem}.pem"))
    cert.private_key_pem.write_to_path(str(d / f"{stem}.key"))
    return d / f"{stem}.pem", d / f"{stem}.key"


def test_user_supplied_server_cert_is_presented(tmp_path: Path, user_ca: trustme.CA) -> None:
    cert, key = _write(user_ca.issue_cert("smtp.corp.test"), tmp_path, "srv")
    store = _load(tmp_path / "state", server_cert=cert, server_key=key)
    assert store.server_cert_path == cert and store.server_key_path == key
    assert not (tmp_path / "state/tls/server.pem").exists()
    ca_file = tmp_path / "user-ca.pem"
    user_ca.cert_pem.write_to_path(str(ca_file))
    server = TLSContextCache().client_leg_context(tls_profile(), store, outgoing=False)
    assert handshake(server, client_context(ca_file), "smtp.corp.test").ok


def test_user_supplied_ca_issues_the_leaves(tmp_path: Path, user_ca: trustme.CA) -> None:
    ca_cert, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    user_ca.cert_pem.write_to_path(str(ca_cert))
    user_ca.private_key_pem.write_to_path(str(ca_key))
    store = _load(tmp_path / "state", ca_cert=ca_cert, ca_key=ca_key)
    assert not (tmp_path / "state/tls/ca.pem").exists()
    assert store.ca_pem() == ca_cert.read_bytes()
    server = TLSContextCache().client_leg_context_for_upstream(
        tls_profile(), store, "up.example.test"
    )
    assert handshake(server, client_context(ca_cert), "up.example.test").ok


def test_mismatched_cert_and_key_rejected_naming_files(tmp_path: Path, user_ca: trustme.CA) -> None:
    cert, _ = _write(user_ca.issue_cert("a.test"), tmp_path, "a")
    _, other_key = _write(user_ca.issue_cert("b.test"), tmp_path, "b")
    with pytest.raises(CertificateError, match="does not match") as info:
        _load(tmp_path / "state", server_cert=cert, server_key=other_key)
    assert str(other_key) in str(info.value) and str(cert) in str(info.value)
    with pytest.raises(CertificateError, match="does not match"):
        _load(tmp_path / "state", sni=[(["a.test"], cert, other_key, None, None)])


def test_half_a_pair_and_bad_files_are_errors(tmp_path: Path, user_ca: trustme.CA) -> None:
    cert, key = _write(user_ca.issue_cert("a.test"), tmp_path, "a")
    with pytest.raises(CertificateError, match="together"):
        _load(tmp_path / "s1", server_cert=cert)
    with pytest.raises(CertificateError, match="not a CA") as info:
        _load(tmp_path / "s2", ca_cert=cert, ca_key=key)
    assert str(cert) in str(info.value)
    missing = tmp_path / "missing.pem"
    with pytest.raises(CertificateError, match=r"missing\.pem"):
        _load(tmp_path / "s3", server_cert=missing, server_key=key)
    state = tmp_path / "s4"
    _load(state)
    (state / "tls/ca.key").write_text("garbage")
    with pytest.raises(CertificateError, match=r"ca\.key"):
        _load(state)


def _key_of(path: Path) -> object:
    return serialization.load_pem_private_key(path.read_bytes(), None)


def test_generated_certificates_are_ecdsa_p256_first_rsa_beside(
    generated: tuple[Path, CertificateStore],
) -> None:
    state, store = generated
    tls = state / "tls"
    assert store.server_pairs == (
        (tls / "server-ecdsa.pem", tls / "server-ecdsa.key"),
        (tls / "server.pem", tls / "server.key"),
    )
    assert (store.server_cert_path, store.server_key_path) == store.server_pairs[0]
    leaves = store.leaf_pairs_for("up.example.test")
    assert leaves[0] == store.leaf_for("up.example.test")
    for (cert_path, key_path), kind in zip(
        (*store.server_pairs, *leaves), ("ec", "rsa", "ec", "rsa"), strict=True
    ):
        key = _key_of(key_path)
        if kind == "ec":
            assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        else:
            assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
        cert = _first_cert(cert_path)
        cert.verify_directly_issued_by(store.ca_certificate)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        # keyEncipherment is RSA's (static RSA key exchange); RFC 5480 forbids it for EC.
        assert usage.digital_signature and usage.key_encipherment == (kind == "rsa")
    # The CA stays RSA: an RSA-only client must be able to verify the RSA leaf's chain.
    assert isinstance(_key_of(tls / "ca.key"), rsa.RSAPrivateKey)


def test_state_dir_of_an_earlier_version_keeps_its_rsa_keys(tmp_path: Path) -> None:
    """Earlier versions wrote only the RSA files (same names): they stay as they
    are, presented beside the ECDSA certificate the first start adds."""
    store = _load(tmp_path)
    store.leaf_pairs_for("up.example.test")
    tls = tmp_path / "tls"
    for added in ("server-ecdsa.pem", "server-ecdsa.key"):
        (tls / added).unlink()
    for path in (tls / "leaves/ecdsa").iterdir():
        path.unlink()
    (tls / "leaves/ecdsa").rmdir()
    earlier = {p: p.read_bytes() for p in tls.rglob("*") if p.is_file()}

    upgraded = _load(tmp_path)
    assert {p: p.read_bytes() for p in earlier} == earlier
    assert upgraded.server_pairs[1] == (tls / "server.pem", tls / "server.key")
    assert isinstance(_key_of(upgraded.server_key_path), ec.EllipticCurvePrivateKey)
    rsa_leaf = tls / "leaves/up.example.test.pem"
    assert upgraded.leaf_pairs_for("up.example.test")[1] == (rsa_leaf, tls / "leaves/leaf.key")
    assert rsa_leaf.read_bytes() == earlier[rsa_leaf]


def _tls12_client(ca: Path, cipher: str) -> ssl.SSLContext:
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    return ctx


def test_configured_ecdsa_server_cert_with_an_rsa_pair_beside_it(tmp_path: Path) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    ecdsa = _write(ca.issue_cert("smtp.corp.test", key_type=trustme.KeyType.ECDSA), tmp_path, "e")
    rsa_pair = _write(ca.issue_cert("smtp.corp.test", key_type=trustme.KeyType.RSA), tmp_path, "r")
    store = _load(
        tmp_path / "state",
        server_cert=ecdsa[0],
        server_key=ecdsa[1],
        server_rsa_cert=rsa_pair[0],
        server_rsa_key=rsa_pair[1],
    )
    assert store.server_pairs == (ecdsa, rsa_pair)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = TLSContextCache().client_leg_context(tls_profile(), store, outgoing=False)
    default = handshake(server, client_context(ca_file), "smtp.corp.test")
    rsa_only = handshake(
        server, _tls12_client(ca_file, "ECDHE-RSA-AES128-GCM-SHA256"), "smtp.corp.test"
    )
    assert default.ok and rsa_only.ok, (default, rsa_only)
    assert default.peer_der == _first_cert(ecdsa[0]).public_bytes(serialization.Encoding.DER)
    assert rsa_only.peer_der == _first_cert(rsa_pair[0]).public_bytes(serialization.Encoding.DER)


def test_rsa_pair_must_be_rsa_beside_a_certificate_of_another_type(tmp_path: Path) -> None:
    ca = trustme.CA()
    ecdsa = _write(ca.issue_cert("a.test", key_type=trustme.KeyType.ECDSA), tmp_path, "e")
    rsa_a = _write(ca.issue_cert("a.test", key_type=trustme.KeyType.RSA), tmp_path, "r1")
    rsa_b = _write(ca.issue_cert("a.test", key_type=trustme.KeyType.RSA), tmp_path, "r2")
    state = tmp_path / "state"
    with pytest.raises(CertificateError, match="not an RSA certificate") as info:
        _load(
            state,
            server_cert=rsa_a[0],
            server_key=rsa_a[1],
            server_rsa_cert=ecdsa[0],
            server_rsa_key=ecdsa[1],
        )
    assert info.value.path == ecdsa[0]
    with pytest.raises(CertificateError, match="give an ECDSA certificate here") as info:
        _load(
            state,
            server_cert=rsa_a[0],
            server_key=rsa_a[1],
            server_rsa_cert=rsa_b[0],
            server_rsa_key=rsa_b[1],
        )
    assert info.value.path == rsa_a[0]
    with pytest.raises(CertificateError, match="needs the server certificate") as info:
        _load(state, server_rsa_cert=rsa_a[0], server_rsa_key=rsa_a[1])
    with pytest.raises(CertificateError, match="together"):
        _load(state, server_cert=ecdsa[0], server_key=ecdsa[1], server_rsa_cert=rsa_a[0])
    with pytest.raises(CertificateError, match="not an RSA certificate"):
        _load(state, sni=[(["a.test"], *rsa_a, *ecdsa)])
    sni = _load(state, sni=[(["a.test"], *ecdsa, *rsa_a)]).sni_certificates[0]
    assert sni.pairs == (ecdsa, rsa_a)
