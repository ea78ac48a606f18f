"""The proxy session without sockets: SPEC section 2, pipelining, the 452
split, pooled legs and upstream loss at each stage, as scripted conversations
(see tests/proxy/playbook.py for the script language)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtpgate.proxy.runtime import PolicyRuntime
from tests.proxy.helpers import rule
from tests.proxy.playbook import DATE, Playbook, runtime

GREETING = "S: 220 mx.example.test ESMTP smtpgate"
EHLO_CLEAR = """
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
"""
EHLO_TLS = """
    C: EHLO client.test
    S: 250-mx.example.test
    S: 250-8BITMIME
    S: 250-PIPELINING
    S: 250-SIZE 25000000
    S: 250-SMTPUTF8
    S: 250-DSN
    S: 250-ENHANCEDSTATUSCODES
    S: 250 CHUNKING
"""
#: The upstream's greeting and EHLO answer, up to where the leg is ready.
UPSTREAM_HELLO = """
    R: 220 upstream.test ESMTP
    U: EHLO mx.example.test
    R: 250-upstream.test
    R: 250-PIPELINING
    R: 250-8BITMIME
    R: 250 DSN
"""
UPSTREAM_HELLO_STARTTLS = """
    R: 220 upstream.test ESMTP
    U: EHLO mx.example.test
    R: 250-upstream.test
    R: 250-PIPELINING
    R: 250 STARTTLS
"""
UPSTREAM_EHLO_AFTER_TLS = """
    U: EHLO mx.example.test
    R: 250-upstream.test
    R: 250 PIPELINING
"""
ENVELOPE = """
    C: MAIL FROM:<alice@sender.test>
    S: 250 2.1.0 Ok
    C: RCPT TO:<bob@rcpt.test>
"""
UPSTREAM_ENVELOPE = """
    U: MAIL FROM:<alice@sender.test>
    U: RCPT TO:<bob@rcpt.test>
"""


@pytest.fixture
def make_runtime(state_dir: Path) -> Any:
    def make(**kwargs: Any) -> PolicyRuntime:
        return runtime(state_dir, **kwargs)

    return make


@pytest.fixture
def clear_rt(make_runtime: Any) -> PolicyRuntime:
    """Upstream leg in clear (recipient ``none``): the shortest opening."""
    return make_runtime(rules=[rule(recipient_encryption="none")])  # type: ignore[no-any-return]


def delivered(play: Playbook) -> None:
    record = play.record("transaction")
    assert (record["outcome"], record["reply"]) == ("delivered", 250), record


# -- a message end to end ---------------------------------------------------------------------


def test_one_message_relayed_with_replies_batched(clear_rt: PolicyRuntime) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@rcpt.test>
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 2.1.0 sender ok
        R: 250 2.1.5 recipient ok
        S: 250 2.1.5 recipient ok
        C: DATA
        U: DATA
        R: 354 go ahead
        S: 354 End data with <CR><LF>.<CR><LF>
        C: Subject: hi
        C:
        C: ..leading dot
        C: .
        U: Subject: hi
        U:
        U: ..leading dot
        U: .
        R: 250-2.0.0 queued as 1234
        R: 250 2.0.0 thanks
        S: 250-2.0.0 queued as 1234
        S: 250 2.0.0 thanks
        C: QUIT
        S: 221 2.0.0 Bye
        > close
        > release
        """
    )
    delivered(play)
    record = play.record("transaction")
    assert (record["rule"], record["recipient_domains"], record["upstream_tls"]) == (
        "1",
        ["rcpt.test"],
        "none",
    )
    assert play.released is not None and play.released.at_rest  # parked for the next session
    assert play.record("session_end")["reason"] == "client_quit"
    assert (record["sender"], record["recipients"], record["size"]) == (
        "alice@sender.test",
        ["bob@rcpt.test"],
        len(b"Subject: hi\r\n\r\n.leading dot\r\n"),
    )
    assert record["upstream_reply"] == "250 2.0.0 queued as 1234 / 2.0.0 thanks"
    assert [name for name, _ in play.logs] == [
        "session_start",
        "upstream_connected",
        "transaction",
        "session_end",
    ]


