"""A lean receiving SMTP server on the sans-IO core: the local upstream for tests,
the demo and the proxy benchmark.

One task per connection does, per read: feed the bytes, drain every event,
write every queued reply in one call. Body chunks are kept as the views the
core hands out and joined once at the end of data.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smtpgate.proxy.stream import Stream
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

#: A fixed reply, or a function of the recipient returning one (None: accept).
RcptAnswer = tuple[int, str] | Callable[[str], tuple[int, str] | None]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    sender: str  # "" for the null sender
    recipients: list[str]
    data: bytes  # content as received: unstuffed, CRLF, without the final dot
    tls_version: str  # "TLSv1.3", or "none"
    cipher: str  # "TLS_AES_256_GCM_SHA384", or "none"


def tls_info(stream: Stream) -> tuple[str, str]:
    """(version, cipher) of the stream's TLS session, ``("none", "none")`` in clear."""
    obj = stream.ssl_object
    if obj is None:
        return "none", "none"
    cipher = obj.cipher()
    return obj.version() or "none", cipher[0] if cipher else "none"


class MailSink:
    """Accepts mail and keeps it in :attr:`messages` (and ``spool_dir``, when given)."""

    def __init__(
        self,
        hostname: str = "sink.test",
        *,
        starttls_context: ssl.SSLContext | None = None,
        implicit_tls_context: ssl.SSLContext | None = None,
        limits: ServerLimits | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        refuse_starttls: bool = False,
        rcpt_reply: RcptAnswer | None = None,
        data_reply: tuple[int, str] | None = None,
        message_reply: tuple[int, str] | None = None,
        keep_messages: bool = True,
        idle_timeout: float = 300.0,
    ) -> None:
        """``refuse_starttls`` still advertises STARTTLS but answers it ``454``;
        ``rcpt_reply`` / ``data_reply`` / ``message_reply`` replace the ``250`` / ``354``
        / ``250`` to RCPT, DATA and the end of data (a 2xx ``message_reply`` still stores)."""
        self.hostname = hostname
        self.starttls_context = starttls_context
        self.implicit_tls_context = implicit_tls_context
        self.limits = limits or ServerLimits()
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.refuse_starttls = refuse_starttls
        self.rcpt_reply = rcpt_reply
        self.data_reply = data_reply
        self.message_reply = message_reply
        self.keep_messages = keep_messages
        self.idle_timeout = idle_timeout
        self.messages: list[ReceivedMessage] = []
        #: How many messages were accepted (also counted when ``keep_messages`` is off).
        self.accepted = 0
        #: Plaintext thrown away after STARTTLS, one entry per connection that sent some.
        self.discarded_after_starttls: list[bytes] = []
        self.connections = 0
        #: The bound port, once :meth:`start` returned.
        self.port = 0
        self._keywords = [
            "PIPELINING",
            f"SIZE {self.limits.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "DSN",
            "ENHANCEDSTATUSCODES",
        ]
        self._server: asyncio.Server | None = None
        self._streams: set[Stream] = set()
        self._spool_names = itertools.count(1)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Stream(self._session),
            host,
            port,
            ssl=self.implicit_tls_context,
            reuse_address=True,
        )
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and cut every open session."""
        if self._server is not None:
            self._server.close()
        tasks = []
        for stream in list(self._streams):
            stream.abort()
            if stream.task is not None:
                stream.task.cancel()
                tasks.append(stream.task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until ``count`` messages have been accepted; returns :attr:`messages`."""
        if self.accepted < count:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((count, waiter))
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            finally:
                self._waiters = [w for w in self._waiters if w[1] is not waiter]
        return self.messages

    # -- one connection ---------------------------------------------------------------------------

    async def _session(self, stream: Stream) -> None:
        self._streams.add(stream)
        self.connections += 1
        conn = ServerConnection(
            self.hostname, self.limits, tls=self.implicit_tls_context is not None
        )
        sender = ""
        recipients: list[str] = []
        body: list[bytes | memoryview] = []
        conn.greet()
        stream.write(conn.data_to_send())
        try:
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    data = await stream.read()
                if not data:
                    return
                conn.receive_data(data)
                closing = switch = False
                while True:
                    event = conn.next_event()
                    if event is NEED_DATA:
                        break
                    if event is PAUSED:
                        switch = True
                        break
                    if isinstance(event, BodyChunk):
                        body.append(event.data)
                    elif isinstance(event, BodyEnd):
                        code, text = self.message_reply or (250, "2.0.0 Ok: queued")
                        if code < 300:
                            self._store(stream, sender, recipients, b"".join(body))
                        conn.reply(code, text)
                        body, recipients = [], []
                    elif isinstance(event, RcptTo):
                        rcpt = str(event.recipient)
                        answer = self.rcpt_reply
                        if callable(answer):
                            answer = answer(rcpt)
                        if answer is None or answer[0] < 300:
                            recipients.append(rcpt)
                        conn.reply(*(answer or (250, "2.1.5 Ok")))
                    elif isinstance(event, MailFrom):
                        sender, recipients, body = str(event.sender), [], []
                        conn.reply(250, "2.1.0 Ok")
                    elif isinstance(event, DataRequested):
                        if self.data_reply is not None:
                            conn.reply(*self.data_reply)
                        else:
                            conn.accept_data()
                    elif isinstance(event, Hello):
                        recipients, body = [], []
                        if event.esmtp:
                            offer = self.starttls_context is not None and not conn.tls
                            conn.reply_ehlo(self._keywords + ["STARTTLS"] * offer)
                        else:
                            conn.reply(250, self.hostname)
                    elif isinstance(event, StartTLSRequested):
                        if self.refuse_starttls or self.starttls_context is None:
                            conn.reply(454, "4.7.0 TLS not available")
                        else:
                            conn.accept_starttls()
                    elif isinstance(event, BodyInvalid):
                        body = []
                    elif isinstance(event, Reset):
                        body, recipients = [], []
                    elif isinstance(event, ConnectionClosed):
                        closing = True
                stream.write(conn.data_to_send())
                if closing:
                    return
                if switch:
                    assert self.starttls_context is not None
                    await stream.start_tls(self.starttls_context, server_side=True)
                    conn.tls_established()
                    if conn.discarded_after_starttls:
                        self.discarded_after_starttls.append(conn.discarded_after_starttls)
                await stream.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return
        finally:
            stream.close()
            self._streams.discard(stream)

    def _store(self, stream: Stream, sender: str, recipients: list[str], data: bytes) -> None:
        self.accepted += 1
        if self.keep_messages or self.spool_dir is not None:
            version, cipher = tls_info(stream)
            message = ReceivedMessage(sender, list(recipients), data, version, cipher)
            if self.keep_messages:
                self.messages.append(message)
            if self.spool_dir is not None:
                self._spool(message)
        self._notify()

    def _spool(self, message: ReceivedMessage) -> None:
        """``NNN.eml`` holds the content verbatim, ``NNN.json`` the envelope and TLS facts."""
        assert self.spool_dir is not None
        stem = f"{os.getpid()}-{next(self._spool_names):06d}"
        meta = {
            "sender": message.sender,
            "recipients": message.recipients,
            "tls_version": message.tls_version,
            "cipher": message.cipher,
        }
        for suffix, content in ((".eml", message.data), (".json", json.dumps(meta).encode())):
            tmp = self.spool_dir / (stem + suffix + ".tmp")
            tmp.write_bytes(content)
            tmp.replace(self.spool_dir / (stem + suffix))

    def _notify(self) -> None:
        for count, waiter in self._waiters:
            if self.accepted >= count and not waiter.done():
                waiter.set_result(None)
