"""Next hops in the sans-IO session (issue 10): backups tried in order, MX routes
asked of the driver, null MX and DNS failures at RCPT, the 452 split by next hop
(see tests/proxy/playbook.py for the script language)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpgate.proxy.runtime import PolicyRuntime
from tests.proxy.helpers import rule
from tests.proxy.playbook import Playbook, runtime

START = """
    S: 220 mx.example.test ESMTP smtpgate
    C: HELO client.test
    S: 250 mx.example.test
    C: MAIL FROM:<alice@sender.test>
    S: 250 2.1.0 Ok
"""
UPSTREAM_HELLO = """
    R: 220 upstream.test ESMTP
    U: EHLO mx.example.test
    R: 250-upstream.test
    R: 250 PIPELINING
"""
UPSTREAM_HELLO_NO_STARTTLS = UPSTREAM_HELLO
UPSTREAM_HELLO_STARTTLS = """
    R: 220 upstream.test ESMTP
    U: EHLO mx.example.test
    R: 250-upstream.test
    R: 250-PIPELINING
    R: 250 STARTTLS
    U: STARTTLS
    R: 220 go ahead
    > starttls upstream
    < tls upstream
    U: EHLO mx.example.test
    R: 250-upstream.test
    R: 250 PIPELINING
"""
DELIVER = """
    C: DATA
    U: DATA
    R: 354 go
    S: 354 End data with <CR><LF>.<CR><LF>
    C: hi
    C: .
    U: hi
    U: .
    R: 250 2.0.0 queued
    S: 250 2.0.0 queued
"""


def opened(host: str) -> str:
    """A new leg in clear to ``host``, up to the upstream's EHLO answer."""
    return f"""
        > open none to {host}
        < connected
        {UPSTREAM_HELLO}
    """


def relayed(recipient: str) -> str:
    """MAIL and the RCPT for ``recipient`` pipelined upstream, both accepted: the
    client's RCPT gets 250."""
    return f"""
        U: MAIL FROM:<alice@sender.test>
        U: RCPT TO:<{recipient}>
        R: 250 ok
        R: 250 ok
        S: 250 ok
    """


@pytest.fixture
def mx_rt(state_dir: Path) -> PolicyRuntime:
    """``upstream = "mx"``; a.test, b.test, c.test in clear, secure.test TLS required."""
    return runtime(
        state_dir,
        policy={"upstream": "mx"},
        rules=[
            rule(recipient="secure.test", recipient_encryption="required"),
            rule(recipient_encryption="none"),
        ],
    )


@pytest.fixture
def backups_rt(state_dir: Path) -> PolicyRuntime:
    """A primary and a backup server, in clear."""
    return runtime(
        state_dir,
        policy={"upstream": ["primary.test:2526", "backup.test:2526"]},
        rules=[rule(recipient_encryption="none")],
    )


def test_the_backup_is_used_when_the_primary_refuses_connections(
    backups_rt: PolicyRuntime,
) -> None:
    play = Playbook(backups_rt).play(
        f"""
        {START}
        C: RCPT TO:<bob@rcpt.test>
        > open none to primary.test
        < connect failed Connection refused
        {opened("backup.test")}
        {relayed("bob@rcpt.test")}
        {DELIVER}
        """
    )
    failed = play.record("next_hop_failed")
    assert (failed["upstream"], failed["trying"]) == ("primary.test:2526", "backup.test:2526")
    assert failed["reason"] == "connect primary.test:2526: Connection refused"
    record = play.record("transaction")
    assert (record["outcome"], record["upstream"], record["next_hop_via"]) == (
        "delivered",
        "backup.test:2526",
        "configured",
    )
    assert record["mx_preference"] is None


def test_all_hosts_failing_is_451_4_4_1_naming_each(backups_rt: PolicyRuntime) -> None:
    play = Playbook(backups_rt).play(
        f"""
        {START}
        C: RCPT TO:<bob@rcpt.test>
        > open none to primary.test
        < connect failed Connection refused
        > open none to backup.test
        < connected
        R: 421 4.3.2 shutting down
        > abort
        S: 451 4.4.1 Upstream server unavailable, try later
        """
    )
    rejected = play.record("rcpt_rejected")
    assert rejected["reply"] == 451
    assert rejected["reason"] == (
        "all 2 next hops failed: primary.test:2526: connect primary.test:2526: "
        "Connection refused; backup.test:2526: upstream greeting 421 4.3.2 shutting down"
    )
    assert rejected["last_hop_reason"] == "upstream greeting 421 4.3.2 shutting down"


def test_mx_hosts_are_tried_in_the_order_of_the_route(mx_rt: PolicyRuntime) -> None:
    play = Playbook(mx_rt).play(
        f"""
        {START}
        C: RCPT TO:<bob@a.test>
        > resolve a.test
        < route mx1.a.test@10 mx2.a.test@20
        > open none to mx1.a.test
        < connect failed timed out
        {opened("mx2.a.test")}
        {relayed("bob@a.test")}
        {DELIVER}
        """
    )
    record = play.record("transaction")
    assert {k: record[k] for k in ("upstream", "next_hop_address", "mx_preference")} == {
        "upstream": "mx2.a.test:25",
        "next_hop_address": "192.0.2.2",
        "mx_preference": 20,
    }
    assert play.record("upstream_connected")["upstream"] == "mx2.a.test:25"


def test_implicit_mx_is_logged_as_such(mx_rt: PolicyRuntime) -> None:
    play = Playbook(mx_rt).play(
        f"""
        {START}
        C: RCPT TO:<bob@a.test>
        > resolve a.test
        < route a.test
        {opened("a.test")}
        {relayed("bob@a.test")}
        {DELIVER}
        """
    )
    record = play.record("transaction")
    assert (record["next_hop_via"], record["mx_preference"]) == ("implicit_mx", 0)


