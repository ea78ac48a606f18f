"""Server role (the client leg): every command and error path, as conversations."""

from __future__ import annotations

import pytest

from smtpgate.smtp import (
    NEED_DATA,
    PAUSED,
    BodyChunk,
    BodyEnd,
    BodyInvalid,
    ConnectionClosed,
    DataRequested,
    Hello,
    MailFrom,
    RcptTo,
    Reset,
    ServerConnection,
    ServerLimits,
    StartTLSRequested,
)
from smtpgate.smtp.server import LocalProtocolError, State

from .conversation import AcceptAll, body_of, converse, new_server, pump

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


def ready(**kwargs: object) -> object:
    server = new_server(**kwargs)  # type: ignore[arg-type]
    converse(server, EHLO)
    return server


# -- greeting, EHLO, HELO -------------------------------------------------------------------


def test_greeting_and_ehlo_capabilities_come_from_the_caller() -> None:
    server = new_server()
    events = converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        S: 250-mx.test
        S: 250-PIPELINING
        S: 250 X-CUSTOM 42
        """,
        AcceptAll(keywords=["PIPELINING", "X-CUSTOM 42"]),
    )
    assert events == [Hello(esmtp=True, name="client.example")]
    assert server.esmtp and server.state is State.READY


def test_helo_is_not_esmtp_and_params_are_refused() -> None:
    server = new_server()
    events = converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: HELO client.example
        S: 250 mx.test
        C: MAIL FROM:<a@example.com> SIZE=100
        S: 555 5.5.4 Unsupported parameter SIZE
        C: MAIL FROM:<a@example.com>
        S: 250 2.1.0 Ok
        """,
    )
    assert events[0] == Hello(esmtp=False, name="client.example")
    assert not server.esmtp


@pytest.mark.parametrize("line", ["EHLO", "EHLO ", "HELO", "EHLO two words"])
def test_hello_without_a_single_name_is_a_syntax_error(line: str) -> None:
    verb = line.split()[0]
    events = converse(
        new_server(),
        f"""
        S: 220 mx.test ESMTP
        C: {line}
        S: 501 5.5.4 Syntax: {verb} hostname
        """,
    )
    assert events == []


def test_refused_ehlo_leaves_the_session_ungreeted() -> None:
    server = new_server()
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        S: 502 5.5.1 ESMTP disabled
        C: MAIL FROM:<a@example.com>
        S: 503 5.5.1 Send HELO/EHLO first
        C: HELO client.example
        S: 250 mx.test
        """,
        AcceptAll(answers={Hello: lambda e: (502, "5.5.1 ESMTP disabled") if e.esmtp else None}),
    )
    assert server.state is State.READY and not server.esmtp


def test_commands_are_case_insensitive_and_accept_bare_lf() -> None:
    server = new_server()
    server.receive_data(b"ehlo client.example\nnoop\r\n")
    events = []

    events = pump(server, AcceptAll(keywords=[]))
    assert events == [Hello(True, "client.example")]
    assert server.data_to_send() == b"220 mx.test ESMTP\r\n250 mx.test\r\n250 2.0.0 Ok\r\n"


# -- NOOP, HELP, VRFY, unknown, QUIT ---------------------------------------------------------


def test_noop_help_vrfy_need_no_caller() -> None:
    events = converse(
        new_server(),
        """
        S: 220 mx.test ESMTP
        C: NOOP
        S: 250 2.0.0 Ok
        C: HELP
        S: 214 2.0.0 See RFC 5321
        C: VRFY postmaster
        S: 252 2.5.0 Cannot VRFY user, but will accept message
        C: VRFY
        S: 501 5.5.4 Syntax: VRFY address
        """,
    )
    assert events == []


def test_vrfy_disabled_is_502() -> None:
    converse(
        new_server(limits=ServerLimits(vrfy=False)),
        """
        S: 220 mx.test ESMTP
        C: VRFY someone
        S: 502 5.5.1 VRFY disabled
        """,
    )


def test_unknown_and_unimplemented_commands() -> None:
    server = new_server()
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: FROB x
        S: 500 5.5.2 Command not recognized
        C: EXPN staff
        S: 502 5.5.1 Command not implemented
        C: BDAT 10 LAST
        S: 502 5.5.1 Command not implemented
        """,
    )
    assert server.errors == 3


