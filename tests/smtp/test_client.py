"""Client role (the upstream leg), as conversations: ``C:`` is what we send, ``S:`` the server."""

from __future__ import annotations

import pytest

from smtpgate.smtp import PAUSED, ClientConnection, ClientLimits, Reply, UpstreamProtocolError

from .conversation import converse, wire


def greeted_client() -> ClientConnection:
    client = ClientConnection()
    replies = converse(client, "S: 220 mx.upstream ESMTP ready")
    assert replies == [Reply(220, (b"mx.upstream ESMTP ready",), "greeting")]
    return client


def test_multiline_greeting_is_kept_verbatim() -> None:
    client = ClientConnection()
    replies = converse(
        client,
        """
        S: 220-mx.upstream ESMTP
        S: 220-  indented second line
        S: 220 last line
        """,
    )
    assert replies == [
        Reply(220, (b"mx.upstream ESMTP", b"  indented second line", b"last line"), "greeting")
    ]
    assert replies[0].text == "mx.upstream ESMTP /   indented second line / last line"


def test_ehlo_capabilities_are_parsed() -> None:
    client = greeted_client()
    client.send_ehlo("proxy.test")
    replies = converse(
        client,
        """
        C: EHLO proxy.test
        S: 250-mx.upstream greets proxy.test
        S: 250-pipelining
        S: 250-SIZE 35882577
        S: 250-AUTH PLAIN LOGIN
        S: 250-STARTTLS
        S: 250 8BITMIME
        """,
    )
    assert replies[0].command == "EHLO" and replies[0].lines[0] == b"mx.upstream greets proxy.test"
    assert client.esmtp and client.pipelining and client.offers_starttls
    assert client.capabilities == {
        "PIPELINING": "",
        "SIZE": "35882577",
        "AUTH": "PLAIN LOGIN",
        "STARTTLS": "",
        "8BITMIME": "",
    }


def test_helo_fallback_after_a_refused_ehlo() -> None:
    client = greeted_client()

    def fallback(c: ClientConnection, reply: Reply) -> None:
        if reply.command == "EHLO" and reply.code >= 500:
            c.send_helo("proxy.test")

    client.send_ehlo("proxy.test")
    replies = converse(
        client,
        """
        C: EHLO proxy.test
        S: 502 5.5.1 Command not implemented
        C: HELO proxy.test
        S: 250 mx.upstream
        """,
        fallback,
    )
    assert [(r.command, r.code) for r in replies] == [("EHLO", 502), ("HELO", 250)]
    assert not client.esmtp and client.capabilities == {} and not client.pipelining


def test_starttls_switch_discards_what_the_server_sent_after_220() -> None:
    client = greeted_client()
    client.send_ehlo("proxy.test")
    converse(client, "C: EHLO proxy.test\nS: 250-mx\nS: 250 STARTTLS")
    client.send_starttls()
    replies = converse(
        client,
        """
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        S: 250-injected
        S: 250 AUTH PLAIN
        """,
    )
    assert replies == [Reply(220, (b"2.0.0 Ready to start TLS",), "STARTTLS")]
    assert client.discarded_after_starttls == b"250-injected\r\n250 AUTH PLAIN\r\n"
    assert client.next_event() is PAUSED
    client.receive_data(b"250 more plaintext\r\n")  # later packet, still before the handshake
    assert client.next_event() is PAUSED
    client.tls_established()
    assert client.tls and client.capabilities == {} and not client.esmtp
    client.send_ehlo("proxy.test")
    replies = converse(client, "C: EHLO proxy.test\nS: 250-mx\nS: 250 PIPELINING")
    assert replies == [Reply(250, (b"mx", b"PIPELINING"), "EHLO")]
    assert client.discarded_after_starttls.endswith(b"250 more plaintext\r\n")


def test_refused_starttls_does_not_pause() -> None:
    client = greeted_client()
    client.send_starttls()
    replies = converse(client, "C: STARTTLS\nS: 454 4.7.0 TLS not available\n")
    assert replies[0].code == 454
    client.send_noop()
    converse(client, "C: NOOP\nS: 250 ok")