@pytest.mark.parametrize(
    ("answer", "reply"),
    [
        ("null-mx", "556 5.1.10 Recipient address has null MX"),
        (
            "dns-temporary",
            "451 4.4.3 Temporary DNS failure looking up the recipient domain, try later",
        ),
        ("no-domain", "550 5.1.2 Recipient domain does not exist"),
    ],
)
def test_a_recipient_without_route_gets_the_reply_and_nothing_is_opened(
    mx_rt: PolicyRuntime, answer: str, reply: str
) -> None:
    play = Playbook(mx_rt).play(
        f"""
        {START}
        C: RCPT TO:<bob@a.test>
        > resolve a.test
        < no route {answer} what DNS said
        S: {reply}
        C: RCPT TO:<carol@b.test>
        > resolve b.test
        < route mx.b.test@10
        {opened("mx.b.test")}
        {relayed("carol@b.test")}
        {DELIVER}
        """
    )
    rejected = play.record("rcpt_rejected")
    assert (rejected["recipient_domain"], rejected["reply"], rejected["reason"]) == (
        "a.test",
        int(reply[:3]),
        "what DNS said",
    )
    assert play.record("transaction")["recipient_domains"] == ["b.test"]


def test_recipients_with_other_next_hops_are_split_by_452(mx_rt: PolicyRuntime) -> None:
    """Same MX set (c.test is hosted where a.test is, listed in another order): same
    transaction; another MX set (b.test): ``452 4.5.3``, sent again later."""
    play = Playbook(mx_rt).play(
        f"""
        {START}
        C: RCPT TO:<bob@a.test>
        > resolve a.test
        < route mx1.host.test@10 mx2.host.test@10
        {opened("mx1.host.test")}
        {relayed("bob@a.test")}
        C: RCPT TO:<carol@b.test>
        > resolve b.test
        < route mx.b.test@10
        S: 452 4.5.3 Recipient needs another transaction, send it again separately
        C: RCPT TO:<dave@c.test>
        > resolve c.test
        < route mx2.host.test@10 mx1.host.test@10
        U: RCPT TO:<dave@c.test>
        R: 250 ok
        S: 250 ok
        {DELIVER}
        """
    )
    rejected = play.record("rcpt_rejected")
    assert (rejected["recipient_domain"], rejected["reply"]) == ("b.test", 452)
    assert rejected["reason"] == "its next hop mx.b.test:25 is not the transaction's"
    assert rejected["last_hop_reason"] == ""  # no next hop was tried for it
    record = play.record("transaction")
    assert record["recipient_domains"] == ["a.test", "c.test"]


def test_an_mx_host_without_starttls_is_skipped_when_tls_is_required(
    mx_rt: PolicyRuntime,
) -> None:
    """``required``: the first MX host offers no STARTTLS, so the second (which does)
    gets the mail; nothing goes to the first beyond EHLO."""
    play = Playbook(mx_rt).play(
        f"""
        {START}
        C: RCPT TO:<bob@secure.test>
        > resolve secure.test
        < route mx1.secure.test@10 mx2.secure.test@20
        > open required to mx1.secure.test
        < connected
        {UPSTREAM_HELLO_NO_STARTTLS}
        > abort
        > open required to mx2.secure.test
        < connected
        {UPSTREAM_HELLO_STARTTLS}
        {relayed("bob@secure.test")}
        {DELIVER}
        """
    )
    assert play.record("next_hop_failed")["reason"] == "upstream does not offer STARTTLS"
    record = play.record("transaction")
    assert (record["upstream"], record["upstream_tls"], record["tls_name"]) == (
        "mx2.secure.test:25",
        "TLSv1.3",
        "mx2.secure.test",
    )


def test_a_session_reuses_its_leg_for_the_next_transaction_to_the_same_mx(
    mx_rt: PolicyRuntime,
) -> None:
    play = Playbook(mx_rt).play(
        f"""
        {START}
        C: RCPT TO:<bob@a.test>
        > resolve a.test
        < route mx.a.test@10
        {opened("mx.a.test")}
        {relayed("bob@a.test")}
        {DELIVER}
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        C: RCPT TO:<carol@a.test>
        > resolve a.test
        < route mx.a.test@10
        {relayed("carol@a.test")}
        C: RSET
        U: RSET
        R: 250 ok
        S: 250 2.0.0 Ok
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        C: RCPT TO:<dave@b.test>
        > resolve b.test
        < route mx.b.test@10
        > release
        > open none to mx.b.test
        """
    )
    assert play.released is not None and play.released.target.host == "mx.a.test"


def test_a_dead_pooled_leg_is_replaced_on_the_same_next_hop(mx_rt: PolicyRuntime) -> None:
    """MX 10 is down; MX 20's parked leg turns out dead before MAIL was answered: the
    new connection goes to MX 20 again, not back to the start of the route."""
    play = Playbook(mx_rt).play(
        f"""
        {START}
        C: RCPT TO:<bob@a.test>
        > resolve a.test
        < route mx1.a.test@10 mx2.a.test@20
        > open none to mx1.a.test
        < connect failed Connection refused
        > open none to mx2.a.test
        < reused
        U: MAIL FROM:<alice@sender.test>
        U: RCPT TO:<bob@a.test>
        < lost upstream
        > abort
        {opened("mx2.a.test")}
        {relayed("bob@a.test")}
        """
    )
    assert play.records("rcpt_rejected") == []