def test_quit_closes_and_ignores_what_follows() -> None:
    server = new_server()
    events = converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: QUIT
        C: NOOP
        S: 221 2.0.0 Bye
        C: NOOP
        """,
    )
    assert events == [ConnectionClosed("quit")]
    assert server.state is State.CLOSED


# -- the transaction -------------------------------------------------------------------------


def test_one_message_step_by_step() -> None:
    server = ready()
    events = converse(
        server,
        """
        C: MAIL FROM:<alice@example.com>
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@example.org>
        S: 250 2.1.5 Ok
        C: RCPT TO:<carol@example.org>
        S: 250 2.1.5 Ok
        C: DATA
        S: 354 End data with <CR><LF>.<CR><LF>
        C: Subject: hi
        C:
        C: ..leading dot
        C: .
        S: 250 2.0.0 Ok: queued
        C: QUIT
        S: 221 2.0.0 Bye
        """,
    )
    kinds = [type(e) for e in events if not isinstance(e, BodyChunk)]
    assert kinds == [MailFrom, RcptTo, RcptTo, DataRequested, BodyEnd, ConnectionClosed]
    assert str(events[0].sender) == "alice@example.com"
    assert [str(e.recipient) for e in events if isinstance(e, RcptTo)] == [
        "bob@example.org",
        "carol@example.org",
    ]
    assert body_of(events) == b"Subject: hi\r\n\r\n.leading dot\r\n"


def test_pipelined_transaction_replies_in_order() -> None:
    server = ready()
    events = converse(
        server,
        """
        C: MAIL FROM:<alice@example.com>
        C: RCPT TO:<bob@example.org>
        C: RCPT TO:<nobody@example.org>
        C: RCPT TO:<carol@example.org>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 550 5.1.1 No such user
        S: 250 2.1.5 Ok
        S: 354 End data with <CR><LF>.<CR><LF>
        C: body
        C: .
        C: MAIL FROM:<>
        C: RCPT TO:<postmaster>
        C: RSET
        C: NOOP
        S: 250 2.0.0 Ok: queued
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 250 2.0.0 Ok
        S: 250 2.0.0 Ok
        """,
        AcceptAll(
            answers={
                RcptTo: lambda e: (
                    (550, "5.1.1 No such user") if e.recipient.local == "nobody" else None
                )
            }
        ),
    )
    assert server.recipients == 0 and server.state is State.READY
    assert [type(e) for e in events].count(BodyEnd) == 1
    assert isinstance(events[-1], Reset)
    assert body_of(events) == b"body\r\n"


def test_pipelined_commands_wait_for_the_answer_to_the_one_before() -> None:
    server = ready()
    server.receive_data(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    event = server.next_event()
    assert isinstance(event, MailFrom)
    with pytest.raises(LocalProtocolError):
        server.next_event()  # MAIL is still waiting for its answer
    server.reply(550, "5.7.1 Sender refused")
    # The rejected MAIL means RCPT and DATA are out of sequence, judged on that answer.

    assert pump(server, AcceptAll()) == []
    assert server.data_to_send() == (
        b"550 5.7.1 Sender refused\r\n"
        b"503 5.5.1 Need MAIL command\r\n"
        b"503 5.5.1 Need RCPT command\r\n"
    )


def test_rset_drops_the_transaction() -> None:
    server = ready()
    events = converse(
        server,
        """
        C: MAIL FROM:<a@example.com>
        S: 250 2.1.0 Ok
        C: RSET
        S: 250 2.0.0 Ok
        C: RCPT TO:<b@example.com>
        S: 503 5.5.1 Need MAIL command
        C: RSET extra
        S: 501 5.5.4 Syntax: RSET
        """,
    )
    assert [type(e) for e in events] == [MailFrom, Reset]


def test_ehlo_in_a_transaction_resets_it() -> None:
    server = ready()
    converse(
        server,
        """
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<b@example.com>
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        C: HELO again.example
        S: 250 mx.test
        C: DATA
        S: 503 5.5.1 Need RCPT command
        """,
    )
    assert server.recipients == 0


# -- sequence errors -------------------------------------------------------------------------


def test_sequence_errors_are_503() -> None:
    server = new_server()
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: MAIL FROM:<a@example.com>
        S: 503 5.5.1 Send HELO/EHLO first
        C: RCPT TO:<b@example.com>
        S: 503 5.5.1 Need MAIL command
        C: DATA
        S: 503 5.5.1 Need RCPT command
        C: EHLO c.example
        S: 250-mx.test
        S: 250-PIPELINING
        S: 250-SIZE 10485760
        S: 250-8BITMIME
        S: 250-SMTPUTF8
        S: 250 DSN
        C: MAIL FROM:<a@example.com>
        S: 250 2.1.0 Ok
        C: MAIL FROM:<a@example.com>
        S: 503 5.5.1 Nested MAIL command
        """,
    )
    assert server.errors == 4


