"""AUTH relayed by the proxy session (``auth = "relay"``, docs/proxy.md): the
exchange goes verbatim to a new encrypted upstream leg, which then carries the
session's transactions and is never parked for another client."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from smtpgate.proxy.runtime import PolicyRuntime
from tests.proxy.helpers import rule
from tests.proxy.playbook import Playbook, runtime

PASSWORD = b"s3cret-Pa55"
#: PLAIN: authzid NUL authcid NUL password.
PLAIN = base64.b64encode(b"\0alice\0" + PASSWORD).decode()
LOGIN_USER = base64.b64encode(b"alice").decode()
LOGIN_PASSWORD = base64.b64encode(PASSWORD).decode()

GREETING = "S: 220 mx.example.test ESMTP smtpgate"
EHLO_TLS = """
    C: EHLO client.test
    S: 250-mx.example.test
    S: 250-8BITMIME
    S: 250-PIPELINING
    S: 250-SIZE 25000000
    S: 250-SMTPUTF8
    S: 250-DSN
    S: 250-ENHANCEDSTATUSCODES
    S: 250-CHUNKING
    S: 250 AUTH PLAIN LOGIN
"""
#: A new leg for AUTH: STARTTLS whatever the rules say.
OPEN_ENCRYPTED = """
    > open required fresh
    < connected
    R: 220 upstream.test ESMTP
    U: EHLO mx.example.test
    R: 250-upstream.test
    R: 250-PIPELINING
    R: 250-AUTH PLAIN LOGIN
    R: 250 STARTTLS
    U: STARTTLS
    R: 220 go ahead
    > starttls upstream
    < tls upstream
    U: EHLO mx.example.test
    R: 250-upstream.test
    R: 250-PIPELINING
    R: 250 AUTH PLAIN LOGIN
"""
AUTHENTICATED = f"""
    {GREETING}
    {EHLO_TLS}
    C: AUTH PLAIN {PLAIN}
    {OPEN_ENCRYPTED}
    U: AUTH PLAIN {PLAIN}
    R: 235 2.7.0 Authentication successful
    S: 235 2.7.0 Authentication successful
