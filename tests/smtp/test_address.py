"""Envelope addresses (RFC 5321 4.1.2, RFC 6531) and ESMTP parameters, through the server role."""

from __future__ import annotations

import pytest

from smtpgate.smtp import Address, AddressError, MailFrom, RcptTo, parse_path

from .conversation import converse, new_server

EHLO = """
S: 220 mx.test ESMTP
C: EHLO client.example
S: 250-mx.test
S: 250-PIPELINING
S: 250-SIZE 10485760
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250 DSN
"""


@pytest.mark.parametrize(
    ("path", "local", "domain"),
    [
        ("<alice@example.com>", "alice", "example.com"),
        ("<first.last+tag@sub.example.co.uk>", "first.last+tag", "sub.example.co.uk"),
        ('<"john doe"@example.com>', '"john doe"', "example.com"),
        ('<"a\\"b"@example.com>', '"a\\"b"', "example.com"),
        ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
        ("<user@[IPv6:2001:db8::1]>", "user", "[IPv6:2001:db8::1]"),
        ("<@relay.example,@other.example:user@example.com>", "user", "example.com"),
        ("<user@xn--bcher-kva.example>", "user", "xn--bcher-kva.example"),
    ],
)
def test_valid_paths(path: str, local: str, domain: str) -> None:
    address, params, raw = parse_path(path.encode(), allow_null=False)
    assert (address.local, address.domain) == (local, domain)
    assert params == () and raw == b""


def test_null_sender_and_postmaster() -> None:
    address, _, _ = parse_path(b"<>", allow_null=True)
    assert address.is_null and str(address) == ""
    with pytest.raises(AddressError):
        parse_path(b"<>", allow_null=False)
    postmaster, _, _ = parse_path(b"<Postmaster>", allow_null=False, allow_postmaster=True)
    assert postmaster.local == "Postmaster" and postmaster.domain == ""
    with pytest.raises(AddressError):
        parse_path(b"<Postmaster>", allow_null=True)


def test_utf8_addresses_need_smtputf8() -> None:
    server = new_server()
    events = converse(
        server,
        EHLO
        + """
        C: MAIL FROM:<jöran@bücher.example>
        S: 553 5.6.7 Non-ASCII address requires SMTPUTF8
        C: MAIL FROM:<jöran@bücher.example> SMTPUTF8
        S: 250 2.1.0 Ok
        C: RCPT TO:<用户@例子.测试>
        S: 250 2.1.5 Ok
        """,
    )
    assert isinstance(events[1], MailFrom)
    assert (events[1].sender.local, events[1].sender.domain) == ("jöran", "bücher.example")
    assert events[2].recipient.domain == "例子.测试"
    assert events[2].recipient.path == "<用户@例子.测试>".encode()


def test_utf8_recipient_without_smtputf8_mail() -> None:
    converse(
        new_server(),
        EHLO
        + """
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<josé@example.com>
        S: 250 2.1.0 Ok
        S: 553 5.6.7 Non-ASCII address requires SMTPUTF8
        """,
    )


@pytest.mark.parametrize(
    ("argument", "reply"),
    [
        ("alice@example.com", "501 5.5.2 Syntax error in mailbox address, expected <address>"),
        ("<alice@example.com", "501 5.5.2 Syntax error in mailbox address, expected <address>"),
        ("<alice@example.com>junk", "501 5.5.2 Syntax error after mailbox address"),
        ("<alice>", "553 5.1.3 Bad address syntax"),
        ("<alice@>", "553 5.1.3 Bad address syntax"),
        ("<@example.com>", "553 5.1.3 Bad address syntax"),
        ("<a..b@example.com>", "553 5.1.3 Bad address syntax"),
        ("<.a@example.com>", "553 5.1.3 Bad address syntax"),
        ("<a b@example.com>", "553 5.1.3 Bad address syntax"),
        ("<a@-example.com>", "553 5.1.3 Bad address syntax"),
        ("<a@exa_mple.com>", "553 5.1.3 Bad address syntax"),
        ("<a@[300.1]x>", "553 5.1.3 Bad address syntax"),
        (f"<{'x' * 65}@example.com>", "553 5.1.3 Address too long"),
        ("<a@example.com> =bad", "501 5.5.4 Invalid parameter '=bad'"),
    ],
)
def test_malformed_sender_is_501_or_553(argument: str, reply: str) -> None:
    server = new_server()
    events = converse(server, EHLO + f"C: MAIL FROM:{argument}\nS: {reply}")
    assert len(events) == 1  # only the Hello: the caller never sees a bad address
    assert server.errors == 1