def test_data_without_valid_recipients_is_554() -> None:
    converse(
        ready(),
        """
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<b@example.com>
        C: DATA
        S: 250 2.1.0 Ok
        S: 550 5.1.1 No
        S: 554 5.5.1 No valid recipients
        C: DATA now
        S: 501 5.5.4 Syntax: DATA
        """,
        AcceptAll(answers={RcptTo: (550, "5.1.1 No")}),
    )


def test_data_refused_by_the_caller_keeps_the_transaction() -> None:
    server = ready()
    converse(
        server,
        """
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<b@example.com>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 451 4.3.0 Upstream unavailable
        """,
        AcceptAll(answers={DataRequested: (451, "4.3.0 Upstream unavailable")}),
    )
    assert server.state is State.RCPT


# -- limits ----------------------------------------------------------------------------------


def test_max_recipients_gives_452_4_5_3_without_asking_the_caller() -> None:
    server = ready(limits=ServerLimits(max_recipients=2))
    events = converse(
        server,
        """
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<one@example.com>
        C: RCPT TO:<two@example.com>
        C: RCPT TO:<three@example.com>
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 250 2.1.5 Ok
        S: 452 4.5.3 Too many recipients
        """,
    )
    assert [str(e.recipient) for e in events if isinstance(e, RcptTo)] == [
        "one@example.com",
        "two@example.com",
    ]
    assert server.errors == 0  # not the client's fault: it retries them later


def test_refused_recipients_do_not_count_towards_the_limit() -> None:
    server = ready(limits=ServerLimits(max_recipients=1))
    converse(
        server,
        """
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<no@example.com>
        C: RCPT TO:<yes@example.com>
        C: RCPT TO:<more@example.com>
        S: 250 2.1.0 Ok
        S: 550 5.1.1 No
        S: 250 2.1.5 Ok
        S: 452 4.5.3 Too many recipients
        """,
        AcceptAll(
            answers={RcptTo: lambda e: (550, "5.1.1 No") if e.recipient.local == "no" else None}
        ),
    )


def test_size_parameter_over_the_limit_is_552() -> None:
    server = ready(limits=ServerLimits(max_message_size=1000))
    events = converse(
        server,
        """
        C: MAIL FROM:<a@example.com> SIZE=1001
        S: 552 5.3.4 Message size exceeds fixed maximum message size
        C: MAIL FROM:<a@example.com> SIZE=1000
        S: 250 2.1.0 Ok
        """,
    )
    assert events[0].params == (("SIZE", "1000"),)


def test_too_many_errors_is_421_and_closed() -> None:
    server = new_server(limits=ServerLimits(max_errors=3))
    events = converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: BAD1
        C: BAD2
        C: BAD3
        C: NOOP
        S: 500 5.5.2 Command not recognized
        S: 500 5.5.2 Command not recognized
        S: 500 5.5.2 Command not recognized
        S: 421 4.7.0 Too many errors, closing connection
        C: NOOP
        """,
    )
    assert events == [ConnectionClosed("4.7.0 Too many errors, closing connection")]
    assert server.state is State.CLOSED


def test_overlong_command_line_is_500_and_the_session_goes_on() -> None:
    server = ready(limits=ServerLimits(max_command_line=64))
    long_line = "NOOP " + "x" * 80
    converse(
        server,
        f"""
        C: {long_line}
        C: NOOP
        S: 500 5.5.2 Line too long
        S: 250 2.0.0 Ok
        """,
    )
    # An overlong line that arrives in pieces without its newline gets one reply, not one per piece.
    for _ in range(3):
        server.receive_data(b"y" * 50)
    server.receive_data(b"y\r\nNOOP\r\n")

    assert pump(server, AcceptAll()) == []
    assert server.data_to_send() == b"500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n"
    assert server.state is State.READY


def test_a_command_line_at_the_limit_is_fine() -> None:
    server = ready(limits=ServerLimits(max_command_line=30))
    exact = "NOOP " + "x" * 23  # 28 characters + CRLF = 30
    converse(server, f"C: {exact}\nS: 250 2.0.0 Ok\nC: {exact}x\nS: 500 5.5.2 Line too long")


def test_flooding_pipeline_is_421() -> None:
    server = ready(limits=ServerLimits(max_buffer=1024))
    server.receive_data(b"MAIL FROM:<a@example.com>\r\n" + b"NOOP\r\n" * 400)

    events = pump(server, AcceptAll())
    assert isinstance(events[-1], ConnectionClosed)
    assert server.data_to_send().endswith(
        b"421 4.7.0 Too much pipelined input, closing connection\r\n"
    )


# -- STARTTLS --------------------------------------------------------------------------------


def tls_ready() -> object:
    server = new_server()
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        S: 250-mx.test
        S: 250 STARTTLS
        """,
        AcceptAll(keywords=[], starttls=True),
    )
    return server


