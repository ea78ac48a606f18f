"""Issue 6: input found by hostile clients, as conversations with the server role, and
the parameter table both legs share."""

from __future__ import annotations

import pytest

from smtpgate.smtp import Hello, ServerConnection
from smtpgate.smtp.address import is_hello_name
from smtpgate.smtp.extensions import MAIL_PARAMETERS, RCPT_PARAMETERS, offered_parameters

from .conversation import AcceptAll, converse, new_server, pump

GREETED = """
S: 220 mx.test ESMTP
C: EHLO client.example
S: 250-mx.test
S: 250-PIPELINING
S: 250-SIZE 10485760
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250 DSN
"""


def greeted() -> ServerConnection:
    server = new_server()
    converse(server, GREETED)
    return server


# --- the EHLO/HELO argument: an RFC 5321 domain or address literal ----------------------------


@pytest.mark.parametrize(
    "name",
    [
        "mail.example.com",
        "localhost",
        "x",
        "MX-1.Example.ORG",
        "a" * 63 + ".example",
        "[192.0.2.1]",
        "[IPv6:2001:db8::1]",
        "[ipv6:::ffff:192.0.2.1]",
    ],
)
@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
def test_hello_accepts_a_domain_or_address_literal(verb: str, name: str) -> None:
    server = new_server()
    server.receive_data(f"{verb} {name}\r\n".encode())
    assert pump(server, AcceptAll()) == [Hello(verb == "EHLO", name)]


@pytest.mark.parametrize(
    "name",
    [
        b"x\r.\rMAIL",  # bare CRs that would land in the Received: header upstream
        b"a\x00b",
        b"a\tb",
        b"a(b)",
        b"a;b",
        b"under_score.example",
        b"-leading.example",
        b"trailing-.example",
        b"trailing.dot.",
        b"two..dots",
        b"a" * 64 + b".example",  # a label over 63 octets
        (b"a" * 62 + b".") * 4 + b"example",  # over 255 octets
        b"b\xc3\xbccher.example",  # a U-label: the greeting precedes SMTPUTF8
        b"\xff",
        b"[192.0.2]",
        b"[192.0.2.256]",
        b"[IPv6:fe80::1%eth0]",
        b"[IPv6:2001:db8::g]",
        b"[tag:anything]",
        b"[192.0.2.1",
    ],
)
@pytest.mark.parametrize("verb", [b"EHLO", b"HELO"])
def test_hello_refuses_anything_else_with_501(verb: bytes, name: bytes) -> None:
    server = new_server()
    server.data_to_send()  # the banner
    server.receive_data(verb + b" " + name + b"\r\nNOOP\r\n")
    assert pump(server, AcceptAll()) == []
    assert server.data_to_send() == (
        b"501 5.5.4 Syntax: " + verb + b" hostname\r\n250 2.0.0 Ok\r\n"
    )
    assert not is_hello_name(name)


def test_refused_hello_leaves_the_session_ungreeted() -> None:
    converse(
        new_server(),
        """
        S: 220 mx.test ESMTP
        C: EHLO bad_name
        S: 501 5.5.4 Syntax: EHLO hostname
        C: MAIL FROM:<a@example.com>
        S: 503 5.5.1 Send HELO/EHLO first
        C: EHLO good-name
        S: 250-mx.test
        S: 250 PIPELINING
        """,
        AcceptAll(keywords=["PIPELINING"]),
    )


# --- a parameter given twice ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ("SIZE=1 SIZE=2", "SIZE"),
        ("size=1 SIZE=1", "SIZE"),
        ("RET=FULL RET=HDRS", "RET"),
        ("BODY=8BITMIME SMTPUTF8 BODY=7BIT", "BODY"),
        ("SMTPUTF8 SMTPUTF8", "SMTPUTF8"),
        ("ENVID=a RET=FULL ENVID=b", "ENVID"),
    ],
)
def test_repeated_mail_parameter_is_refused(params: str, key: str) -> None:
    converse(
        greeted(),
        f"""
        C: MAIL FROM:<a@example.com> {params}
        S: 501 5.5.4 Duplicate parameter {key}
        C: MAIL FROM:<a@example.com> {params.split(" ")[0]}
        S: 250 2.1.0 Ok
        """,
    )


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ("NOTIFY=NEVER NOTIFY=SUCCESS", "NOTIFY"),
        ("ORCPT=rfc822;a@example.com orcpt=rfc822;b@example.com", "ORCPT"),
    ],
)
def test_repeated_rcpt_parameter_is_refused(params: str, key: str) -> None:
    converse(
        greeted(),
        f"""
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<b@example.com> {params}
        C: RCPT TO:<b@example.com> {params.split(" ")[0]}
        S: 250 2.1.0 Ok
        S: 501 5.5.4 Duplicate parameter {key}
        S: 250 2.1.5 Ok
        """,
    )


# --- the parameter table both legs use --------------------------------------------------------


def test_offered_parameters_keeps_verbatim_and_names_what_it_leaves_out() -> None:
    raw = b"SIZE=100 body=8BITMIME RET=HDRS ENVID=x SMTPUTF8"
    kept, dropped = offered_parameters(raw, MAIL_PARAMETERS, {"SIZE": "", "8BITMIME": ""})
    assert kept == b"SIZE=100 body=8BITMIME"
    assert dropped == [("RET", "DSN"), ("ENVID", "DSN"), ("SMTPUTF8", "SMTPUTF8")]
    kept, dropped = offered_parameters(b"NOTIFY=NEVER ORCPT=rfc822;a@b", RCPT_PARAMETERS, {})
    assert (kept, dropped) == (b"", [("NOTIFY", "DSN"), ("ORCPT", "DSN")])
    assert offered_parameters(b"", MAIL_PARAMETERS, {}) == (b"", [])


def test_client_leg_refuses_what_the_table_says_was_not_offered() -> None:
    # The same table decides the client leg's 555: without DSN in our EHLO, RET is unknown.
    server = new_server()
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        S: 250-mx.test
        S: 250 SIZE 1000
        C: MAIL FROM:<a@example.com> RET=FULL
        S: 555 5.5.4 Unsupported parameter RET
        """,
        AcceptAll(keywords=["SIZE 1000"]),
    )
