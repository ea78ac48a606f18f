"""AUTH relayed through smtpgate (``auth = "relay"``) to a real submission server.

swaks authenticates (``--auth``) over STARTTLS on the client leg; aiosmtpd with an
authenticator, AUTH over TLS only and required before MAIL, is the submission
server. Shown over real sockets and real TLS on both legs:

- PLAIN and LOGIN reach the submission server, the mail arrives as the user, on
  an encrypted upstream leg although the rule alone would send it in clear;
- bad credentials: the server's ``535 5.7.8`` reaches the client verbatim;
- AUTH in clear: ``538 5.7.11``; a policy without ``auth``: ``502 5.5.1``;
- a submission server without STARTTLS: ``454 4.7.0``, no credential sent;
- the authenticated connection is never handed to another client (the pool);
- no byte of the log, the console's traffic store or the process output holds
  the password, in clear or in any base64 form;
- Postfix (``smtp_sasl_auth_enable``) authenticates through smtpgate too.
"""

from __future__ import annotations

import base64
import smtplib
import sqlite3
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from tests.peers import ReservedPort, wait_until
from tests.peers.gate_config import gate_config, rule
from tests.peers.postfix import PostfixInstance
from tests.peers.relay import Relay
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.swaks import SwaksResult, run_swaks, run_swaks_auth
from tests.peers.upstream import AiosmtpdUpstream

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

USER = "alice@sender.test"
PASSWORD = "s3cret-Pa55-wOrd"
USERS = {USER: PASSWORD}
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


def base64_forms(secret: bytes) -> list[bytes]:
    """``secret`` as it looks inside any base64 text: at each of the three alignments,
    the characters that depend on ``secret`` alone."""
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret)
        forms.append(encoded[4 if shift else 0 : -4])
    return forms


SECRETS = [PASSWORD.encode(), *base64_forms(PASSWORD.encode())]


def assert_no_secret(gate: SmtpgateProcess) -> None:
    """Every file the gate wrote (log, output, state dir with the traffic store)."""
    files = [p for p in gate.workdir.rglob("*") if p.is_file()]
    assert gate.log_file in files
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret not in data, (path, secret)


def start_gate(
    relay: Relay,
    up: AiosmtpdUpstream,
    *,
    auth: bool = True,
    recipient: str = "none",
    workers: int | str = "auto",
) -> SmtpgateProcess:
    """smtpgate in front of ``up`` with the console (and so the traffic store) on;
    ``workers``: ``[gateway] workers``."""
    with ReservedPort() as console:
        config = gate_config(
            up.port,
            server_cert=relay.gate_cert,
            policy={"auth": "relay"} if auth else {},
            profile={"validate_certificates": True, "ca_file": str(relay.pki.ca_file)},
            rules=[rule(recipient_encryption=recipient)],
            gateway={"workers": workers},
        )
        config["console"] = {"enabled": True, "listen": f"127.0.0.1:{console.port}"}
        gate = relay.start_gate(config)
        gate.wait_record("console_listening")
        return gate


def traffic_rows(gate: SmtpgateProcess, count: int) -> list[Any]:
    database = gate.state_dir / "traffic.sqlite3"

    def rows() -> list[Any] | None:
        if not database.exists():
            return None
        with sqlite3.connect(database) as connection:
            found = connection.execute("SELECT * FROM traffic").fetchall()
        return found if len(found) >= count else None

    return wait_until(rows, lambda: f"{count} traffic rows in {database}", timeout=20)


def swaks_auth(port: int, mechanism: str, password: str = PASSWORD, **kw: Any) -> SwaksResult:
    return run_swaks_auth(port, mechanism, USER, password, **kw)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_authenticates_through_smtpgate_and_the_mail_arrives_as_the_user(
    relay: Relay, mechanism: str
) -> None:
    up = relay.upstream("starttls", users=USERS)
    gate = start_gate(relay, up)
    res = swaks_auth(gate.port(), mechanism)
    assert res.returncode == 0, res
    # LOGIN's last reply answers the password line, PLAIN's the AUTH line.
    assert [(r.code, r.text) for r in res.replies if r.code == 235] == [
        (235, "2.7.0 Authentication successful")
    ], res
    [msg] = up.wait_messages(1)
    assert msg.authenticated_as == USER
    # The rule says "none"; credentials and the mail they allow still went encrypted.
    assert msg.tls_version in TLS_VERSIONS
    assert up.auth_attempts == [(mechanism, USER, True)]
    record = gate.wait_record("auth")[0]
    assert {k: record[k] for k in ("mechanism", "outcome", "reply")} == {
        "mechanism": mechanism,
        "outcome": "authenticated",
        "reply": 235,
    }
    assert gate.transactions(outcome="delivered")[0]["upstream_tls"] == msg.tls_version
    traffic_rows(gate, 1)
    assert_no_secret(gate)