def test_pipelined_batch_goes_upstream_in_one_write_with_data(clear_rt: PolicyRuntime) -> None:
    """RFC 2920: MAIL, RCPT and DATA in one packet; the upstream gets them in one write
    and the client its three answers in one write."""
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test>
        C: RCPT TO:<bob@rcpt.test>
        C: DATA
        > open none
        < connected
        {UPSTREAM_HELLO}
        U: MAIL FROM:<alice@sender.test>
        U: RCPT TO:<bob@rcpt.test>
        U: DATA
        R: 250 ok
        R: 250 ok
        R: 354 go
        S: 250 2.1.0 Ok
        S: 250 ok
        S: 354 End data with <CR><LF>.<CR><LF>
        C: body
        C: .
        U: body
        U: .
        R: 250 queued
        S: 250 queued
        """
    )
    delivered(play)


def test_body_waits_for_the_dot_and_leaves_with_it(clear_rt: PolicyRuntime) -> None:
    """Body bytes of one read are not written until the read is done; those of the
    read that holds the final dot leave with the dot, in the same write."""
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        C: first read
        U- first read
        C: second read
        C: .
        U:
        U: second read
        U: .
        R: 250 queued
        S: 250 queued
        """
    )
    delivered(play)


def test_upstream_without_pipelining_gets_mail_then_rcpt(clear_rt: PolicyRuntime) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        R: 220 upstream.test ESMTP
        U: EHLO mx.example.test
        R: 250 upstream.test
        U: MAIL FROM:<alice@sender.test>
        R: 250 ok
        U: RCPT TO:<bob@rcpt.test>
        R: 250 ok
        S: 250 ok
        """
    )
    assert play.session.txn is not None and play.session.txn.recipient_domains == ["rcpt.test"]


def test_helo_only_upstream_and_parameters_it_did_not_offer(clear_rt: PolicyRuntime) -> None:
    """EHLO refused: HELO; then no MAIL/RCPT parameter the upstream did not offer
    (RFC 1869), here SIZE, BODY and the DSN ones."""
    Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test> SIZE=100 BODY=8BITMIME RET=HDRS
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@rcpt.test> NOTIFY=NEVER
        > open none
        < connected
        R: 220 upstream.test ESMTP
        U: EHLO mx.example.test
        R: 502 5.5.1 what
        U: HELO mx.example.test
        R: 250 upstream.test
        U: MAIL FROM:<alice@sender.test>
        R: 250 ok
        U: RCPT TO:<bob@rcpt.test>
        R: 250 ok
        S: 250 ok
        """
    )


def test_dsn_parameters_relayed_to_an_upstream_offering_dsn(clear_rt: PolicyRuntime) -> None:
    Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test> RET=HDRS SIZE=100
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@rcpt.test> NOTIFY=NEVER
        > open none
        < connected
        {UPSTREAM_HELLO}
        U: MAIL FROM:<alice@sender.test> RET=HDRS
        U: RCPT TO:<bob@rcpt.test> NOTIFY=NEVER
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )


def test_upstream_refusing_mail_answers_the_rcpt_and_the_next_rcpt_tries_again(
    clear_rt: PolicyRuntime,
) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 550-5.7.1 sender
        R: 550 5.7.1 refused
        R: 503 5.5.1 need MAIL
        S: 550-5.7.1 sender
        S: 550 5.7.1 refused
        C: RCPT TO:<carol@rcpt.test>
        U: MAIL FROM:<alice@sender.test>
        U: RCPT TO:<carol@rcpt.test>
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    rejected = play.record("rcpt_rejected")
    assert (rejected["reply"], rejected["reason"]) == (
        550,
        "upstream refused MAIL: 550 5.7.1 sender / 5.7.1 refused",
    )


