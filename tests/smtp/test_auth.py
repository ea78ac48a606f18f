"""AUTH in both roles (RFC 4954): the server role offers it over TLS only and hands
each step of the SASL exchange to its caller; the client role relays it verbatim."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest

from smtpgate.smtp import (
    AuthAborted,
    AuthRequested,
    AuthResponse,
    ClientConnection,
    Event,
    ServerConnection,
    ServerLimits,
)
from smtpgate.smtp.server import MAX_AUTH_LINE, State

from .conversation import DEFAULT_KEYWORDS, AcceptAll, converse, new_server, pump, wire

AUTH_KEYWORDS = (*DEFAULT_KEYWORDS, "AUTH PLAIN LOGIN")
EHLO_TLS = """
S: 220 mx.test ESMTP
C: EHLO client.example
S: 250-mx.test
S: 250-PIPELINING
S: 250-SIZE 10485760
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250-DSN
S: 250 AUTH PLAIN LOGIN
"""
#: "\0alice\0s3cret" in base64.
PLAIN = "AGFsaWNlAHMzY3JldA=="
#: RFC 4954: ``334 SP [base64]``: the space stays when the challenge is empty.
EMPTY_CHALLENGE = ""


@dataclass
class Upstream:
    """Answers each AUTH step as the upstream would: ``334 <challenge>`` continues the
    exchange, any other reply ends it."""

    answers: deque[tuple[int, bytes]] = field(default_factory=deque)
    accept: AcceptAll = field(default_factory=lambda: AcceptAll(keywords=AUTH_KEYWORDS))

    def __call__(self, server: ServerConnection, event: Event) -> None:
        if isinstance(event, AuthRequested | AuthResponse):
            code, text = self.answers.popleft()
            if code == 334:
                server.auth_challenge([text])
            else:
                server.reply_lines(code, [text])
        elif not isinstance(event, AuthAborted):
            self.accept(server, event)


def tls_server(*, auth: bool = True, **limits: object) -> ServerConnection:
    return new_server(limits=ServerLimits(auth=auth, **limits), tls=True)  # type: ignore[arg-type]


def test_plain_with_initial_response_then_a_transaction() -> None:
    server = tls_server()
    events = converse(
        server,
        EHLO_TLS
        + f"""
        C: AUTH PLAIN {PLAIN}
        S: 235 2.7.0 Authentication successful
        C: MAIL FROM:<alice@example.test> AUTH=<>
        S: 250 2.1.0 Ok
        """,
        Upstream(deque([(235, b"2.7.0 Authentication successful")])),
    )
    assert AuthRequested("PLAIN", PLAIN.encode()) in events
    assert server.authenticated and server.state is State.MAIL


def test_login_challenges_relayed_and_responses_handed_over_verbatim() -> None:
    server = tls_server()
    events = converse(
        server,
        EHLO_TLS
        + """
        C: auth login
        S: 334 VXNlcm5hbWU6
        C: YWxpY2U=
        S: 334 UGFzc3dvcmQ6
        C: czNjcmV0
        S: 235 2.7.0 ok
        """,
        Upstream(deque([(334, b"VXNlcm5hbWU6"), (334, b"UGFzc3dvcmQ6"), (235, b"2.7.0 ok")])),
    )
    auth = [e for e in events if isinstance(e, AuthRequested | AuthResponse)]
    assert auth == [
        AuthRequested("LOGIN", None),
        AuthResponse(b"YWxpY2U="),
        AuthResponse(b"czNjcmV0"),
    ]
    assert server.authenticated


def test_cancel_and_failure_leave_the_session_unauthenticated_and_usable() -> None:
    server = tls_server()
    events = converse(
        server,
        EHLO_TLS
        + f"""
        C: AUTH LOGIN
        S: 334 VXNlcm5hbWU6
        C: *
        S: 501 5.7.0 Authentication cancelled
        C: AUTH PLAIN {PLAIN}
        S: 535 5.7.8 Authentication credentials invalid
        C: AUTH PLAIN
        S: 334 {EMPTY_CHALLENGE}
        C: =
        S: 535 5.7.8 Authentication credentials invalid
        C: NOOP
        S: 250 2.0.0 Ok
        """,
        Upstream(
            deque(
                [
                    (334, b"VXNlcm5hbWU6"),
                    (501, b"5.7.0 Authentication cancelled"),
                    (535, b"5.7.8 Authentication credentials invalid"),
                    (334, b""),
                    (535, b"5.7.8 Authentication credentials invalid"),
                ]
            )
        ),
    )
    assert AuthResponse(b"*") in events and AuthResponse(b"=") in events
    assert not server.authenticated and server.state is State.READY


def test_auth_in_clear_is_538_and_never_reaches_the_caller() -> None:
    server = new_server(limits=ServerLimits(auth=True))
    events = converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: EHLO client.example
        S: 250-mx.test
        S: 250-PIPELINING
        S: 250-SIZE 10485760
        S: 250-8BITMIME
        S: 250-SMTPUTF8
        S: 250 DSN
        C: AUTH PLAIN AGFsaWNlAHMzY3JldA==
        S: 538 5.7.11 Encryption required for requested authentication mechanism
        C: AUTH LOGIN
        S: 538 5.7.11 Encryption required for requested authentication mechanism
        """,
        AcceptAll(),
    )
    assert not any(isinstance(e, AuthRequested) for e in events)


