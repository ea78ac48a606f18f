"""SPEC 3: TLS profiles on both legs, SNI, and the outgoing action's on-the-fly certificate."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.proxy.helpers import (
    UPSTREAM_TLS_UNAVAILABLE,
    AiosmtpdUpstream,
    GatewayHarness,
    RawClient,
    cert_names,
    insecure_client_context,
    rule,
    server_context,
    smtplib_send,
)

Make = Callable[..., AiosmtpdUpstream]
RSA_KEY_EXCHANGE_ONLY = "AES256-GCM-SHA384:AES128-GCM-SHA256"
ECDHE_ONLY = "ECDHE-RSA-AES128-GCM-SHA256"


def client_handshake(gate: GatewayHarness, ctx: ssl.SSLContext, sni: str | None = None) -> Any:
    """EHLO + STARTTLS with ``ctx``; returns (version, cipher, peer cert DER) or the SSLError."""
    with RawClient(gate.port) as client:
        client.ehlo()
        try:
            tls = client.starttls(ctx, server_hostname=sni)
        except (ssl.SSLError, ConnectionError) as exc:
            return exc
        result = (tls.version(), tls.cipher()[0], tls.getpeercert(binary_form=True))
        assert client.ehlo().code == 250  # the session goes on inside TLS
        return result


# --- client leg -----------------------------------------------------------------------------


@pytest.mark.parametrize("min_version", ["1.2", "1.3"])
def test_client_leg_min_version(make_gate: Any, make_upstream: Make, min_version: str) -> None:
    gate = make_gate(make_upstream().port, profile={"min_version": min_version})
    tls12_client = insecure_client_context(maximum=ssl.TLSVersion.TLSv1_2)
    result = client_handshake(gate, tls12_client)
    if min_version == "1.3":
        assert isinstance(result, ssl.SSLError), result
        failed = gate.wait_record("starttls_failed")[0]
        assert failed["reason"]
    else:
        assert result[0] == "TLSv1.2"
    # A TLS 1.3 client is fine either way.
    assert client_handshake(gate, insecure_client_context())[0] == "TLSv1.3"


@pytest.mark.parametrize("pfs", ["allowed", "required"])
def test_client_leg_pfs_required_refuses_rsa_key_exchange(
    make_gate: Any, make_upstream: Make, pfs: str
) -> None:
    gate = make_gate(make_upstream().port, profile={"pfs": pfs})
    non_pfs = insecure_client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=RSA_KEY_EXCHANGE_ONLY)
    result = client_handshake(gate, non_pfs)
    if pfs == "required":
        assert isinstance(result, ssl.SSLError), result
    else:
        assert result[:2] in {("TLSv1.2", "AES256-GCM-SHA384"), ("TLSv1.2", "AES128-GCM-SHA256")}
    pfs_client = insecure_client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=ECDHE_ONLY)
    assert client_handshake(gate, pfs_client)[:2] == ("TLSv1.2", ECDHE_ONLY)


def test_client_leg_cipher_is_logged(make_gate: Any, make_upstream: Make) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    client = insecure_client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=ECDHE_ONLY)
    with RawClient(gate.port) as raw:
        raw.ehlo()
        raw.starttls(client)
        raw.ehlo()
        assert raw.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert raw.cmd("RCPT TO:<b@rcpt.example>").code == 250
        assert raw.cmd("DATA").code == 354
        assert raw.cmd(b"Subject: s\r\n\r\nx\r\n.").code == 250
    record = gate.transaction()
    assert (record["client_tls"], record["client_cipher"]) == ("TLSv1.2", ECDHE_ONLY)


# --- upstream leg ---------------------------------------------------------------------------


@pytest.mark.parametrize("min_version", ["1.2", "1.3"])
def test_upstream_leg_honours_min_version(
    make_gate: Any, make_upstream: Make, upstream_cert: Any, min_version: str
) -> None:
    upstream = make_upstream(
        starttls=server_context(upstream_cert, max_version=ssl.TLSVersion.TLSv1_2)
    )
    gate = make_gate(
        upstream.port,
        profile={"min_version": min_version},
        rules=[rule(recipient_encryption="required")],
    )
    refused = (
        smtplib_send(gate.port, "a@sender.example", ["b@rcpt.example"], starttls=False)
        if (min_version == "1.2")
        else None
    )
    if min_version == "1.2":
        assert refused == {}
        record = gate.transaction()
        assert (record["upstream_tls"], record["upstream_verify"]) == ("TLSv1.2", "ok")
        assert upstream.messages[0].tls_version == "TLSv1.2"
        return
    with RawClient(gate.port) as client:
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        answer = client.cmd("RCPT TO:<b@rcpt.example>")
    assert str(answer) == UPSTREAM_TLS_UNAVAILABLE
    assert "handshake" in gate.wait_record("rcpt_rejected")[0]["reason"]
    assert upstream.commands == [] and upstream.messages == []


@pytest.mark.parametrize(
    ("mode", "implicit"),
    [("required", False), ("preferred", False), ("required", True)],
    ids=["starttls-verified", "starttls-opportunistic", "implicit-verified"],
)
def test_upstream_leg_sends_sni_with_the_upstream_host_name(
    make_gate: Any, make_upstream: Make, upstream_cert: Any, mode: str, implicit: bool
) -> None:
    seen: list[str | None] = []
    ctx = server_context(upstream_cert, sni_seen=seen)
    upstream = make_upstream(implicit=ctx) if implicit else make_upstream(starttls=ctx)
    seen.clear()  # aiosmtpd's own readiness probe of an implicit-TLS server
    gate = make_gate(
        upstream.port,
        upstream_host="localhost",
        policy={"upstream_implicit_tls": implicit},
        rules=[rule(recipient_encryption=mode)],
    )
    assert smtplib_send(gate.port, "a@sender.example", ["b@rcpt.example"], starttls=False) == {}
    assert seen and all(name == "localhost" for name in seen), seen
    record = gate.transaction()
    assert (record["upstream_tls"], record["upstream_verify"]) == ("TLSv1.3", "ok")


# --- which certificate the client leg presents ----------------------------------------------------


@pytest.fixture(scope="module")
def sni_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ca = trustme.CA(organization_name="smtpgate-tests SNI CA")
    leaf = ca.issue_cert("mx2.example.test")
    folder = tmp_path_factory.mktemp("sni")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "mx2.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "mx2.key"))
    return folder / "mx2.pem", folder / "mx2.key"


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
def test_client_leg_certificate_is_chosen_by_sni(
    make_gate: Any, make_upstream: Make, sni_files: tuple[Path, Path], implicit: bool
) -> None:
    cert, key = sni_files
    gate = make_gate(
        make_upstream().port,
        sni=[{"names": ["mx2.example.test"], "cert": str(cert), "key": str(key)}],
        policy={"implicit_tls": implicit},
    )

    def presented(sni: str | None) -> list[str]:
        ctx = insecure_client_context()
        if implicit:
            with RawClient(gate.port, implicit_tls=_with_sni(ctx, sni)) as client:
                assert client.greeting.code == 220
                der = client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        else:
            result = client_handshake(gate, ctx, sni)
            der = result[2]
        return cert_names(der)

    assert presented("mx2.example.test") == ["mx2.example.test"]
    default = presented("unknown.example.test")
    assert "mx.example.test" in default and "mx2.example.test" not in default
    assert presented(None) == default


def _with_sni(ctx: ssl.SSLContext, sni: str | None) -> ssl.SSLContext:
    """RawClient wraps without a server_hostname; bind one via a wrapper context."""

    class SNIContext(ssl.SSLContext):
        def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
            kwargs.setdefault("server_hostname", sni)
            return super().wrap_socket(sock, *args, **kwargs)

    wrapped = SNIContext(ssl.PROTOCOL_TLS_CLIENT)
    wrapped.check_hostname = ctx.check_hostname
    wrapped.verify_mode = ctx.verify_mode
    return wrapped


def test_outgoing_action_presents_a_proxy_ca_certificate_for_the_upstream_host(
    make_gate: Any, make_upstream: Make
) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port, upstream_host="localhost", direction="outgoing")
    ca_pem = gate.state_dir / "tls" / "ca.pem"
    assert ca_pem.exists()
    # A client that trusts only the proxy CA and checks the upstream's name succeeds.
    strict = ssl.create_default_context(cafile=str(ca_pem))
    version, _, der = client_handshake(gate, strict, sni="localhost")
    assert version == "TLSv1.3"
    assert cert_names(der) == ["localhost"]  # not the proxy's own name
    # Without SNI the client still gets the upstream's leaf, not the server certificate.
    assert cert_names(client_handshake(gate, insecure_client_context())[2]) == ["localhost"]
    assert smtplib_send(gate.port, "a@sender.example", ["b@rcpt.example"], starttls=True) == {}
    assert len(upstream.messages) == 1


def test_incoming_action_presents_the_proxy_server_certificate(
    make_gate: Any, make_upstream: Make
) -> None:
    gate = make_gate(make_upstream().port, upstream_host="localhost", direction="incoming")
    ca_pem = gate.state_dir / "tls" / "ca.pem"
    strict = ssl.create_default_context(cafile=str(ca_pem))
    version, _, der = client_handshake(gate, strict, sni="mx.example.test")
    assert version == "TLSv1.3"
    assert "mx.example.test" in cert_names(der)