def test_refused_recipient_and_pipelined_data_refused_too(clear_rt: PolicyRuntime) -> None:
    """DATA pipelined behind the only RCPT, which the upstream refuses: the upstream
    refuses the DATA as RFC 2920 says, the client's DATA gets 554 from the core."""
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test>
        C: RCPT TO:<nobody@rcpt.test>
        C: DATA
        > open none
        < connected
        {UPSTREAM_HELLO}
        U: MAIL FROM:<alice@sender.test>
        U: RCPT TO:<nobody@rcpt.test>
        U: DATA
        R: 250 ok
        R: 550 5.1.1 no such user
        R: 554 5.5.1 no valid recipients
        S: 250 2.1.0 Ok
        S: 550 5.1.1 no such user
        S: 554 5.5.1 No valid recipients
        C: QUIT
        S: 221 2.0.0 Bye
        > close
        > release
        """
    )
    record = play.record("transaction")
    assert (record["outcome"], record["reply"]) == ("rejected", 550)


def test_upstream_accepting_data_without_recipients_is_a_broken_leg(
    clear_rt: PolicyRuntime,
) -> None:
    Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test>
        C: RCPT TO:<nobody@rcpt.test>
        C: DATA
        > open none
        < connected
        {UPSTREAM_HELLO}
        U: MAIL FROM:<alice@sender.test>
        U: RCPT TO:<nobody@rcpt.test>
        U: DATA
        R: 250 ok
        R: 550 5.1.1 no such user
        R: 354 go ahead anyway
        > abort
        S: 250 2.1.0 Ok
        S: 451 4.4.2 Upstream connection lost, message not delivered, try later
        S: 554 5.5.1 No valid recipients
        """
    )


def test_rset_and_ehlo_end_the_upstream_transaction(clear_rt: PolicyRuntime) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: RSET
        U: RSET
        R: 250 reset
        S: 250 2.0.0 Ok
        {ENVELOPE}
        U: MAIL FROM:<alice@sender.test>
        U: RCPT TO:<bob@rcpt.test>
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: EHLO again.test
        U: RSET
        R: 250 reset
        S: 250-mx.example.test
        S: 250-8BITMIME
        S: 250-PIPELINING
        S: 250-SIZE 25000000
        S: 250-SMTPUTF8
        S: 250-DSN
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250 STARTTLS
        """
    )
    assert [r["outcome"] for r in play.records("transaction")] == ["aborted", "aborted"]
    assert play.session.leg is not None and play.session.leg.at_rest


# -- SPEC 2.1: the client leg ----------------------------------------------------------------


def test_rcpt_in_clear_under_sender_required_gets_530_others_unaffected(
    make_runtime: Any,
) -> None:
    rt = make_runtime(
        rules=[
            rule(recipient="secure.test", sender_encryption="required"),
            rule(recipient_encryption="none"),
        ]
    )
    play = Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@secure.test>
        S: 530 5.7.0 Must issue a STARTTLS command first
        C: RCPT TO:<bob@rcpt.test>
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    rejected = play.record("rcpt_rejected")
    assert (rejected["rule"], rejected["reply"], rejected["recipient_domain"]) == (
        "1",
        530,
        "secure.test",
    )


def test_mail_in_clear_refused_when_envelope_must_be_encrypted(make_runtime: Any) -> None:
    rt = make_runtime(
        rules=[rule(sender="sender.test", sender_encryption="required")],
        starttls={"require_tls_for_envelope": True},
    )
    play = Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test>
        S: 530 5.7.0 Must issue a STARTTLS command first
        C: MAIL FROM:<alice@other.test>
        S: 250 2.1.0 Ok
        """
    )
    assert play.record("mail_rejected")["sender_domain"] == "sender.test"


def test_starttls_then_the_session_starts_over_encrypted(make_runtime: Any) -> None:
    rt = make_runtime(rules=[rule(sender_encryption="required", recipient_encryption="none")])
    play = Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        > starttls client
        < tls client
        C: MAIL FROM:<alice@sender.test>
        S: 503 5.5.1 Send HELO/EHLO first
        {EHLO_TLS}
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    assert play.record("starttls")["client_tls"] == "TLSv1.3"


def test_commands_pipelined_after_starttls_are_discarded(make_runtime: Any) -> None:
    play = Playbook(make_runtime()).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: STARTTLS
        C: MAIL FROM:<evil@sender.test>
        S: 220 2.0.0 Ready to start TLS
        > starttls client
        < tls client
        C: MAIL FROM:<alice@sender.test>
        S: 503 5.5.1 Send HELO/EHLO first
        """
    )
    assert play.record("starttls_injection")["discarded_bytes"] == len(
        b"MAIL FROM:<evil@sender.test>\r\n"
    )


def test_starttls_inside_a_transaction_is_refused(clear_rt: PolicyRuntime) -> None:
    Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        C: STARTTLS
        S: 503 5.5.1 Error: MAIL transaction in progress
        """
    )