def test_starttls_is_a_protocol_switch() -> None:
    server = tls_ready()
    events = converse(
        server,
        """
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        """,
    )
    assert events == [StartTLSRequested()]
    assert server.next_event() is PAUSED
    server.tls_established()
    assert server.tls and server.state is State.INIT
    converse(
        server,
        """
        C: MAIL FROM:<a@example.com>
        S: 503 5.5.1 Send HELO/EHLO first
        C: EHLO client.example
        S: 250-mx.test
        S: 250 AUTH PLAIN
        C: STARTTLS
        S: 503 5.5.1 TLS already active
        """,
        AcceptAll(keywords=["AUTH PLAIN"], starttls=True),
    )


def test_plaintext_pipelined_after_starttls_is_discarded() -> None:
    server = tls_ready()
    events = converse(
        server,
        """
        C: STARTTLS
        C: RSET
        C: MAIL FROM:<attacker@example.com>
        S: 220 2.0.0 Ready to start TLS
        """,
    )
    assert events == [StartTLSRequested()]
    assert server.discarded_after_starttls == b"RSET\r\nMAIL FROM:<attacker@example.com>\r\n"
    # Plaintext that arrives in a later packet, before the handshake, is not kept either.
    server.receive_data(b"RCPT TO:<victim@example.com>\r\n")
    assert server.next_event() is PAUSED
    assert server.data_to_send() == b""
    server.tls_established()
    converse(server, "C: NOOP\nS: 250 2.0.0 Ok")
    assert server.discarded_after_starttls.endswith(b"RCPT TO:<victim@example.com>\r\n")


def test_starttls_refused_by_the_caller_or_not_offered() -> None:
    server = tls_ready()
    converse(
        server,
        """
        C: STARTTLS
        S: 454 4.7.0 TLS not available
        C: STARTTLS now
        S: 501 5.5.4 Syntax: STARTTLS
        """,
        AcceptAll(answers={StartTLSRequested: (454, "4.7.0 TLS not available")}),
    )
    assert server.state is State.READY and not server.tls
    converse(
        ready(),
        """
        C: STARTTLS
        S: 502 5.5.1 STARTTLS not available
        """,
    )


def test_accept_starttls_out_of_turn_is_a_caller_bug() -> None:
    server = ready()
    with pytest.raises(LocalProtocolError):
        server.accept_starttls()
    with pytest.raises(LocalProtocolError):
        server.tls_established()
    with pytest.raises(LocalProtocolError):
        server.reply(250, "Ok")


# -- DATA ------------------------------------------------------------------------------------


def in_data(**limits: object) -> object:
    server = ready(limits=ServerLimits(**limits))  # type: ignore[arg-type]
    converse(
        server,
        """
        C: MAIL FROM:<a@example.com>
        C: RCPT TO:<b@example.com>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 354 End data with <CR><LF>.<CR><LF>
        """,
    )
    return server


def test_empty_body() -> None:
    events = converse(in_data(), "C: .\nS: 250 2.0.0 Ok: queued")
    assert events == [BodyEnd()]


def test_end_of_data_only_on_crlf_dot_crlf() -> None:
    server = in_data(bare_newline="normalize")

    server.receive_data(b"a\n.\nb\r.\rc\r\n. \r\n.x\r\n")
    assert all(isinstance(e, BodyChunk) for e in pump(server, AcceptAll()))
    assert server.data_to_send() == b""
    events = converse(server, "C: .\nS: 250 2.0.0 Ok: queued")
    assert isinstance(events[-1], BodyEnd)


