"""Both roles wired back to back in memory, and a proxy-shaped relay chain."""

from __future__ import annotations

from smtpgate.smtp import (
    BodyChunk,
    BodyEnd,
    ClientConnection,
    DataRequested,
    Event,
    Hello,
    MailFrom,
    RcptTo,
    Reply,
    Reset,
    ServerConnection,
    ServerLimits,
    StartTLSRequested,
)

from .conversation import AcceptAll, body_of, pump, pump_client, wire


def exchange(
    client: ClientConnection, server: ServerConnection, policy: AcceptAll, events: list[Event]
) -> list[Reply]:
    """Move bytes both ways until neither side has anything to say."""
    replies: list[Reply] = []
    while True:
        to_server = wire(client)
        if to_server:
            server.receive_data(to_server)
        events += pump(server, policy)
        to_client = server.data_to_send()
        if to_client:
            client.receive_data(to_client)
        replies += pump_client(client, None)
        if not to_server and not to_client:
            return replies


def test_client_and_server_back_to_back_with_starttls_and_two_messages() -> None:
    server = ServerConnection("mx.test")
    server.greet()
    client = ClientConnection()
    policy = AcceptAll(starttls=True)
    events: list[Event] = []
    client.send_ehlo("client.test")
    replies = exchange(client, server, policy, events)
    assert [r.command for r in replies] == ["greeting", "EHLO"]
    assert client.offers_starttls and client.pipelining

    client.send_starttls()
    replies = exchange(client, server, policy, events)
    assert replies[-1].code == 220 and events[-1] == StartTLSRequested()
    server.tls_established()  # both ends "handshake"
    client.tls_established()
    client.send_ehlo("client.test")
    exchange(client, server, policy, events)
    assert not client.offers_starttls and client.pipelining and server.tls

    bodies = [b".leading\r\n..two\r\n\r\n.\r\nend", b""]
    for body in bodies:
        client.send_mail(b"<a@example.com>", b"BODY=8BITMIME")
        client.send_rcpt(b"<b@example.com>")
        client.send_data()
        replies = exchange(client, server, policy, events)
        assert [(r.command, r.code) for r in replies] == [
            ("MAIL", 250),
            ("RCPT", 250),
            ("DATA", 354),
        ]
        client.send_body(body)
        client.send_end_of_data()
        replies = exchange(client, server, policy, events)
        assert [(r.command, r.code) for r in replies] == [(".", 250)]
    client.send_quit()
    assert exchange(client, server, policy, events)[-1].code == 221

    messages, current = [], []
    for event in events:
        if isinstance(event, BodyChunk):
            current.append(bytes(event.data))
        elif isinstance(event, BodyEnd):
            messages.append(b"".join(current))
            current = []
    assert messages == [bodies[0] + b"\r\n", b""]
    assert [type(e) for e in events].count(MailFrom) == 2


#: SIZE and DSN offered, so the sender may use SIZE= and NOTIFY= (RFC 1869).
RELAY_KEYWORDS = ["PIPELINING", "SIZE 10000000", "DSN"]


class Relay:
    """A proxy in miniature: the front server's events are relayed to the upstream leg."""

    def __init__(self, bare_newline: str) -> None:
        self.front = ServerConnection("proxy.test", ServerLimits(bare_newline=bare_newline))  # type: ignore[arg-type]
        self.back = ClientConnection()
        self.upstream = ServerConnection("upstream.test")
        self.upstream_events: list[Event] = []
        self.upstream_policy = AcceptAll(keywords=list(RELAY_KEYWORDS))
        self.front.greet()
        self.upstream.greet()
        self.back.send_ehlo("proxy.test")
        self._roundtrip()

    def _roundtrip(self) -> list[Reply]:
        return exchange(self.back, self.upstream, self.upstream_policy, self.upstream_events)

    def __call__(self, front: ServerConnection, event: Event) -> None:
        def relay() -> None:
            (reply,) = self._roundtrip()
            front.reply_lines(reply.code, reply.lines)

        if isinstance(event, Hello):
            front.reply_ehlo(RELAY_KEYWORDS) if event.esmtp else front.reply(250, "proxy.test")
        elif isinstance(event, MailFrom):
            self.back.send_mail(event.sender.path, event.raw_params)
            relay()
        elif isinstance(event, RcptTo):
            self.back.send_rcpt(event.recipient.path, event.raw_params)
            relay()
        elif isinstance(event, DataRequested):
            self.back.send_data()
            relay()
        elif isinstance(event, BodyChunk):
            self.back.send_body(event.data)
        elif isinstance(event, BodyEnd):
            self.back.send_end_of_data()
            relay()
        elif isinstance(event, Reset):
            self.back.send_rset()
            self._roundtrip()


def test_relay_chain_delivers_one_canonical_message_and_relays_replies_verbatim() -> None:
    relay = Relay("normalize")
    sender = ClientConnection()
    front_events: list[Event] = []
    sender.send_ehlo("mta.example")
    exchange(sender, relay.front, relay, front_events)  # type: ignore[arg-type]
    sender.send_mail(b"<a@example.com>", b"SIZE=10")
    sender.send_rcpt(b"<b@example.com>", b"NOTIFY=NEVER")
    sender.send_data()
    replies = exchange(sender, relay.front, relay, front_events)  # type: ignore[arg-type]
    assert [(r.command, r.code) for r in replies] == [("MAIL", 250), ("RCPT", 250), ("DATA", 354)]
    # A raw, hostile body straight onto the front leg: bare LF, fake ends, a smuggled MAIL.
    raw = b"Subject: x\r\n\r\none\n.\nMAIL FROM:<evil@example.com>\r\n..dots\r\n.\r\n"
    relay.front.receive_data(raw)
    pump(relay.front, relay)
    assert relay.front.data_to_send() == b"250 2.0.0 Ok: queued\r\n"  # the upstream's reply
    upstream_mail = [e for e in relay.upstream_events if isinstance(e, MailFrom)]
    assert len(upstream_mail) == 1 and upstream_mail[0].raw_params == b"SIZE=10"
    assert next(e for e in relay.upstream_events if isinstance(e, RcptTo)).raw_params == (
        b"NOTIFY=NEVER"
    )
    assert sum(isinstance(e, BodyEnd) for e in relay.upstream_events) == 1
    assert body_of(relay.upstream_events) == (
        b"Subject: x\r\n\r\none\r\n.\r\nMAIL FROM:<evil@example.com>\r\n.dots\r\n"
    )


def test_relay_chain_relays_multiline_upstream_replies() -> None:
    relay = Relay("reject")
    relay.upstream_policy.answers[RcptTo] = (550, ["5.1.1 first line", "5.1.1 second line"])
    sender = ClientConnection()
    events: list[Event] = []
    sender.send_ehlo("mta.example")
    sender.send_mail(b"<a@example.com>")
    sender.send_rcpt(b"<b@example.com>")
    replies = exchange(sender, relay.front, relay, events)  # type: ignore[arg-type]
    assert replies[-1] == Reply(550, (b"5.1.1 first line", b"5.1.1 second line"), "RCPT")
