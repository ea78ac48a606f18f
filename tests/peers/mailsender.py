"""A small SMTP client on smtpgate's sans-IO core: sends messages, pipelining when offered.

The load generator of the proxy benchmark (``bench/``) and a sending peer for
tests. :func:`send_message` sends one message; :func:`send_messages` sends
several over one connection. Replies are
returned verbatim (:class:`~smtpgate.smtp.Reply`); transaction failures are
results, not exceptions. Connection-level failures (bad greeting, required
STARTTLS missing or refused, protocol errors, timeouts) raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from smtpgate.proxy.stream import Stream, open_stream
from smtpgate.smtp import (
    NEED_DATA,
    PAUSED,
    ClientConnection,
    Reply,
    UpstreamProtocolError,
    canonicalize,
)
from smtpgate.tls import describe_tls

#: Body bytes handed to the transport between two drains.
_BODY_SLICE = 256 * 1024


class SendError(Exception):
    """The session could not get as far as a transaction."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message if reply is None else f"{message}: {reply.code} {reply.text}")
        self.reply = reply


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    sender: str  # "" for the null sender
    recipients: Sequence[str]
    body: bytes  # CRLF text; bare CR/LF are canonicalised, dots are stuffed on the way out
    mail_params: str = ""  # e.g. "SIZE=1234 BODY=8BITMIME"


@dataclass(slots=True)
class SendResult:
    mail: Reply
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None  # None when no recipient was accepted
    end: Reply | None = None  # the reply to the final dot; None when the body was not sent
    tls_version: str = "none"
    cipher: str = "none"
    greeting: Reply | None = None
    ehlo: Reply | None = None

    @property
    def accepted(self) -> bool:
        return self.end is not None and self.end.code == 250

    @property
    def accepted_recipients(self) -> int:
        return sum(r.code < 300 for r in self.rcpts)


class _Session:
    def __init__(self, stream: Stream, client: ClientConnection, timeout: float) -> None:
        self.stream = stream
        self.client = client
        self.timeout = timeout

    def flush(self) -> None:
        out = self.client.data_to_send()
        if out:
            self.stream.writelines(out)

    async def replies(self, count: int) -> list[Reply]:
        """Send what is queued, then wait for ``count`` replies."""
        self.flush()
        got: list[Reply] = []
        async with asyncio.timeout(self.timeout):
            while True:
                while len(got) < count:
                    event = self.client.next_event()
                    if event is NEED_DATA:
                        break
                    if event is PAUSED:
                        raise AssertionError("paused with replies outstanding")
                    assert isinstance(event, Reply)
                    got.append(event)
                    if event.command == "STARTTLS" and event.code == 220:
                        return got
                if len(got) >= count:
                    return got
                data = await self.stream.read()
                if not data:
                    raise ConnectionError("connection closed by the server")
                self.client.receive_data(data)

    async def reply(self) -> Reply:
        return (await self.replies(1))[0]


@dataclass(slots=True)
class OpenSession:
    """A connection past its greeting and EHLO (and STARTTLS when asked), ready for mail."""

    session: _Session
    greeting: Reply
    ehlo: Reply

    @property
    def stream(self) -> Stream:
        return self.session.stream

    async def send(self, message: OutgoingMessage) -> SendResult:
        """One transaction on this connection."""
        result = await _transaction(self.session, message)
        result.greeting, result.ehlo = self.greeting, self.ehlo
        result.tls_version, result.cipher = describe_tls(self.stream.ssl_object)
        return result

    async def quit(self) -> None:
        self.session.client.send_quit()
        with contextlib.suppress(ConnectionError, TimeoutError, UpstreamProtocolError):
            await self.session.reply()  # the mail is delivered; a lost 221 changes nothing

    def close(self) -> None:
        self.session.stream.close()


