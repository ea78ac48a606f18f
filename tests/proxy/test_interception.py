"""``upstream = "transparent"`` without sockets: the sockaddr the kernel hands over,
the mail-loop check, the platform check, and the session that relays to the
original destination or refuses (tests/proxy/playbook.py for the scripts).
The same against real namespaces, nftables and TLS: tests/interop/test_transparent_netns.py."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

import pytest

from smtpgate.config.netaddr import HostPort
from smtpgate.proxy.interception import (
    REPLY_LOOP,
    REPLY_NOT_INTERCEPTED,
    Interception,
    intercepted,
    loops_back,
    not_intercepted,
    parse_sockaddr,
    platform_problem,
)
from smtpgate.proxy.pool import pool_key
from smtpgate.proxy.runtime import PolicyRuntime
from tests.proxy.helpers import rule
from tests.proxy.playbook import Playbook, runtime


def sockaddr_in(host: str, port: int) -> bytes:
    """``struct sockaddr_in`` as Linux writes it: family in host order, then network order."""
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + socket.inet_aton(host)
        + bytes(8)
    )


def sockaddr_in6(host: str, port: int, scope: int = 0) -> bytes:
    address = socket.inet_pton(socket.AF_INET6, host)
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, 0)
        + address
        + struct.pack("=I", scope)
    )


# -- the sockaddr ---------------------------------------------------------------------------


def test_sockaddr_in_is_the_ipv4_destination() -> None:
    assert parse_sockaddr(sockaddr_in("10.200.2.2", 25)) == HostPort("10.200.2.2", 25)
    # getsockopt returns the 16 bytes asked for; the parser reads what it needs.
    assert parse_sockaddr(sockaddr_in("192.0.2.1", 65535)[:8]) == HostPort("192.0.2.1", 65535)


def test_sockaddr_in6_is_the_ipv6_destination_in_its_short_form() -> None:
    raw = sockaddr_in6("fd00:200:2:0:0:0:0:2", 587, scope=3)
    assert len(raw) == 28
    assert parse_sockaddr(raw) == HostPort("fd00:200:2::2", 587)
    assert str(parse_sockaddr(raw)) == "[fd00:200:2::2]:587"


def test_an_ipv4_mapped_ipv6_destination_is_its_ipv4_address() -> None:
    assert parse_sockaddr(sockaddr_in6("::ffff:10.0.0.9", 25)) == HostPort("10.0.0.9", 25)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "a 0-byte sockaddr has no address family"),
        (b"\x02", "a 1-byte sockaddr has no address family"),
        (sockaddr_in("10.0.0.1", 25)[:6], f"a 6-byte sockaddr of address family {socket.AF_INET}"),
        (sockaddr_in6("::1", 25)[:20], f"a 20-byte sockaddr of address family {socket.AF_INET6}"),
        (struct.pack("=H", socket.AF_UNIX) + bytes(14), "a 16-byte sockaddr of address family 1"),
        (sockaddr_in("10.0.0.1", 0), "sockaddr of 10.0.0.1 has port 0"),
    ],
    ids=["empty", "no family", "short in", "short in6", "unix", "port 0"],
)
def test_what_is_no_destination_is_a_value_error(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_sockaddr(raw)
    assert str(info.value) == message


# -- the loop check -------------------------------------------------------------------------

LOCAL = HostPort("10.200.1.1", 2525)


def never_local(host: str) -> bool:
    raise AssertionError(f"asked whether {host} is local")


def test_a_destination_elsewhere_is_no_loop() -> None:
    listeners = [HostPort("0.0.0.0", 2525), HostPort("127.0.0.1", 2587)]
    # Port 25 matches no listener: whether the host is local is not even asked.
    assert not loops_back(
        HostPort("10.200.2.2", 25), listeners=listeners, local=LOCAL, is_local_address=never_local
    )


def test_a_connection_not_redirected_loops() -> None:
    """After a REDIRECT, a destination equal to the socket's own address was not rewritten:
    the client connected to smtpgate itself."""
    assert loops_back(LOCAL, listeners=[], local=LOCAL, is_local_address=never_local)


def test_a_destination_that_is_a_listener_loops() -> None:
    listeners = [HostPort("10.200.1.1", 2526)]
    assert loops_back(
        HostPort("10.200.1.1", 2526), listeners=listeners, local=None, is_local_address=never_local
    )


def test_an_address_of_this_machine_on_a_wildcard_listeners_port_loops() -> None:
    """Under TPROXY the local address is the destination; a wildcard listener's port on
    one of this machine's addresses is smtpgate, another host's is not."""
    listeners = [HostPort("0.0.0.0", 2525), HostPort("localhost", 2587)]
    mine = {"10.200.1.1", "127.0.0.1"}
    for destination, loops in [
        (HostPort("10.200.1.1", 2525), True),
        (HostPort("10.200.2.2", 2525), False),
        (HostPort("127.0.0.1", 2587), True),
        (HostPort("10.200.2.2", 2587), False),
    ]:
        assert (
            loops_back(
                destination, listeners=listeners, local=None, is_local_address=mine.__contains__
            )
            is loops
        ), destination


def test_refusals_carry_the_reply_and_the_reason() -> None:
    loop = intercepted(LOCAL, loops=True)
    assert (loop.destination, loop.reply) == (LOCAL, REPLY_LOOP)
    assert loop.refusal == "10.200.1.1:2525 is smtpgate's own listener"
    assert REPLY_LOOP == (421, "4.4.6 Mail loop: the original destination is smtpgate itself")
    missing = not_intercepted("no original destination: [Errno 2] No such file or directory")
    assert (missing.destination, missing.reply) == (None, REPLY_NOT_INTERCEPTED)
    assert REPLY_NOT_INTERCEPTED == (
        421,
        "4.3.5 No original destination: the connection was not intercepted",
    )
    assert intercepted(HostPort("10.200.2.2", 25), loops=False).reply is None


# -- the platform ---------------------------------------------------------------------------


def test_transparent_mode_is_refused_off_linux_with_the_reason() -> None:
    assert platform_problem("darwin", tproxy=False) == (
        'upstream = "transparent" needs Linux (netfilter SO_ORIGINAL_DST or TPROXY); this is darwin'
    )
    assert platform_problem("freebsd14", tproxy=True) is not None
    assert platform_problem("linux", tproxy=True) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux answer")
def test_this_linux_can() -> None:
    assert platform_problem(sys.platform, tproxy=True) is None


# -- the session ----------------------------------------------------------------------------

DESTINATION = HostPort("10.200.2.2", 25)


@pytest.fixture
def transparent_rt(state_dir: Path) -> PolicyRuntime:
    return runtime(
        state_dir,
        policy={"upstream": "transparent"},
        rules=[rule(recipient_encryption="none")],
    )


def test_the_session_relays_to_the_original_destination(transparent_rt: PolicyRuntime) -> None:
    book = Playbook(transparent_rt, interception=intercepted(DESTINATION, loops=False))
    assert book.record("session_start")["destination"] == "10.200.2.2:25"
    book.play(
        """
        S: 220 mx.example.test ESMTP smtpgate
        C: HELO client.test
        S: 250 mx.example.test
        C: MAIL FROM:<alice@sender.test>
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@rcpt.test>
        > open none
        """
    )
    assert book.target is not None
    assert (book.target.host, book.target.port, book.target.address) == (
        "10.200.2.2",
        25,
        "10.200.2.2:25",
    )
    # Parked legs are kept by destination: another destination's session never takes it.
    assert pool_key(book.target) == ("10.200.2.2", "", 25, book.target.mode, "")


@pytest.mark.parametrize(
    ("interception", "wire", "reason"),
    [
        (
            intercepted(LOCAL, loops=True),
            "421 4.4.6 Mail loop: the original destination is smtpgate itself",
            "10.200.1.1:2525 is smtpgate's own listener",
        ),
        (
            not_intercepted("no original destination: [Errno 2] No such file or directory"),
            "421 4.3.5 No original destination: the connection was not intercepted",
            "no original destination: [Errno 2] No such file or directory",
        ),
    ],
)
def test_nowhere_to_relay_is_refused_before_the_greeting(
    transparent_rt: PolicyRuntime, interception: Interception, wire: str, reason: str
) -> None:
    book = Playbook(transparent_rt, interception=interception)
    book.play(f"S: {wire}\n> close")
    assert book.session.closed
    assert book.record("interception_refused") == {
        "session": "s1",
        "client": "192.0.2.7:40000",
        "reason": reason,
        "reply": 421,
    }
    assert book.record("session_end")["reason"] == "interception_refused"


def test_an_outgoing_transparent_policy_compiles_without_a_host(state_dir: Path) -> None:
    """An outgoing action issues the client leg's leaf for the upstream's name; with no name
    known before the client connects, it is issued for the name the client asks by SNI."""
    rt = runtime(state_dir, policy={"upstream": "transparent"}, direction="outgoing")
    assert (rt.transparent, rt.upstream) == (True, "transparent")
    assert rt.client_tls_context.sni_callback is not None
    assert rt.own_listeners == (HostPort("127.0.0.1", 2525),)
    assert rt.route is None  # each session's route is its original destination