def test_pipelined_transaction_with_dot_stuffed_body() -> None:
    client = greeted_client()
    client.send_mail(b"<a@example.com>", b"SIZE=42 BODY=8BITMIME")
    client.send_rcpt(b"<b@example.com>", b"NOTIFY=NEVER")
    client.send_rcpt(b"<c@example.com>")
    client.send_data()
    assert client.waiting == 4
    replies = converse(
        client,
        """
        C: MAIL FROM:<a@example.com> SIZE=42 BODY=8BITMIME
        C: RCPT TO:<b@example.com> NOTIFY=NEVER
        C: RCPT TO:<c@example.com>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 550 5.1.1 Unknown
        S: 354 go ahead
        """,
    )
    assert [(r.command, r.code) for r in replies] == [
        ("MAIL", 250),
        ("RCPT", 250),
        ("RCPT", 550),
        ("DATA", 354),
    ]
    client.send_body(b".first line starts with a dot\r\nsecond\r\n.")
    client.send_body(memoryview(b"third line\r\n"))
    client.send_body(b".\r\n")
    client.send_end_of_data()
    replies = converse(
        client,
        """
        C: ..first line starts with a dot
        C: second
        C: ..third line
        C: ..
        C: .
        S: 250 2.0.0 queued as 1234
        """,
    )
    assert replies == [Reply(250, (b"2.0.0 queued as 1234",), ".")]
    assert client.waiting == 0


def test_end_of_data_adds_the_missing_crlf() -> None:
    client = greeted_client()
    client.send_data()
    converse(client, "C: DATA\nS: 354 go")
    client.send_body(b"no newline at the end")
    client.send_end_of_data()
    assert wire(client) == b"no newline at the end\r\n.\r\n"


def test_rset_noop_quit() -> None:
    client = greeted_client()
    client.send_rset()
    client.send_noop()
    client.send_quit()
    replies = converse(
        client,
        """
        C: RSET
        C: NOOP
        C: QUIT
        S: 250 2.0.0 Ok
        S: 250 2.0.0 Ok
        S: 221 2.0.0 Bye
        """,
    )
    assert [r.command for r in replies] == ["RSET", "NOOP", "QUIT"]


def test_replies_split_anywhere_and_bare_lf() -> None:
    client = ClientConnection()
    raw = b"220-a\n220 b\r\n"
    for i in range(len(raw)):
        client.receive_data(raw[i : i + 1])
        event = client.next_event()
        if i < len(raw) - 1:
            assert event is not PAUSED and not isinstance(event, Reply)
    assert event == Reply(220, (b"a", b"b"), "greeting")


def test_commands_with_line_breaks_are_refused() -> None:
    client = greeted_client()
    with pytest.raises(ValueError):
        client.send_mail(b"<a@example.com>\r\nRCPT TO:<x@example.com>")
    with pytest.raises(RuntimeError):
        client.send_body(b"x")
    with pytest.raises(RuntimeError):
        client.send_end_of_data()


@pytest.mark.parametrize(
    "raw",
    [
        b"hello\r\n",
        b"22\r\n",
        b"2x0 hi\r\n",
        b"650 hi\r\n",
        b"250_hi\r\n",
        b"220-a\r\n250 b\r\n",
        b"220 hi\r\n250 unasked\r\n",
    ],
)
def test_malformed_replies_raise(raw: bytes) -> None:
    client = ClientConnection()
    client.receive_data(raw)
    with pytest.raises(UpstreamProtocolError):
        while True:
            client.next_event()


def test_reply_limits() -> None:
    client = ClientConnection(ClientLimits(max_reply_line=50, max_reply_lines=3))
    client.receive_data(b"220 " + b"x" * 60)  # no newline yet, already too long
    with pytest.raises(UpstreamProtocolError):
        client.next_event()
    client = ClientConnection(ClientLimits(max_reply_line=50, max_reply_lines=3))
    client.receive_data(b"220 " + b"x" * 60 + b"\r\n")
    with pytest.raises(UpstreamProtocolError):
        client.next_event()
    client = ClientConnection(ClientLimits(max_reply_line=50, max_reply_lines=3))
    client.receive_data(b"220-a\r\n220-b\r\n220-c\r\n220 d\r\n")
    with pytest.raises(UpstreamProtocolError):
        client.next_event()
    client = ClientConnection(ClientLimits(max_buffer=100))
    with pytest.raises(UpstreamProtocolError):
        client.receive_data(b"220-" + b"x" * 40 + b"\r\n" + b"220-x\r\n" * 20)