def test_bad_credentials_get_the_submission_servers_535_verbatim(relay: Relay) -> None:
    up = relay.upstream("starttls", users=USERS)
    gate = start_gate(relay, up)
    res = swaks_auth(gate.port(), "PLAIN", password="wrong-" + PASSWORD)
    auth = res.reply_to("AUTH")
    assert auth is not None and (auth.code, auth.text) == (
        535,
        "5.7.8 Authentication credentials invalid",
    ), res
    assert res.returncode != 0
    assert up.messages == []
    assert up.auth_attempts == [("PLAIN", USER, False)]
    assert gate.wait_record("auth")[0]["outcome"] == "failed"
    assert_no_secret(gate)


def _auth_command(port: int, *, starttls: bool) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.test")
        if starttls:
            client.starttls(context=ssl._create_unverified_context())
            client.ehlo("client.test")
        blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {blob}")


def test_auth_in_clear_is_538_and_the_submission_server_sees_nothing(relay: Relay) -> None:
    up = relay.upstream("starttls", users=USERS)
    gate = start_gate(relay, up)
    assert _auth_command(gate.port(), starttls=False) == (
        538,
        b"5.7.11 Encryption required for requested authentication mechanism",
    )
    # Over STARTTLS the same policy offers and relays it.
    assert _auth_command(gate.port(), starttls=True) == (
        235,
        b"2.7.0 Authentication successful",
    )
    assert up.auth_attempts == [("PLAIN", USER, True)]
    assert_no_secret(gate)


def test_a_policy_without_auth_answers_502_even_over_tls(relay: Relay) -> None:
    up = relay.upstream("starttls", users=USERS)
    gate = start_gate(relay, up, auth=False)
    assert _auth_command(gate.port(), starttls=True) == (502, b"5.5.1 Command not implemented")
    assert up.auth_attempts == []


def test_submission_server_without_starttls_gets_no_credential_454(relay: Relay) -> None:
    up = relay.upstream(None, users=USERS)
    gate = start_gate(relay, up)
    res = swaks_auth(gate.port(), "PLAIN")
    auth = res.reply_to("AUTH")
    assert auth is not None and (auth.code, auth.text) == (
        454,
        "4.7.0 Temporary authentication failure",
    ), res
    assert up.auth_attempts == [] and up.messages == []
    record = gate.wait_record("auth")[0]
    assert (record["outcome"], record["reason"]) == (
        "tempfail",
        "upstream does not offer STARTTLS",
    )
    assert_no_secret(gate)


def test_the_authenticated_connection_never_serves_another_client(relay: Relay) -> None:
    """Both sessions need the same leg (encryption required to the same host): a pooled
    leg would be shared. The second client, without AUTH, gets the submission server's
    refusal, not alice's connection."""
    up = relay.upstream("starttls", users=USERS)
    # One process: the pools are per worker, and with two the kernel may hand the
    # second client to the other one, where alice's leg could not be shared anyway.
    gate = start_gate(relay, up, recipient="required", workers=1)
    first = swaks_auth(gate.port(), "PLAIN")
    assert first.returncode == 0, first
    up.wait_messages(1)
    second = run_swaks(gate.port(), tls="starttls", sender="mallory@sender.test")
    rcpt = second.reply_to("RCPT")
    assert rcpt is not None and (rcpt.code, rcpt.text) == (
        530,
        "5.7.0 Authentication required",
    ), second
    assert [m.authenticated_as for m in up.messages] == [USER]
    # alice's, then a new one for the second client
    connected = gate.wait_record("upstream_connected", count=2)
    assert len(connected) == 2, connected
    assert_no_secret(gate)


def test_the_secret_forms_looked_for_are_those_clients_send() -> None:
    """PLAIN puts the password after authzid and authcid (any alignment); LOGIN alone."""
    blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    assert any(form in blob for form in base64_forms(PASSWORD.encode()))
    assert any(form in base64.b64encode(PASSWORD.encode()) for form in SECRETS)


def test_postfix_authenticates_through_smtpgate_with_smtp_sasl_auth_enable(
    relay: Relay, start_postfix: Callable[..., PostfixInstance]
) -> None:
    """A real MTA as the client: Postfix's SMTP client (Cyrus SASL) relays through
    smtpgate to the submission server with its configured credentials."""
    up = relay.upstream("starttls", users=USERS)
    gate = start_gate(relay, up)
    snd = start_postfix(
        "snd",
        relayhost=f"[127.0.0.1]:{gate.port()}",
        smtp_tls_security_level="encrypt",
        main_cf={
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps": f"static:{USER}:{PASSWORD}",
            "smtp_sasl_security_options": "noanonymous",
            "smtp_sasl_tls_security_options": "noanonymous",
        },
    )
    snd.submit(USER, "bob@receiver.test", subject="submitted through smtpgate")
    [msg] = up.wait_messages(1, timeout=30)
    snd.wait_queue_empty()
    assert msg.authenticated_as == USER
    assert up.auth_attempts[0][1:] == (USER, True)
    assert gate.wait_record("auth")[0]["outcome"] == "authenticated"
    assert_no_secret(gate)
