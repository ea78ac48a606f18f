"""Scripted SMTP conversations for tests: ``C:`` lines go one way, ``S:`` lines the other.

``converse(conn, script, policy)`` drives either role of the sans-IO core:

- :class:`ServerConnection`: consecutive ``C:`` lines are fed as *one* packet
  (so a block of them is a pipelined batch); the ``S:`` lines that follow are
  exactly what the server must send back. Each event the core emits goes to
  ``policy(server, event)``, which answers it like a proxy would.
- :class:`ClientConnection`: ``C:`` lines are exactly what the client must
  have queued for the wire; ``S:`` lines are fed to it as one packet, and each
  :class:`Reply` goes to ``policy(client, reply)``, which may queue commands.

Lines may be indented; each gets CRLF appended. There is no other escaping, so a test that
needs raw bytes (bare LF, odd splits) feeds them itself. ``converse`` returns
the events (server role) or replies (client role) it saw, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from smtpgate.smtp import (
    NEED_DATA,
    PAUSED,
    BodyChunk,
    BodyEnd,
    ChunkEnd,
    ChunkRequested,
    ClientConnection,
    DataRequested,
    Event,
    Hello,
    MailFrom,
    RcptTo,
    Reply,
    ServerConnection,
    StartTLSRequested,
)

ServerPolicy = Callable[[ServerConnection, Event], None]
ClientPolicy = Callable[[ClientConnection, Reply], None]

DEFAULT_KEYWORDS = ("PIPELINING", "SIZE 10485760", "8BITMIME", "SMTPUTF8", "DSN")


@dataclass
class AcceptAll:
    """A caller policy that says yes to everything (the usual receiving server).

    ``keywords`` are the EHLO capabilities; ``starttls`` adds STARTTLS while the
    session is in clear. ``answers`` overrides the reply to one kind of event:
    ``{RcptTo: (550, "5.1.1 No such user")}``; a callable value gets the event.
    """

    keywords: Sequence[str] = DEFAULT_KEYWORDS
    starttls: bool = False
    answers: dict[type, Any] = field(default_factory=dict)

    def __call__(self, server: ServerConnection, event: Event) -> None:
        override = self.answers.get(type(event))
        if callable(override):
            override = override(event)
        if override is not None:
            if isinstance(event, ChunkRequested):
                server.refuse_chunk(*override)
            else:
                server.reply(*override)
            return
        if isinstance(event, Hello):
            if event.esmtp:
                extra = ["STARTTLS"] if self.starttls and not server.tls else []
                server.reply_ehlo([*self.keywords, *extra])
            else:
                server.reply(250, server.hostname)
        elif isinstance(event, StartTLSRequested):
            server.accept_starttls()
        elif isinstance(event, MailFrom | RcptTo):
            server.reply(250, "2.1.0 Ok" if isinstance(event, MailFrom) else "2.1.5 Ok")
        elif isinstance(event, DataRequested):
            server.accept_data()
        elif isinstance(event, ChunkRequested):
            server.accept_chunk()
        elif isinstance(event, ChunkEnd):
            server.reply(250, f"2.0.0 Ok: {event.size} octets")
        elif isinstance(event, BodyEnd):
            server.reply(250, "2.0.0 Ok: queued")
        # BodyChunk, BodyInvalid, Reset, ConnectionClosed need no answer.


def _blocks(script: str) -> list[tuple[str, list[bytes]]]:
    """``[("C", [line, ...]), ("S", [...]), ...]``: runs of lines from the same side."""
    blocks: list[tuple[str, list[bytes]]] = []
    for raw in script.splitlines():
        raw = raw.lstrip()
        if not raw:
            continue
        side, sep, text = raw.partition(": ")
        if side not in ("C", "S") or not sep:
            if raw.rstrip() in ("C:", "S:"):  # an empty line, e.g. inside a body
                side, text = raw.rstrip()[0], ""
            else:
                raise ValueError(f"script line must start with 'C: ' or 'S: ': {raw!r}")
        line = text.encode("utf-8") + b"\r\n"
        if blocks and blocks[-1][0] == side:
            blocks[-1][1].append(line)
        else:
            blocks.append((side, [line]))
    return blocks


def pump(server: ServerConnection, policy: ServerPolicy) -> list[Event]:
    """Pull every event the server has, answering each through ``policy``."""
    events: list[Event] = []
    while True:
        event = server.next_event()
        if event is NEED_DATA or event is PAUSED:
            return events
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
        policy(server, event)


def pump_client(client: ClientConnection, policy: ClientPolicy | None) -> list[Reply]:
    replies: list[Reply] = []
    while True:
        reply = client.next_event()
        if reply is NEED_DATA or reply is PAUSED:
            return replies
        assert isinstance(reply, Reply)
        replies.append(reply)
        if policy is not None:
            policy(client, reply)


def _show(data: bytes) -> str:
    return "\n".join(repr(line) for line in data.splitlines(keepends=True)) or "(nothing)"


def _expect(side: str, expected: bytes, actual: bytes) -> None:
    assert actual == expected, (
        f"{side}: lines differ\n--- expected\n{_show(expected)}\n--- actual\n{_show(actual)}"
    )


def converse(
    conn: ServerConnection | ClientConnection,
    script: str,
    policy: ServerPolicy | ClientPolicy | None = None,
) -> list[Any]:
    """Run ``script`` against ``conn`` (see the module docstring); returns events or replies."""
    if isinstance(conn, ServerConnection):
        return _converse_server(conn, script, policy or AcceptAll())  # type: ignore[arg-type]
    return _converse_client(conn, script, policy)  # type: ignore[arg-type]


def _converse_server(server: ServerConnection, script: str, policy: ServerPolicy) -> list[Event]:
    events: list[Event] = []
    for side, lines in _blocks(script):
        if side == "C":
            server.receive_data(b"".join(lines))
            events.extend(pump(server, policy))
        else:
            _expect("S", b"".join(lines), server.data_to_send())
    _expect("S (after the script)", b"", server.data_to_send())
    return events


def _converse_client(
    client: ClientConnection, script: str, policy: ClientPolicy | None
) -> list[Reply]:
    replies: list[Reply] = []
    for side, lines in _blocks(script):
        if side == "C":
            _expect("C", b"".join(lines), wire(client))
        else:
            client.receive_data(b"".join(lines))
            replies.extend(pump_client(client, policy))
    _expect("C (after the script)", b"", wire(client))
    return replies


def wire(client: ClientConnection) -> bytes:
    """What the client queued for the wire, as one ``bytes``."""
    return b"".join(bytes(part) for part in client.data_to_send())


def body_of(events: Sequence[Event]) -> bytes:
    """The message content carried by the BodyChunk events, concatenated."""
    return b"".join(bytes(e.data) for e in events if isinstance(e, BodyChunk))


def new_server(hostname: str = "mx.test", **kwargs: Any) -> ServerConnection:
    """A server that has queued its banner: a script starts with ``S: 220 mx.test ESMTP``."""
    server = ServerConnection(hostname, **kwargs)
    server.greet()
    return server