def test_client_handshake_failure_ends_the_session(make_runtime: Any) -> None:
    play = Playbook(make_runtime()).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        > starttls client
        < tls failed client bad record mac
        > close
        """
    )
    assert play.record("starttls_failed")["reason"] == "bad record mac"
    assert play.session.wait is None


# -- SPEC 2.2: the upstream leg --------------------------------------------------------------


def test_required_starttls_handshake_then_second_ehlo(make_runtime: Any) -> None:
    rt = make_runtime(rules=[rule(recipient_encryption="required")])
    play = Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open required
        < connected
        {UPSTREAM_HELLO_STARTTLS}
        U: STARTTLS
        R: 220 go ahead
        > starttls upstream
        < tls upstream
        {UPSTREAM_EHLO_AFTER_TLS}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    connected = play.record("upstream_connected")
    assert (connected["mode"], connected["upstream_tls"], connected["upstream_verify"]) == (
        "required",
        "TLSv1.3",
        "ok",
    )


@pytest.mark.parametrize(
    ("upstream_says", "reason"),
    [
        (
            """
            R: 220 upstream.test ESMTP
            U: EHLO mx.example.test
            R: 250 upstream.test
            > abort
            """,
            "upstream does not offer STARTTLS",
        ),
        (
            f"""
            {UPSTREAM_HELLO_STARTTLS}
            U: STARTTLS
            R: 454 4.7.0 TLS not available
            > abort
            """,
            "STARTTLS refused: 454 4.7.0 TLS not available",
        ),
        (
            f"""
            {UPSTREAM_HELLO_STARTTLS}
            U: STARTTLS
            R: 220 go ahead
            > starttls upstream
            < tls failed upstream handshake failure
            """,
            "TLS handshake failed: handshake failure",
        ),
        (
            f"""
            {UPSTREAM_HELLO_STARTTLS}
            U: STARTTLS
            R: 220 go ahead
            > starttls upstream
            < tls upstream failed-check hostname mismatch
            > abort
            """,
            "certificate check: failed: hostname mismatch",
        ),
    ],
    ids=["no-starttls", "starttls-refused", "handshake-failed", "certificate-failed"],
)
def test_required_never_goes_in_clear(make_runtime: Any, upstream_says: str, reason: str) -> None:
    """SPEC 2.2 ``required``: 451 4.7.5 and nothing of the envelope sent upstream
    (a failed handshake has already cost the connection: nothing to abort)."""
    rt = make_runtime(rules=[rule(recipient_encryption="required")])
    play = Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open required
        < connected
        {upstream_says}
        S: 451 4.7.5 Cannot deliver encrypted as required, try later
        """
    )
    rejected = play.record("rcpt_rejected")
    assert (rejected["reply"], rejected["reason"]) == (451, reason)
    assert play.session.leg is None


def test_opportunistic_without_starttls_delivers_in_clear(make_runtime: Any) -> None:
    rt = make_runtime(rules=[rule(recipient_encryption="preferred")])
    play = Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open opportunistic
        < connected
        R: 220 upstream.test ESMTP
        U: EHLO mx.example.test
        R: 250-upstream.test
        R: 250 PIPELINING
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    fallback = play.record("upstream_connected")["upstream_fallback"]
    assert fallback == "upstream does not offer STARTTLS"


def test_opportunistic_handshake_failure_retries_on_a_new_connection_in_clear(
    make_runtime: Any,
) -> None:
    rt = make_runtime(rules=[rule(recipient_encryption="preferred")])
    play = Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open opportunistic
        < connected
        {UPSTREAM_HELLO_STARTTLS}
        U: STARTTLS
        R: 220 go ahead
        > starttls upstream
        < tls failed upstream wrong version number
        > open opportunistic in clear
        < connected
        {UPSTREAM_HELLO_STARTTLS}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    connected = play.record("upstream_connected")
    assert (connected["upstream_tls"], connected["upstream_fallback"]) == (
        "none",
        "TLS handshake failed: wrong version number",
    )