"""


@pytest.fixture
def auth_rt(state_dir: Path) -> PolicyRuntime:
    """AUTH relayed; the rule alone would send recipients in clear."""
    return runtime(state_dir, policy={"auth": "relay"}, rules=[rule(recipient_encryption="none")])


def no_secret_in(play: Playbook) -> None:
    """No record carries the password, in clear or in any base64 form the client sent."""
    text = json.dumps(play.logs)
    for secret in (PASSWORD.decode(), PLAIN, LOGIN_PASSWORD, "alice\\u0000"):
        assert secret not in text, secret


def test_plain_relayed_then_the_transaction_goes_on_the_authenticated_leg(
    auth_rt: PolicyRuntime,
) -> None:
    play = Playbook(auth_rt, client_tls=True).play(
        f"""
        {AUTHENTICATED}
        C: MAIL FROM:<alice@sender.test> AUTH=<>
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@rcpt.test>
        U: MAIL FROM:<alice@sender.test> AUTH=<>
        U: RCPT TO:<bob@rcpt.test>
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        C: hi
        C: .
        U: hi
        U: .
        R: 250 2.0.0 queued as 1
        S: 250 2.0.0 queued as 1
        C: QUIT
        S: 221 2.0.0 Bye
        > close
        > release
        """
    )
    assert play.record("auth") == {
        "session": "s1",
        "client": "192.0.2.7:40000",
        "policy": "p",
        "mechanism": "PLAIN",
        "outcome": "authenticated",
        "reply": 235,
        "upstream": auth_rt.upstream,
        "reason": "",
    }
    record = play.record("transaction")
    assert (record["outcome"], record["upstream_tls"]) == ("delivered", "TLSv1.3")
    # The authenticated leg speaks for alice: never parked for another session.
    assert play.released is not None and play.released.bound and not play.released.at_rest
    no_secret_in(play)


def test_login_challenges_and_responses_relayed_verbatim(auth_rt: PolicyRuntime) -> None:
    play = Playbook(auth_rt, client_tls=True).play(
        f"""
        {GREETING}
        {EHLO_TLS}
        C: AUTH LOGIN
        {OPEN_ENCRYPTED}
        U: AUTH LOGIN
        R: 334 VXNlcm5hbWU6
        S: 334 VXNlcm5hbWU6
        C: {LOGIN_USER}
        U: {LOGIN_USER}
        R: 334 UGFzc3dvcmQ6
        S: 334 UGFzc3dvcmQ6
        C: {LOGIN_PASSWORD}
        U: {LOGIN_PASSWORD}
        R: 235 2.7.0 ok
        S: 235 2.7.0 ok
        """
    )
    assert play.record("auth")["outcome"] == "authenticated"
    no_secret_in(play)


def test_bad_credentials_relayed_and_a_retry_uses_the_same_leg(auth_rt: PolicyRuntime) -> None:
    play = Playbook(auth_rt, client_tls=True).play(
        f"""
        {GREETING}
        {EHLO_TLS}
        C: AUTH PLAIN {PLAIN}
        {OPEN_ENCRYPTED}
        U: AUTH PLAIN {PLAIN}
        R: 535 5.7.8 Authentication credentials invalid
        S: 535 5.7.8 Authentication credentials invalid
        C: AUTH LOGIN
        U: AUTH LOGIN
        R: 334 VXNlcm5hbWU6
        S: 334 VXNlcm5hbWU6
        C: *
        U: *
        R: 501 5.7.0 cancelled
        S: 501 5.7.0 cancelled
        """
    )
    assert [(r["outcome"], r["reply"]) for r in play.records("auth")] == [
        ("failed", 535),
        ("cancelled", 501),
    ]
    no_secret_in(play)


def test_upstream_without_starttls_gets_454_and_no_credential_leaves(
    auth_rt: PolicyRuntime,
) -> None:
    play = Playbook(auth_rt, client_tls=True).play(
        f"""
        {GREETING}
        {EHLO_TLS}
        C: AUTH PLAIN {PLAIN}
        > open required fresh
        < connected
        R: 220 upstream.test ESMTP
        U: EHLO mx.example.test
        R: 250-upstream.test
        R: 250 AUTH PLAIN LOGIN
        > abort
        S: 454 4.7.0 Temporary authentication failure
        """
    )
    record = play.record("auth")
    assert (record["outcome"], record["reply"]) == ("tempfail", 454)
    assert record["reason"] == "upstream does not offer STARTTLS"
    assert record["upstream"] == auth_rt.upstream


def test_auth_in_clear_is_538_and_nothing_is_opened(auth_rt: PolicyRuntime) -> None:
    play = Playbook(auth_rt).play(
        f"""
        {GREETING}
        C: EHLO client.test
        S: 250-mx.example.test
        S: 250-8BITMIME
        S: 250-PIPELINING
        S: 250-SIZE 25000000
        S: 250-SMTPUTF8
        S: 250-DSN
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250 STARTTLS
        C: AUTH PLAIN {PLAIN}
        S: 538 5.7.11 Encryption required for requested authentication mechanism
        """
    )
    assert play.records("auth") == []


def test_auth_not_relayed_by_the_policy_is_502_and_not_offered(state_dir: Path) -> None:
    rt = runtime(state_dir)
    assert "AUTH" not in rt.ehlo_offer_tls.offered
    Playbook(rt, client_tls=True).play(
        f"""
        {GREETING}
        C: AUTH PLAIN {PLAIN}
        S: 502 5.5.1 Command not implemented
        """
    )


def test_lost_authenticated_leg_refuses_recipients_never_opens_another(
    auth_rt: PolicyRuntime,
) -> None:
    play = Playbook(auth_rt, client_tls=True).play(
        f"""
        {AUTHENTICATED}
        < lost upstream
        > abort
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@rcpt.test>
        S: 451 4.4.2 Upstream connection lost, message not delivered, try later
        """
    )
    assert play.record("rcpt_rejected")["reason"] == "the authenticated upstream connection is gone"


def test_leg_lost_while_the_client_answers_a_challenge_is_454(auth_rt: PolicyRuntime) -> None:
    play = Playbook(auth_rt, client_tls=True).play(
        f"""
        {GREETING}
        {EHLO_TLS}
        C: AUTH LOGIN
        {OPEN_ENCRYPTED}
        U: AUTH LOGIN
        R: 334 VXNlcm5hbWU6
        S: 334 VXNlcm5hbWU6
        < lost upstream
        > abort
        C: {LOGIN_USER}
        S: 454 4.7.0 Temporary authentication failure
        """
    )
    assert play.record("auth")["reason"] == "upstream connection lost"


def test_too_long_response_is_500_5_5_6_and_cancelled_upstream(auth_rt: PolicyRuntime) -> None:
    play = Playbook(auth_rt, client_tls=True).play(
        f"""
        {GREETING}
        {EHLO_TLS}
        C: AUTH LOGIN
        {OPEN_ENCRYPTED}
        U: AUTH LOGIN
        R: 334 VXNlcm5hbWU6
        S: 334 VXNlcm5hbWU6
        C: {"A" * 12288}
        U: *
        R: 501 5.7.0 cancelled
        S: 500 5.5.6 Authentication Exchange line is too long
        C: NOOP
        S: 250 2.0.0 Ok
        """
    )
    record = play.record("auth")
    assert (record["outcome"], record["reply"]) == ("failed", 500)


def test_a_challenge_of_12288_octets_is_relayed(auth_rt: PolicyRuntime) -> None:
    """RFC 4954 section 4: a challenge line may carry 12288 octets (a GSSAPI token)."""
    challenge = "Q" * 12288
    Playbook(auth_rt, client_tls=True).play(
        f"""
        {GREETING}
        {EHLO_TLS}
        C: AUTH LOGIN
        {OPEN_ENCRYPTED}
        U: AUTH LOGIN
        R: 334 {challenge}
        S: 334 {challenge}
        C: *
        U: *
        R: 501 5.7.0 cancelled
        S: 501 5.7.0 cancelled
        """
    )


def test_offered_mechanisms_are_the_configured_ones(state_dir: Path) -> None:
    rt: Any = runtime(
        state_dir, policy={"auth": "relay", "auth_mechanisms": ["plain", "SCRAM-SHA-256"]}
    )
    assert rt.ehlo_offer_tls.auth_mechanisms == {b"PLAIN", b"SCRAM-SHA-256"}
    assert rt.ehlo_offer_tls.reply.endswith(b"\r\n250 AUTH PLAIN SCRAM-SHA-256\r\n")
    assert "AUTH" not in rt.ehlo_offer_clear.offered


def test_a_temporary_refusal_of_mail_after_auth_is_relayed_not_sent_to_the_backup(
    state_dir: Path,
) -> None:
    """Without AUTH a 4xx to MAIL moves on to the backup (docs/configuration.md, next
    hops); after AUTH only the authenticated leg carries the session's mail, so the
    refusal goes to the client and no other connection is opened."""
    rt = runtime(
        state_dir,
        policy={"auth": "relay", "upstream": ["primary.test:25", "backup.test:25"]},
        rules=[rule(recipient_encryption="none")],
    )
    play = Playbook(rt, client_tls=True).play(
        f"""
        {AUTHENTICATED}
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@rcpt.test>
        U: MAIL FROM:<alice@sender.test>
        U: RCPT TO:<bob@rcpt.test>
        R: 451 4.7.1 Try later
        R: 503 5.5.1 Need MAIL
        S: 451 4.7.1 Try later
        """
    )
    assert play.record("rcpt_rejected")["reason"] == "upstream refused MAIL: 451 4.7.1 Try later"
    assert play.records("next_hop_failed") == []