def test_malformed_recipient_and_null_recipient() -> None:
    converse(
        new_server(),
        EHLO
        + """
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<>
        C: RCPT TO:<bob@>
        C: RCPT FROM:<bob@example.com>
        C: MAIL FROM <a@example.com>
        S: 250 2.1.0 Ok
        S: 553 5.1.3 Null address not allowed here
        S: 553 5.1.3 Bad address syntax
        S: 501 5.5.4 Syntax: RCPT TO:<address>
        S: 503 5.5.1 Nested MAIL command
        """,
    )


def test_space_after_colon_is_tolerated() -> None:
    events = converse(new_server(), EHLO + "C: MAIL FROM: <a@example.com>\nS: 250 2.1.0 Ok")
    assert events[1].sender == Address("a", "example.com", b"<a@example.com>")


def test_mail_and_rcpt_params_are_parsed_and_kept_verbatim() -> None:
    server = new_server()
    events = converse(
        server,
        EHLO
        + """
        C: MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME RET=HDRS ENVID=QQ314159 SMTPUTF8
        S: 250 2.1.0 Ok
        C: RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx@example.com
        S: 250 2.1.5 Ok
        C: RCPT TO:<c@example.com> notify=never
        S: 250 2.1.5 Ok
        """,
    )
    mail, rcpt, rcpt2 = events[1:]
    assert isinstance(mail, MailFrom) and isinstance(rcpt, RcptTo)
    assert mail.params == (
        ("SIZE", "1234"),
        ("BODY", "8BITMIME"),
        ("RET", "HDRS"),
        ("ENVID", "QQ314159"),
        ("SMTPUTF8", None),
    )
    assert mail.raw_params == b"SIZE=1234 BODY=8BITMIME RET=HDRS ENVID=QQ314159 SMTPUTF8"
    assert rcpt.params == (("NOTIFY", "SUCCESS,DELAY"), ("ORCPT", "rfc822;b+2Bx@example.com"))
    assert rcpt.raw_params == b"NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx@example.com"
    assert rcpt2.params == (("NOTIFY", "never"),) and rcpt2.raw_params == b"notify=never"


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:<a@example.com> SIZE=big", "501 5.5.4 Bad SIZE parameter"),
        ("MAIL FROM:<a@example.com> SIZE", "501 5.5.4 Bad SIZE parameter"),
        ("MAIL FROM:<a@example.com> BODY=9BIT", "501 5.5.4 Bad BODY parameter"),
        ("MAIL FROM:<a@example.com> RET=ALL", "501 5.5.4 Bad RET parameter"),
        ("MAIL FROM:<a@example.com> SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 takes no value"),
        ("MAIL FROM:<a@example.com> XFOO=1", "555 5.5.4 Unsupported parameter XFOO"),
        ("MAIL FROM:<a@example.com> NOTIFY=NEVER", "555 5.5.4 Unsupported parameter NOTIFY"),
    ],
)
def test_bad_mail_params(command: str, reply: str) -> None:
    converse(new_server(), EHLO + f"C: {command}\nS: {reply}")


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        ("NOTIFY=NEVER,SUCCESS", "501 5.5.4 Bad NOTIFY parameter"),
        ("NOTIFY=SOMETIMES", "501 5.5.4 Bad NOTIFY parameter"),
        ("NOTIFY", "501 5.5.4 Bad NOTIFY parameter"),
        ("SIZE=10", "555 5.5.4 Unsupported parameter SIZE"),
    ],
)
def test_bad_rcpt_params(params: str, reply: str) -> None:
    converse(
        new_server(),
        EHLO
        + f"""
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<b@example.com> {params}
        S: 250 2.1.0 Ok
        S: {reply}
        """,
    )


def test_invalid_utf8_in_an_address() -> None:
    server = new_server()
    converse(server, EHLO)
    server.receive_data(b"MAIL FROM:<a\xff@example.com>\r\n")
    assert server.next_event() is not None
    assert server.data_to_send() == b"501 5.5.2 Invalid UTF-8 in command\r\n"


@pytest.mark.parametrize(
    ("argument", "code"),
    [
        (b"alice@example.com", 501),  # no brackets: command syntax
        (b"<alice@example.com>x", 501),
        (b"<alice@example.com> SIZE=1 SIZE=2", 501),
        (b"<alice@@example.com>", 553),  # a mailbox we cannot take
        (b"<>", 553),
    ],
)
def test_address_errors_carry_their_reply_code(argument: bytes, code: int) -> None:
    """The server answers with the error's code, not one guessed from its text."""
    with pytest.raises(AddressError) as raised:
        parse_path(argument, allow_null=False)
    assert raised.value.code == code
    assert str(raised.value) == raised.value.text
