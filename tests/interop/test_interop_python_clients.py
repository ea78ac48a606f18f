"""Python's smtplib and aiosmtplib as clients, aiosmtpd as the upstream server.

Proves: STARTTLS on the client leg with full certificate verification (test CA,
host name 127.0.0.1), implicit TLS with aiosmtplib, STARTTLS towards an aiosmtpd
upstream (``tls_context``) and towards an implicit-TLS upstream; the end-of-data
reply is the upstream's (a 451 stays a 451, a 554 a 554: SPEC.md section 2.3);
the message body arrives byte-for-byte with dot-stuffing undone; ``smtpgate ca
export`` prints the CA that signs the on-the-fly certificates of an outgoing
action; the proxy writes nothing on stdout and exits 0 on SIGTERM.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from email.message import EmailMessage

import aiosmtplib
import pytest
from cryptography import x509

from tests.peers.gate_config import gate_config, rule
from tests.peers.relay import Relay
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

StartGate = Callable[..., SmtpgateProcess]
StartUpstream = Callable[..., AiosmtpdUpstream]

BODY = "line one\n.leading dot\n..two dots\nlast line\n"


def _message(subject: str = "python client") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@sender.test"
    msg["To"] = "bob@receiver.test"
    msg["Subject"] = subject
    msg.set_content(BODY)
    return msg


def test_smtplib_starttls_verified_to_aiosmtpd_starttls(relay: Relay) -> None:
    up, gate = relay(rules=[rule(recipient_encryption="required")])
    with smtplib.SMTP("127.0.0.1", gate.port(), timeout=20) as smtp:
        smtp.ehlo("client.test")
        assert smtp.has_extn("starttls")
        smtp.starttls(context=relay.pki.client_context())
        client_version = smtp.sock.version()  # type: ignore[union-attr]
        refused = smtp.send_message(_message())
    assert refused == {}
    got = up.wait_messages(1)[0]
    assert got.tls_version in ("TLSv1.2", "TLSv1.3")
    assert "Subject: python client" in got.data.decode()
    for line in BODY.splitlines():
        assert line.encode() in got.data.splitlines()  # dot-stuffing undone upstream
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["client_tls"] == client_version
    assert tx["upstream_tls"] == got.tls_version
    assert tx["upstream_verify"] == "ok"


async def test_aiosmtplib_starttls_and_implicit_tls(relay: Relay) -> None:
    up, starttls_gate = relay(verify=False)
    implicit_gate = relay.gate(up, verify=False, policy={"implicit_tls": True})
    ctx = relay.pki.client_context()

    for gate, mode, tls in (
        (starttls_gate, "starttls", {"start_tls": True}),
        (implicit_gate, "implicit", {"use_tls": True}),
    ):
        errors, reply = await aiosmtplib.send(
            _message(f"aiosmtplib {mode}"),
            hostname="127.0.0.1",
            port=gate.port(),
            tls_context=ctx,
            timeout=20,
            **tls,
        )
        assert errors == {} and reply.startswith("2"), reply
    subjects = sorted(
        line
        for m in up.wait_messages(2)
        for line in m.data.decode().splitlines()
        if line.startswith("Subject:")
    )
    assert subjects == ["Subject: aiosmtplib implicit", "Subject: aiosmtplib starttls"]
    for gate in (starttls_gate, implicit_gate):
        tx = gate.transactions(outcome="delivered")[0]
        assert tx["client_tls"] in ("TLSv1.2", "TLSv1.3")


def test_implicit_tls_upstream(relay: Relay) -> None:
    up, gate = relay("implicit", rules=[rule(recipient_encryption="required")])
    with smtplib.SMTP("127.0.0.1", gate.port(), timeout=20) as smtp:
        smtp.send_message(_message())
    got = up.wait_messages(1)[0]
    assert got.tls_version in ("TLSv1.2", "TLSv1.3")
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["client_tls"] == "none"
    assert tx["upstream_tls"] == got.tls_version


@pytest.mark.parametrize(
    ("upstream_reply", "code"), [("451 4.3.0 try later", 451), ("554 5.6.0 no", 554)]
)
def test_end_of_data_reply_is_the_upstreams(upstream_reply: str, code: int, relay: Relay) -> None:
    up = relay.upstream(None, data_reply=upstream_reply)
    gate = relay.gate(up, verify=False)
    with (
        smtplib.SMTP("127.0.0.1", gate.port(), timeout=20) as smtp,
        pytest.raises(smtplib.SMTPDataError) as err,
    ):
        smtp.send_message(_message())
    assert err.value.smtp_code == code
    tx = gate.transactions()[0]
    assert tx["reply"] == code
    assert tx["outcome"] != "delivered"


def test_ca_export_signs_outgoing_client_leg_certificates(
    start_gate: StartGate, start_upstream: StartUpstream
) -> None:
    up = start_upstream()
    gate = start_gate(gate_config(up.port, direction="outgoing"))  # certificates generated
    pem = gate.ca_export()
    ca = x509.load_pem_x509_certificate(pem.encode())
    on_disk = x509.load_pem_x509_certificates(gate.state_file("ca.pem").read_bytes())[0]
    assert ca == on_disk
    assert gate.state_file("server.pem").exists()

    ctx = ssl.create_default_context(cadata=pem)  # trust only the exported CA
    with smtplib.SMTP("127.0.0.1", gate.port(), timeout=20) as smtp:
        smtp.starttls(context=ctx)  # verifies the chain and the name 127.0.0.1
        smtp.send_message(_message())
    assert up.wait_messages(1)


def test_stdout_is_empty_and_sigterm_exits_zero(relay: Relay) -> None:
    _, gate = relay(None, verify=False)
    with smtplib.SMTP("127.0.0.1", gate.port(), timeout=20) as smtp:
        smtp.send_message(_message())
    gate.transactions(outcome="delivered")
    assert gate.stop() == 0
    assert gate.stdout() == ""
    events = [r.get("event") for r in gate.records()]
    for event in ("listening", "session_start", "transaction", "session_end"):
        assert event in events, events