def test_opportunistic_certificate_failure_is_logged_not_enforced(make_runtime: Any) -> None:
    rt = make_runtime(rules=[rule(recipient_encryption="preferred")])
    play = Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open opportunistic
        < connected
        {UPSTREAM_HELLO_STARTTLS}
        U: STARTTLS
        R: 220 go ahead
        > starttls upstream
        < tls upstream failed-check self-signed
        {UPSTREAM_EHLO_AFTER_TLS}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    assert play.record("upstream_connected")["upstream_verify"] == "failed: self-signed"


def test_none_never_starts_tls_even_when_offered(clear_rt: PolicyRuntime) -> None:
    Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO_STARTTLS}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )


@pytest.mark.parametrize(("client_tls", "mode"), [(False, "none"), (True, "required")])
def test_allowed_mirrors_the_client_leg(make_runtime: Any, client_tls: bool, mode: str) -> None:
    rt = make_runtime(rules=[rule(recipient_encryption="allowed")])
    Playbook(rt, client_tls=client_tls).play(
        f"""
        {GREETING}
        {EHLO_TLS if client_tls else EHLO_CLEAR}
        {ENVELOPE}
        > open {mode}
        """
    )


def test_implicit_tls_upstream_failing_its_check_under_required(make_runtime: Any) -> None:
    rt = make_runtime(
        rules=[rule(recipient_encryption="required")], policy={"upstream_implicit_tls": True}
    )
    play = Playbook(rt)
    play.play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open required in clear
        < connect failed tls certificate verify failed
        S: 451 4.7.5 Cannot deliver encrypted as required, try later
        """
    )
    assert play.record("rcpt_rejected")["reason"] == (
        "TLS handshake failed: certificate verify failed"
    )


def test_upstream_unreachable_gets_451_441(clear_rt: PolicyRuntime) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connect failed Connection refused
        S: 451 4.4.1 Upstream server unavailable, try later
        """
    )
    assert play.record("rcpt_rejected")["reason"] == "connect 127.0.0.1:2526: Connection refused"


def test_upstream_greeting_refusal_gets_451_441(clear_rt: PolicyRuntime) -> None:
    Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        R: 554 5.3.2 go away
        > abort
        S: 451 4.4.1 Upstream server unavailable, try later
        """
    )


# -- the 452 split ---------------------------------------------------------------------------


def test_recipient_needing_another_upstream_mode_gets_452(make_runtime: Any) -> None:
    rt = make_runtime(
        rules=[
            rule(recipient="secure.test", recipient_encryption="required"),
            rule(recipient_encryption="none"),
        ]
    )
    play = Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: RCPT TO:<carol@secure.test>
        S: 452 4.5.3 Recipient needs another transaction, send it again separately
        C: RCPT TO:<dave@rcpt.test>
        U: RCPT TO:<dave@rcpt.test>
        R: 250 ok
        S: 250 ok
        """
    )
    rejected = play.record("rcpt_rejected")
    assert (rejected["rule"], rejected["reply"]) == ("1", 452)


def test_the_split_recipient_opens_its_own_leg_in_the_next_transaction(
    make_runtime: Any,
) -> None:
    """The leg of the first transaction is released (parked when at rest) and a leg
    of the other mode opened."""
    rt = make_runtime(
        rules=[
            rule(recipient="secure.test", recipient_encryption="required"),
            rule(recipient_encryption="none"),
        ]
    )
    Playbook(rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        C: .
        U: .
        R: 250 queued
        S: 250 queued
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        C: RCPT TO:<carol@secure.test>
        > release
        > open required
        """
    )


# -- pooled legs -----------------------------------------------------------------------------


def test_reused_leg_skips_the_opening(clear_rt: PolicyRuntime) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < reused
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    assert play.records("upstream_connected") == []


@pytest.mark.parametrize(
    "death", ["< lost upstream", "R: 421 4.4.2 idle timeout, closing\n< lost upstream"]
)
def test_dead_pooled_leg_is_replaced_once(clear_rt: PolicyRuntime, death: str) -> None:
    """docs/proxy.md: a reused leg found dead before its MAIL was accepted is replaced
    once, transparently (also when it said 421 on its way out)."""
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < reused
        {UPSTREAM_ENVELOPE}
        {death}
        > abort
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    assert play.records("rcpt_rejected") == []


def test_pooled_leg_refusing_mail_is_relayed_not_retried(clear_rt: PolicyRuntime) -> None:
    Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < reused
        {UPSTREAM_ENVELOPE}
        R: 550 5.7.1 not you
        R: 503 5.5.1 need MAIL
        S: 550 5.7.1 not you
        """
    )