def test_bare_lf_rejected_at_the_real_end_of_data() -> None:
    server = in_data()

    server.receive_data(b"line one\nline two\r\n")
    events = pump(server, AcceptAll())
    assert events == [
        BodyInvalid(550, "5.6.0 Message contains bare CR or LF; use CRLF line endings")
    ]
    assert server.data_to_send() == b""  # nothing until the client's final dot
    events = converse(
        server,
        """
        C: more
        C: .
        C: NOOP
        S: 550 5.6.0 Message contains bare CR or LF; use CRLF line endings
        S: 250 2.0.0 Ok
        """,
    )
    assert events == []
    assert server.state is State.READY


def test_bare_lf_normalized() -> None:
    server = in_data(bare_newline="normalize")

    server.receive_data(b"one\ntwo\rthree\r\n.\r\n")
    events = pump(server, AcceptAll())
    assert body_of(events) == b"one\r\ntwo\r\nthree\r\n"
    assert isinstance(events[-1], BodyEnd)


def test_message_size_limit_while_streaming() -> None:
    server = in_data(max_message_size=100)

    events = []
    for _ in range(5):
        server.receive_data(b"x" * 40 + b"\r\n")
        events += pump(server, AcceptAll())
    assert BodyInvalid(552, "5.3.4 Message size exceeds fixed maximum message size") in events
    assert len(body_of(events)) <= 100
    converse(
        server,
        """
        C: .
        S: 552 5.3.4 Message size exceeds fixed maximum message size
        """,
    )


def test_data_line_length_limit() -> None:
    server = in_data(max_data_line=100)
    ok_line = "y" * 98
    events = converse(server, f"C: {ok_line}\nC: .\nS: 250 2.0.0 Ok: queued")
    assert body_of(events) == ok_line.encode() + b"\r\n"
    server = in_data(max_data_line=100)
    converse(server, f"C: {ok_line}y\nC: .\nS: 550 5.6.0 Message line too long")


def test_a_megabyte_body_in_16k_pieces_comes_out_in_several_chunks() -> None:
    server = in_data(max_message_size=4 * 1024 * 1024)
    line = b"." + b"z" * 68 + b"\r\n"
    body = line * (1024 * 1024 // len(line) + 1)
    wire = body.replace(b"\r\n.", b"\r\n..")
    wire = b"." + wire + b".\r\n"

    events = []
    for i in range(0, len(wire), 16 * 1024):
        server.receive_data(wire[i : i + 16 * 1024])
        events += pump(server, AcceptAll())
    chunks = [e for e in events if isinstance(e, BodyChunk)]
    assert len(chunks) > 1
    assert max(len(c.data) for c in chunks) <= 16 * 1024 + 8
    assert body_of(events) == body
    assert isinstance(events[-1], BodyEnd)


def test_commands_pipelined_after_end_of_data_are_parsed() -> None:
    server = in_data()
    events = converse(
        server,
        """
        C: hello
        C: .
        C: MAIL FROM:<c@example.com>
        S: 250 2.0.0 Ok: queued
        S: 250 2.1.0 Ok
        """,
    )
    assert [type(e) for e in events] == [BodyChunk, BodyEnd, MailFrom]


def test_end_of_data_reply_is_relayed_verbatim() -> None:
    server = in_data()
    server.receive_data(b".\r\n")
    assert server.next_event() == BodyEnd()
    server.reply_lines(451, [b"4.3.0 upstream said", b"4.3.0 try later"])
    assert server.data_to_send() == b"451-4.3.0 upstream said\r\n451 4.3.0 try later\r\n"
    assert server.state is State.READY


def test_parameters_of_extensions_not_offered_get_555() -> None:
    """RFC 1869 section 6: SMTPUTF8 / NOTIFY are refused when EHLO did not offer them."""
    server = ServerConnection("mx.test")
    server.receive_data(b"EHLO c.test\r\n")
    assert isinstance(server.next_event(), Hello)
    server.reply_ehlo(["PIPELINING", "SIZE 1000"])
    server.data_to_send()
    server.receive_data(b"MAIL FROM:<a@b.test> SMTPUTF8\r\nMAIL FROM:<a@b.test> SIZE=10\r\n")
    event = server.next_event()
    assert isinstance(event, MailFrom) and event.params == (("SIZE", "10"),)
    assert server.data_to_send() == b"555 5.5.4 Unsupported parameter SMTPUTF8\r\n"
    server.reply(250, "2.1.0 Ok")
    server.receive_data(b"RCPT TO:<x@y.test> NOTIFY=NEVER\r\n")
    assert server.next_event() is NEED_DATA
    assert server.data_to_send() == b"250 2.1.0 Ok\r\n555 5.5.4 Unsupported parameter NOTIFY\r\n"