async def open_session(
    host: str,
    port: int,
    *,
    helo: str = "client.test",
    starttls: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    implicit_tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 30,
) -> OpenSession:
    """Connect, read the greeting, say EHLO, and STARTTLS when offered and asked for."""
    stream = await open_stream(
        host,
        port,
        ssl_context=implicit_tls,
        server_hostname=server_hostname or host,
        timeout=timeout,
    )
    session = _Session(stream, ClientConnection(tls=implicit_tls is not None), timeout)
    client = session.client
    try:
        greeting = await session.reply()
        if greeting.code != 220:
            raise SendError("server refused the connection", greeting)
        ehlo = await _hello(session, helo)
        if starttls is not None and not client.tls:
            if client.offers_starttls:
                client.send_starttls()
                answer = await session.reply()
                if answer.code == 220:
                    await stream.start_tls(
                        starttls,
                        server_side=False,
                        server_hostname=server_hostname or host,
                        timeout=timeout,
                    )
                    client.tls_established()
                    ehlo = await _hello(session, helo)
                elif require_starttls:
                    raise SendError("STARTTLS refused", answer)
            elif require_starttls:
                raise SendError("STARTTLS not offered", ehlo)
        elif require_starttls and not client.tls:
            raise SendError("require_starttls needs a starttls context")
    except BaseException:
        stream.close()
        raise
    return OpenSession(session, greeting, ehlo)


async def send_messages(
    host: str,
    port: int,
    *,
    messages: Sequence[OutgoingMessage],
    helo: str = "client.test",
    starttls: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    implicit_tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 30,
) -> list[SendResult]:
    """Deliver ``messages`` over one connection, in order; one result per message."""
    opened = await open_session(
        host,
        port,
        helo=helo,
        starttls=starttls,
        require_starttls=require_starttls,
        implicit_tls=implicit_tls,
        server_hostname=server_hostname,
        timeout=timeout,
    )
    try:
        results = [await opened.send(message) for message in messages]
        await opened.quit()
        return results
    finally:
        opened.close()


async def send_message(
    host: str,
    port: int,
    *,
    sender: str,
    recipients: Sequence[str],
    body: bytes,
    helo: str = "client.test",
    starttls: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    implicit_tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 30,
) -> SendResult:
    """Deliver one message; see :func:`send_messages`."""
    (result,) = await send_messages(
        host,
        port,
        messages=[OutgoingMessage(sender, recipients, body)],
        helo=helo,
        starttls=starttls,
        require_starttls=require_starttls,
        implicit_tls=implicit_tls,
        server_hostname=server_hostname,
        timeout=timeout,
    )
    return result


async def _hello(session: _Session, helo: str) -> Reply:
    session.client.send_ehlo(helo)
    reply = await session.reply()
    if reply.code >= 500:
        session.client.send_helo(helo)
        reply = await session.reply()
    if reply.code != 250:
        raise SendError("server refused EHLO and HELO", reply)
    return reply


async def _transaction(session: _Session, message: OutgoingMessage) -> SendResult:
    client = session.client
    client.send_mail(_path(message.sender), message.mail_params.encode("ascii"))
    if client.pipelining:  # RFC 2920: MAIL, every RCPT and DATA in one write
        for recipient in message.recipients:
            client.send_rcpt(_path(recipient))
        client.send_data()
        replies = await session.replies(2 + len(message.recipients))
        result = SendResult(replies[0], replies[1:-1], replies[-1])
    else:
        result = SendResult(await session.reply())
        if result.mail.code >= 300:
            return result
        for recipient in message.recipients:
            client.send_rcpt(_path(recipient))
            result.rcpts.append(await session.reply())
        if result.accepted_recipients:
            client.send_data()
            result.data = await session.reply()
    if result.data is not None and result.data.code == 354:
        body = message.body
        if body.count(b"\r") != body.count(b"\r\n") or body.count(b"\n") != body.count(b"\r\n"):
            body = canonicalize(body)
        view = memoryview(body)
        for start in range(0, len(view), _BODY_SLICE):
            client.send_body(view[start : start + _BODY_SLICE])
            session.flush()
            await session.stream.drain()
        client.send_end_of_data()
        result.end = await session.reply()
    elif result.mail.code < 300:
        client.send_rset()
        await session.reply()
    return result


def _path(address: str) -> bytes:
    return b"<" + address.encode("utf-8") + b">"