def test_dead_pooled_leg_is_replaced_only_once(clear_rt: PolicyRuntime) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < reused
        {UPSTREAM_ENVELOPE}
        < lost upstream
        > abort
        > open none
        < reused
        {UPSTREAM_ENVELOPE}
        < lost upstream
        > abort
        S: 451 4.4.2 Upstream connection lost, message not delivered, try later
        """
    )
    assert play.record("rcpt_rejected")["reply"] == 451


# -- SPEC 2.3: upstream loss at each stage ---------------------------------------------------

UP_TO_RCPT = f"""
    {GREETING}
    {EHLO_CLEAR}
    {ENVELOPE}
    > open none
    < connected
    {UPSTREAM_HELLO}
    {UPSTREAM_ENVELOPE}
"""
TEMPFAIL = "S: 451 4.4.2 Upstream connection lost, message not delivered, try later"


@pytest.mark.parametrize("loss", ["< lost upstream", "< timeout upstream"])
def test_upstream_lost_during_the_opening(clear_rt: PolicyRuntime, loss: str) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        R: 220 upstream.test ESMTP
        U: EHLO mx.example.test
        {loss}
        > abort
        S: 451 4.4.1 Upstream server unavailable, try later
        """
    )
    assert play.record("rcpt_rejected")["reason"].startswith("upstream dialogue failed: ")


def test_upstream_lost_before_the_first_rcpt_answer_lets_the_next_rcpt_start_over(
    clear_rt: PolicyRuntime,
) -> None:
    Playbook(clear_rt).play(
        f"""
        {UP_TO_RCPT}
        R: 250 ok
        < lost upstream
        > abort
        {TEMPFAIL}
        C: RCPT TO:<carol@rcpt.test>
        > open none
        < connected
        {UPSTREAM_HELLO}
        U: MAIL FROM:<alice@sender.test>
        U: RCPT TO:<carol@rcpt.test>
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )


def test_upstream_lost_between_recipients_refuses_the_rest_and_data(
    clear_rt: PolicyRuntime,
) -> None:
    """Accepted recipients cannot move to a new connection (SPEC 2.3): the rest of the
    transaction gets 4xx so that the client retries all of it."""
    play = Playbook(clear_rt).play(
        f"""
        {UP_TO_RCPT}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        < lost upstream
        > abort
        C: RCPT TO:<carol@rcpt.test>
        {TEMPFAIL}
        C: DATA
        {TEMPFAIL}
        C: RSET
        S: 250 2.0.0 Ok
        """
    )
    assert play.record("rcpt_rejected")["reason"] == (
        "upstream connection lost earlier in this transaction"
    )
    assert play.record("transaction")["outcome"] == "aborted"


@pytest.mark.parametrize("loss", ["< lost upstream", "< timeout upstream", "R: garbage"])
def test_upstream_lost_at_data(clear_rt: PolicyRuntime, loss: str) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {UP_TO_RCPT}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        {loss}
        > abort
        {TEMPFAIL}
        """
    )
    record = play.record("transaction")
    assert (record["outcome"], record["reply"]) == ("tempfail", 451)