def test_auth_when_the_policy_does_not_relay_it_is_502_as_before() -> None:
    server = new_server(tls=True)
    converse(
        server,
        """
        S: 220 mx.test ESMTP
        C: AUTH PLAIN AGFsaWNlAHMzY3JldA==
        S: 502 5.5.1 Command not implemented
        """,
    )


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("AUTH", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        ("AUTH PLAIN a b", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        ("AUTH PL@IN", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        ("AUTH CRAM-MD5", "504 5.5.4 Unrecognized authentication type"),
        ("AUTH PLAIN not^base64", "501 5.5.2 Cannot decode initial response"),
        ("AUTH PLAIN *", "501 5.5.2 Cannot decode initial response"),
    ],
)
def test_bad_auth_commands_are_refused_without_the_caller(line: str, reply: str) -> None:
    server = tls_server()
    events = converse(server, EHLO_TLS + f"C: {line}\nS: {reply}\n", Upstream())
    assert not any(isinstance(e, AuthRequested) for e in events)


def test_sequence_errors() -> None:
    server = tls_server()
    converse(
        server,
        f"""
        S: 220 mx.test ESMTP
        C: AUTH PLAIN {PLAIN}
        S: 503 5.5.1 Send EHLO first
        C: HELO client.example
        S: 250 mx.test
        C: AUTH PLAIN {PLAIN}
        S: 503 5.5.1 Send EHLO first
        C: EHLO client.example
        S: 250-mx.test
        S: 250-PIPELINING
        S: 250-SIZE 10485760
        S: 250-8BITMIME
        S: 250-SMTPUTF8
        S: 250-DSN
        S: 250 AUTH PLAIN LOGIN
        C: MAIL FROM:<a@example.test>
        S: 250 2.1.0 Ok
        C: AUTH PLAIN {PLAIN}
        S: 503 5.5.1 MAIL transaction in progress
        C: RSET
        S: 250 2.0.0 Ok
        C: AUTH PLAIN {PLAIN}
        S: 235 2.7.0 ok
        C: AUTH PLAIN {PLAIN}
        S: 503 5.5.1 Already authenticated
        """,
        Upstream(deque([(235, b"2.7.0 ok")])),
    )


def test_initial_response_may_use_the_rfc_4954_line_length() -> None:
    """12288 octets with CRLF for AUTH with its initial response, not the 512 of other
    commands; one more is too long."""
    initial = "A" * (MAX_AUTH_LINE - len("AUTH PLAIN \r\n"))
    server = tls_server()
    events = converse(
        server,
        EHLO_TLS
        + f"""
        C: AUTH PLAIN {initial}
        S: 535 5.7.8 no
        C: AUTH PLAIN {initial}A
        S: 500 5.5.2 Line too long
        """,
        Upstream(deque([(535, b"5.7.8 no")])),
    )
    assert [len(e.initial_response or b"") for e in events if isinstance(e, AuthRequested)] == [
        len(initial)
    ]


def test_long_response_ends_the_exchange_with_500_5_5_6_and_the_rest_is_skipped() -> None:
    server = tls_server()
    upstream = Upstream(deque([(334, b"VXNlcm5hbWU6")]))
    converse(server, EHLO_TLS + "C: AUTH LOGIN\nS: 334 VXNlcm5hbWU6\n", upstream)
    server.receive_data(b"A" * (MAX_AUTH_LINE + 1))  # no line end yet, already too long
    assert pump(server, upstream) == [
        AuthAborted(500, "5.5.6 Authentication Exchange line is too long")
    ]
    assert server.data_to_send() == b"500 5.5.6 Authentication Exchange line is too long\r\n"
    server.receive_data(b"AAAA\r\nNOOP\r\n")  # the rest of the long line is never a command
    assert pump(server, upstream) == []
    assert server.data_to_send() == b"250 2.0.0 Ok\r\n"
    assert server.state is State.READY and not server.authenticated


@pytest.mark.parametrize("response", [b"YWxp\rY2U=", b"YWxp\x00Y2U=", b"YWxp Y2U="])
def test_response_that_is_not_base64_is_never_handed_over(response: bytes) -> None:
    """A stray CR or NUL in a response would reach the upstream's command line."""
    server = tls_server()
    upstream = Upstream(deque([(334, b"VXNlcm5hbWU6")]))
    converse(server, EHLO_TLS + "C: AUTH LOGIN\nS: 334 VXNlcm5hbWU6\n", upstream)
    server.receive_data(response + b"\r\n")
    assert pump(server, upstream) == [AuthAborted(501, "5.5.2 Cannot decode response")]
    assert server.data_to_send() == b"501 5.5.2 Cannot decode response\r\n"


def test_credentials_never_in_an_event_repr() -> None:
    assert PLAIN not in repr(AuthRequested("PLAIN", PLAIN.encode()))
    assert "czNjcmV0" not in repr(AuthResponse(b"czNjcmV0"))


def test_client_role_relays_auth_verbatim_and_matches_every_reply() -> None:
    client = ClientConnection(tls=True)
    converse(client, "S: 220 up.test ESMTP\n")
    client.send_auth("LOGIN", None)
    assert wire(client) == b"AUTH LOGIN\r\n"
    client.receive_data(b"334 VXNlcm5hbWU6\r\n")
    reply = client.next_event()
    assert getattr(reply, "command", None) == "AUTH" and getattr(reply, "code", 0) == 334
    client.send_auth_response(b"YWxpY2U=")
    client.send_auth_response(b"*")
    assert wire(client) == b"YWxpY2U=\r\n*\r\n"
    client.send_auth("PLAIN", PLAIN.encode())
    assert wire(client) == f"AUTH PLAIN {PLAIN}\r\n".encode()
    assert client.waiting == 3