def test_upstream_lost_mid_body_is_told_at_the_dot(clear_rt: PolicyRuntime) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {UP_TO_RCPT}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        C: part one
        U- part one
        < lost upstream
        > abort
        C: part two
        C: .
        {TEMPFAIL}
        """
    )
    record = play.record("transaction")
    assert (record["outcome"], record["reply"], record["upstream_tls"]) == ("tempfail", 451, "none")


@pytest.mark.parametrize("loss", ["< lost upstream", "< timeout upstream"])
def test_upstream_lost_after_the_dot_is_a_tempfail_never_a_250(
    clear_rt: PolicyRuntime, loss: str
) -> None:
    """We cannot know whether the upstream took it: 4xx (a duplicate beats a loss)."""
    play = Playbook(clear_rt).play(
        f"""
        {UP_TO_RCPT}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        C: text
        C: .
        U: text
        U: .
        {loss}
        > abort
        {TEMPFAIL}
        """
    )
    assert play.record("transaction")["outcome"] == "tempfail"
    assert play.session.wait is not None and play.session.wait.timeout == 8.0


def test_upstream_temporary_failure_after_the_dot_stays_temporary(
    clear_rt: PolicyRuntime,
) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {UP_TO_RCPT}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        C: .
        U: .
        R: 452 4.3.1 insufficient storage
        S: 452 4.3.1 insufficient storage
        """
    )
    record = play.record("transaction")
    assert (record["outcome"], record["reply"]) == ("tempfail", 452)


def test_client_lost_mid_body_abandons_the_upstream_without_the_dot(
    clear_rt: PolicyRuntime,
) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {UP_TO_RCPT}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        C: half a message
        U- half a message
        < lost client
        > abort
        > close
        """
    )
    record = play.record("transaction")
    assert (record["outcome"], record["reply"]) == ("aborted", 0)


def test_body_over_the_limit_abandons_the_upstream_and_refuses_at_the_dot(
    make_runtime: Any,
) -> None:
    rt = make_runtime(
        rules=[rule(recipient_encryption="none")], general={"max_message_size": "1KiB"}
    )
    line = "x" * 200
    play = Playbook(rt).play(
        f"""
        {GREETING}
        C: EHLO client.test
        S: 250-mx.example.test
        S: 250-8BITMIME
        S: 250-PIPELINING
        S: 250-SIZE 1024
        S: 250-SMTPUTF8
        S: 250-DSN
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250 STARTTLS
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        {"".join(f"C: {line}{chr(10)}" for _ in range(8))}
        > abort
        C: .
        S: 552 5.3.4 Message size exceeds fixed maximum message size
        """
    )
    record = play.record("transaction")
    assert (record["outcome"], record["reply"]) == ("rejected", 552)


def test_client_timeout_gets_421_and_the_session_ends(clear_rt: PolicyRuntime) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        < timeout client
        S: 421 4.4.2 Timeout, closing connection
        > close
        """
    )
    assert play.session.wait is None
    assert [name for name, _ in play.logs] == ["session_start", "session_end"]
    assert play.record("session_end")["reason"] == "timeout"


def test_received_header_names_helo_client_and_tls(make_runtime: Any) -> None:
    rt = make_runtime(rules=[rule(recipient_encryption="none")], general={"received_header": True})
    tls = "version=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256"
    Playbook(rt, client_tls=True).play(
        f"""
        {GREETING}
        {EHLO_TLS}
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        C: .
        U: Received: from client.test ([192.0.2.7])
        U: \tby mx.example.test (smtpgate) with ESMTPS ({tls})
        U: \tid s1; {DATE}
        U: .
        R: 250 queued
        S: 250 queued
        """
    )


# -- parameters toward the upstream -----------------------------------------------------------


def test_smtputf8_toward_an_upstream_without_it_is_refused_and_the_leg_kept(
    clear_rt: PolicyRuntime,
) -> None:
    """RFC 6531 3.4: never downgraded, never sent on; the leg stays at rest."""
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test> SMTPUTF8
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@rcpt.test>
        > open none
        < connected
        {UPSTREAM_HELLO}
        S: 553 5.6.7 SMTPUTF8 is required, but the upstream server does not offer it
        """
    )
    assert play.record("rcpt_rejected")["reason"] == "upstream does not offer SMTPUTF8"
    assert play.session.leg is not None and play.session.leg.at_rest


def test_parameters_left_out_are_logged(clear_rt: PolicyRuntime) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test> SIZE=100 RET=HDRS
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@rcpt.test>
        > open none
        < connected
        {UPSTREAM_HELLO}
        U: MAIL FROM:<alice@sender.test> RET=HDRS
        U: RCPT TO:<bob@rcpt.test>
        R: 250 ok
        R: 250 ok
        S: 250 ok
        """
    )
    dropped = play.record("parameter_dropped")
    assert (dropped["parameter"], dropped["reason"]) == ("SIZE", "upstream does not offer SIZE")


def test_received_header_reduces_what_it_quotes_to_tokens(make_runtime: Any) -> None:
    """A client address the driver was told (e.g. by a PROXY header) cannot break the header."""
    rt = make_runtime(rules=[rule(recipient_encryption="none")], general={"received_header": True})
    Playbook(rt, client="[2001:db8::1 (x)]:25").play(
        f"""
        {GREETING}
        C: HELO client.test
        S: 250 mx.example.test
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 ok
        R: 250 ok
        S: 250 ok
        C: DATA
        U: DATA
        R: 354 go
        S: 354 End data with <CR><LF>.<CR><LF>
        C: .
        U: Received: from client.test ([[2001:db8::1?x?]])
        U: \tby mx.example.test (smtpgate) with SMTP
        U: \tid s1; {DATE}
        U: .
        """
    )


def test_client_not_taking_its_replies_ends_the_session_without_a_421(
    clear_rt: PolicyRuntime,
) -> None:
    """The driver cuts a client whose replies pile up (back-pressure) and says so."""
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        < lost client client_not_reading
        > close
        """
    )
    assert play.records("transaction") == []
    assert play.record("session_end")["reason"] == "client_not_reading"
    assert play.session.wait is None


def test_commands_are_read_in_pieces_the_core_takes(clear_rt: PolicyRuntime) -> None:
    session = Playbook(clear_rt).session
    wait = session.wait
    assert wait is not None and wait.max_bytes == clear_rt.limits.max_buffer // 2


# -- BDAT (RFC 3030) ----------------------------------------------------------------------------


def test_bdat_relayed_as_bdat_each_chunk_awaited_without_pipelining(
    clear_rt: PolicyRuntime,
) -> None:
    # The upstream offers CHUNKING but not PIPELINING: each chunk waits for its reply
    # before the next goes (RFC 2920), and the client's chunk gets its 250 only after.
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        R: 220 upstream.test ESMTP
        U: EHLO mx.example.test
        R: 250-upstream.test
        R: 250 CHUNKING
        U: MAIL FROM:<alice@sender.test>
        R: 250 2.1.0 sender ok
        U: RCPT TO:<bob@rcpt.test>
        R: 250 2.1.5 recipient ok
        S: 250 2.1.5 recipient ok
        C: BDAT 13
        C: Subject: hi
        U: BDAT 13
        U: Subject: hi
        R: 250 2.0.0 13 octets
        S: 250 2.0.0 Ok: 13 octets
        C: BDAT 3 LAST
        C: .
        U: BDAT 3
        U: .
        R: 250 2.0.0 3 octets
        U: BDAT 0 LAST
        R: 250 2.0.0 queued as 99
        S: 250 2.0.0 queued as 99
        """
    )
    delivered(play)
    assert play.record("transaction")["body_transfer"] == "bdat"


def test_bdat_converted_to_data_for_an_upstream_without_chunking(
    clear_rt: PolicyRuntime,
) -> None:
    play = Playbook(clear_rt).play(
        f"""
        {GREETING}
        {EHLO_CLEAR}
        {ENVELOPE}
        > open none
        < connected
        {UPSTREAM_HELLO}
        {UPSTREAM_ENVELOPE}
        R: 250 2.1.0 sender ok
        R: 250 2.1.5 recipient ok
        S: 250 2.1.5 recipient ok
        C: BDAT 13
        C: Subject: hi
        U: DATA
        R: 354 go ahead
        S: 250 2.0.0 Ok: 13 octets
        U: Subject: hi
        C: BDAT 3 LAST
        C: .
        U: ..
        U: .
        R: 250 2.0.0 queued as 98
        S: 250 2.0.0 queued as 98
        """
    )
    delivered(play)
    assert play.record("transaction")["body_transfer"] == "bdat-to-data"
