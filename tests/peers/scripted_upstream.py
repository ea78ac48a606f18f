"""The project's one scripted upstream: a receiving SMTP server whose replies a test
chooses, written independently of smtpgate's own SMTP core.

It records what arrived byte for byte (each connection's transcript, every
command line, each message as dot-stuffed on the wire) and can misbehave on
purpose: a scripted greeting (or none), replies of the test's choosing to
STARTTLS, RCPT, DATA and the final dot (or no answer at all), a hang-up at the
n-th RCPT or after some body bytes, a STARTTLS that answers 220 and then sends
no TLS. With a certificate it speaks real TLS (STARTTLS or implicit), as the
proxy benchmark's receiving server does. With ``CHUNKING`` among its EHLO
keywords it takes BDAT (RFC 3030): each chunk is answered after its octets,
and the message is kept as the octets arrived (``ReceivedMessage.bdat``).

It runs on an asyncio loop: the end-to-end tests start it on their
:class:`tests.proxy.helpers.LoopThread` (fixture ``make_scripted_upstream``),
``bench/sink.py`` in a process of its own. Each read is parsed whole and
answered with one write. Out-of-sequence commands get 503, as from a real
server. aiosmtpd (:mod:`tests.peers.upstream`) and Postfix stay the
independent real peers.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from smtpgate.tls import describe_tls

__all__ = ["FAULT_STAGES", "Fault", "ReceivedMessage", "ScriptedUpstream"]

OK_QUEUED = b"250 2.0.0 Ok queued\r\n"
NOT_A_HANDSHAKE = b"this is not a TLS ServerHello\r\n" * 4
_END_OF_DATA = b"\r\n.\r\n"


class Fault(Enum):
    """What a scripted stage does instead of its normal answer (see ``faults``)."""

    CLOSE = "close"  # close the connection without answering
    STALL = "stall"  # answer nothing more; keep reading (and recording) until the peer closes


#: The stages ``faults`` can script, in the order a transaction meets them.
FAULT_STAGES = (
    "connect",  # the connection was accepted: no greeting yet
    "greeting",  # the greeting was sent
    "EHLO",
    "HELO",
    "STARTTLS",
    "handshake",  # STARTTLS was answered 220: the TLS handshake is due
    "MAIL",
    "RCPT",
    "DATA",
    "body",  # the first body bytes arrived (STALL: stop reading the socket)
    "chunk",  # a BDAT chunk before the last arrived: its reply is due
    "dot",  # the final dot (or the BDAT LAST chunk) arrived: its reply is due
)


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    mail_from: bytes  # the MAIL FROM argument as sent: b"<a@b.example> BODY=8BITMIME"
    rcpt_tos: list[bytes]  # the RCPT TO arguments of the accepted recipients
    wire: bytes  # DATA bytes as received, still dot-stuffed, without the final ".\r\n"
    tls_version: str  # "TLSv1.3", or "none"
    cipher: str  # "TLS_AES_256_GCM_SHA384", or "none"
    #: Sent by BDAT: ``wire`` is the chunks' octets, the content itself.
    bdat: bool = False
    #: The BDAT commands as sent (b"BDAT 512", b"BDAT 0 LAST").
    chunks: tuple[bytes, ...] = ()

    @property
    def sender(self) -> str:
        """The reverse-path without brackets and parameters ("" for the null sender)."""
        return _address(self.mail_from)

    @property
    def recipients(self) -> list[str]:
        return [_address(arg) for arg in self.rcpt_tos]

    @property
    def content(self) -> bytes:
        """The message as the sender meant it: dot-unstuffed (RFC 5321 4.5.2); by BDAT,
        the octets as they came."""
        if self.bdat:
            return self.wire
        return (b"\r\n" + self.wire).replace(b"\r\n.", b"\r\n")[2:]


class ScriptedUpstream:
    """A receiving SMTP server with scripted replies; ``async with``, or ``await start()``
    and ``await stop()``.

    ``greeting``: sent on connect (any bytes); ``None``: never say anything.
    ``ehlo_keywords``: the EHLO keywords; STARTTLS is added while it is offered.
    ``starttls_context``: offer STARTTLS and do it for real.
    ``implicit_tls_context``: TLS from the first byte.
    ``starttls_reply``: offer STARTTLS, answer it with these bytes and go on in clear.
    ``after_starttls``: offer STARTTLS, answer 220, then send these bytes instead of a
    handshake and close (``b""``: close at once, so the handshake meets the end of the
    stream and nothing else).
    ``rcpt_replies``: ``{"text": b"550 ...\\r\\n"}`` answers a RCPT line containing
    ``text`` so (a 2xx reply accepts the recipient).
    ``rcpt_failure``: ``(n, "drop")`` closes the connection instead of answering the
    n-th RCPT of a connection; ``(n, "close")`` answers it 250, then closes.
    ``data_reply``: the answer to DATA; only a 354 starts the body.
    ``dot_reply``: the answer to the final dot (a 2xx stores the message); ``None``:
    never answer.
    ``drop_after_body_bytes``: close once this many body bytes arrived (0: at the first).
    ``messages_per_connection``: after this many accepted messages on a connection, the
    next MAIL gets ``421 4.7.0`` and the connection is closed (Exim's
    ``smtp_accept_max_per_connection``).
    ``faults``: ``{stage: Fault.CLOSE | Fault.STALL | reply bytes}``, one entry per
    stage of :data:`FAULT_STAGES` that misbehaves (the fault matrix): at ``connect`` the
    bytes replace the greeting, after ``greeting`` only CLOSE applies, at a command
    the bytes answer it without changing any state (a refusal), at ``handshake`` they
    are sent instead of TLS and the connection closes, at ``dot`` they are the reply
    (a 2xx stores the message). Set :attr:`faults` again to change the script for the
    next connections and commands.
    ``keep_messages``: off, only :attr:`accepted` counts (the benchmark): no message,
    command or transcript is kept, so a long run's memory stays flat.
    """

    def __init__(
        self,
        *,
        hostname: str = "raw.upstream.test",
        greeting: bytes | None = b"220 raw.upstream.test ESMTP\r\n",
        ehlo_keywords: Iterable[str] = ("PIPELINING", "8BITMIME"),
        starttls_context: ssl.SSLContext | None = None,
        implicit_tls_context: ssl.SSLContext | None = None,
        starttls_reply: bytes | None = None,
        after_starttls: bytes | None = None,
        rcpt_replies: Mapping[str, bytes] | None = None,
        rcpt_failure: tuple[int, str] | None = None,
        data_reply: bytes = b"354 Go ahead\r\n",
        dot_reply: bytes | None = OK_QUEUED,
        drop_after_body_bytes: int | None = None,
        messages_per_connection: int | None = None,
        faults: Mapping[str, Fault | bytes] | None = None,
        keep_messages: bool = True,
        idle_timeout: float = 300.0,
    ) -> None:
        self.hostname = hostname
        self.greeting = greeting
        self.ehlo_keywords = list(ehlo_keywords)
        self.starttls_context = starttls_context
        self.implicit_tls_context = implicit_tls_context
        self.starttls_reply = starttls_reply
        self.after_starttls = after_starttls
        self.rcpt_replies = {text.encode(): reply for text, reply in (rcpt_replies or {}).items()}
        self.rcpt_failure = rcpt_failure
        self.data_reply = data_reply
        self.dot_reply = dot_reply
        self.drop_after_body_bytes = drop_after_body_bytes
        self.messages_per_connection = messages_per_connection
        self.faults: Mapping[str, Fault | bytes] = dict(faults or {})
        unknown = set(self.faults) - set(FAULT_STAGES)
        if unknown:
            raise ValueError(f"no such stages: {sorted(unknown)}; stages: {FAULT_STAGES}")
        self.keep_messages = keep_messages
        self.idle_timeout = idle_timeout
        self.offers_starttls = (
            starttls_context is not None
            or starttls_reply is not None
            or after_starttls is not None
            or "STARTTLS" in self.faults
            or "handshake" in self.faults
        )
        self.messages: list[ReceivedMessage] = []
        #: Messages answered 2xx (also counted when ``keep_messages`` is off).
        self.accepted = 0
        #: Command lines (outside DATA, without CRLF) of every connection, in arrival order.
        self.commands: list[bytes] = []
        #: Every byte each connection sent (after TLS: the decrypted bytes).
        self.transcripts: list[bytearray] = []
        self.connections = 0
        #: The bound port, once :meth:`start` returned.
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def mail_commands(self) -> int:
        return sum(c.upper().startswith(b"MAIL FROM:") for c in self.commands)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen (port 0: the kernel picks one, nothing to race for); returns the port."""
        # A backlog like a busy MTA's: with asyncio's default of 100, a burst of
        # connects overflows the accept queue and the kernel drops the handshake's
        # last ACK; the connecting side then waits for a greeting that never comes.
        self._server = await asyncio.start_server(
            self._connection, host, port, ssl=self.implicit_tls_context, backlog=1024
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def hang_up(self) -> None:
        """Cut every open connection (as an idle timeout would); keep listening."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> ScriptedUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until ``count`` messages were accepted; returns :attr:`messages`."""
        if self.accepted < count:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((count, waiter))
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            finally:
                self._waiters = [w for w in self._waiters if w[1] is not waiter]
        return self.messages

    # -- one connection -----------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        transcript = bytearray()
        if self.keep_messages:
            self.transcripts.append(transcript)
        try:
            await _Conversation(self, reader, writer, transcript).run()
        except (TimeoutError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    def _store(self, message: ReceivedMessage) -> None:
        self.accepted += 1
        if self.keep_messages:
            self.messages.append(message)
        for count, waiter in self._waiters:
            if self.accepted >= count and not waiter.done():
                waiter.set_result(None)


class _Hangup(Exception):
    """The script says: close the connection now."""


class _Conversation:
    """One connection: reads, whole-buffer parsing, one write per read."""

    def __init__(
        self,
        server: ScriptedUpstream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        transcript: bytearray,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.transcript = transcript
        self.tls = server.implicit_tls_context is not None
        self.mail_from = b""
        self.rcpts: list[bytes] = []
        self.in_mail = False
        self.rcpt_count = 0
        self.delivered = 0  # messages accepted on this connection
        #: BDAT: the content so far, the commands, and the chunk being read (octets left,
        #: LAST, the reply owed after it when the chunk is refused).
        self.bdat_content = bytearray()
        self.bdat_commands: list[bytes] = []
        self.chunk_left = 0
        self.chunk_last = False
        self.chunk_refusal: bytes | None = None

    async def read(self) -> bytes:
        async with asyncio.timeout(self.server.idle_timeout):
            data = await self.reader.read(65536)
        if self.server.keep_messages:
            self.transcript.extend(data)
        return data

    async def listen_only(self) -> None:
        """Say nothing more; read (and record) until the peer closes."""
        while await self.read():
            pass

    async def run(self) -> None:
        server = self.server
        at_connect = server.faults.get("connect")
        if at_connect is Fault.CLOSE:
            return
        greeting = at_connect if isinstance(at_connect, bytes) else server.greeting
        if greeting is None or at_connect is Fault.STALL:
            await self.listen_only()
            return
        self.writer.write(greeting)
        if server.faults.get("greeting") is Fault.CLOSE:
            await self.writer.drain()
            return
        buf = b""
        body: bytearray | None = None  # inside DATA: what arrived of the body so far
        answer_after_chunk = False  # a BDAT was read: its octets, then its reply
        while True:
            data = await self.read()
            if not data:
                return
            out: list[bytes] = []
            searched = 0  # the terminator is not in body[:searched]
            if body is not None:
                searched = max(0, len(body) - 4)
                body += data
            else:
                buf += data
            try:
                while True:
                    if body is not None:
                        end = _body_end(body, searched)
                        arrived = len(body) if end < 0 else end
                        limit = server.drop_after_body_bytes
                        if limit is not None and arrived >= max(limit, 1):
                            raise _Hangup
                        if arrived and server.faults.get("body") is Fault.STALL:
                            self.writer.write(b"".join(out))
                            await self.stall_reading()
                            return
                        if end < 0:
                            break
                        wire, buf = bytes(body[:end]), bytes(body[end + 3 :])
                        body = None
                        at_dot = server.faults.get("dot")
                        if at_dot is Fault.CLOSE:
                            raise _Hangup
                        if server.dot_reply is None or at_dot is Fault.STALL:
                            self.writer.write(b"".join(out))
                            await self.listen_only()
                            return
                        out.append(self.end_of_data(wire))
                        continue
                    if self.chunk_left or answer_after_chunk:
                        take = min(self.chunk_left, len(buf))
                        if self.chunk_refusal is None:
                            self.bdat_content += buf[:take]
                            limit = server.drop_after_body_bytes
                            if limit is not None and len(self.bdat_content) >= max(limit, 1):
                                raise _Hangup
                        buf, self.chunk_left = buf[take:], self.chunk_left - take
                        if self.chunk_left:
                            break
                        answer_after_chunk = False
                        reply = self.end_of_chunk()
                        if reply is _LISTEN:
                            self.writer.write(b"".join(out))
                            await self.listen_only()
                            return
                        assert isinstance(reply, bytes)
                        out.append(reply)
                        continue
                    line, found, rest = buf.partition(b"\n")
                    if not found:
                        break
                    buf = rest
                    answer = await self.command(line + b"\n", out)
                    if answer is _CHUNK:
                        answer_after_chunk = True
                    elif answer is _DATA:
                        body, buf, searched = bytearray(buf), b"", 0
                    elif answer is _LISTEN:
                        await self.listen_only()
                        return
                    elif answer is _QUIT:
                        self.writer.write(b"".join(out))
                        await self.writer.drain()
                        return
                    elif answer is _TLS:
                        # Pipelined plaintext after STARTTLS is dropped, never executed.
                        buf = b""
                        await self.start_tls(out)
                        out = []
            except _Hangup:
                self.writer.write(b"".join(out))
                return
            if out:
                self.writer.write(b"".join(out))
            await self.writer.drain()

    async def stall_reading(self) -> None:
        """Read nothing more: what the peer sends piles up in the socket buffers."""
        await asyncio.sleep(self.server.idle_timeout)

    async def start_tls(self, out: list[bytes]) -> None:
        context = self.server.starttls_context
        assert context is not None
        self.writer.write(b"".join(out))
        await self.writer.drain()
        await self.writer.start_tls(context)
        self.tls = True
        self.mail_from, self.rcpts, self.in_mail = b"", [], False

    async def command(self, line: bytes, out: list[bytes]) -> object:
        server = self.server
        if server.keep_messages:
            server.commands.append(line.rstrip(b"\r\n"))
        verb = line[:4].upper()
        fault = server.faults.get(_STAGES_BY_VERB.get(bytes(verb), ""))
        if fault is Fault.CLOSE:
            raise _Hangup
        if fault is Fault.STALL:
            self.writer.write(b"".join(out))
            out.clear()
            return _LISTEN
        if isinstance(fault, bytes):
            out.append(fault)
            return None
        if verb == b"EHLO":
            offer = server.offers_starttls and not self.tls
            lines = [server.hostname, *server.ehlo_keywords, *(["STARTTLS"] * offer)]
            last = len(lines) - 1
            out.append(
                "".join(
                    f"250{' ' if i == last else '-'}{w}\r\n" for i, w in enumerate(lines)
                ).encode()
            )
        elif verb == b"HELO":
            out.append(f"250 {server.hostname}\r\n".encode())
        elif verb == b"STAR" and server.offers_starttls and not self.tls:
            at_handshake = server.faults.get("handshake")
            if server.starttls_reply is not None:
                out.append(server.starttls_reply)
            elif at_handshake is Fault.STALL:
                out.append(b"220 2.0.0 Ready to start TLS\r\n")
                self.writer.write(b"".join(out))
                out.clear()
                return _LISTEN
            elif server.after_starttls is not None or at_handshake is not None:
                instead = server.after_starttls
                if instead is None:
                    instead = at_handshake if isinstance(at_handshake, bytes) else b""
                out.append(b"220 2.0.0 Go ahead\r\n" + instead)
                self.writer.write(b"".join(out))
                out.clear()
                # Half-close, then read what comes: closing with the ClientHello unread
                # would make the kernel send RST instead of FIN, by timing.
                self.writer.write_eof()
                return _LISTEN
            else:
                out.append(b"220 2.0.0 Ready to start TLS\r\n")
                return _TLS
        elif verb == b"MAIL" and self.delivered == server.messages_per_connection:
            out.append(b"421 4.7.0 Too many messages on one connection, closing\r\n")
            raise _Hangup
        elif verb == b"MAIL":
            self.mail_from, self.rcpts, self.in_mail = line[10:].strip(), [], True
            out.append(b"250 2.1.0 Ok\r\n")
        elif verb == b"RCPT" and not self.in_mail:
            out.append(b"503 5.5.1 Need MAIL command\r\n")
        elif verb == b"RCPT":
            self.rcpt_count += 1
            failure = server.rcpt_failure
            if failure is not None and failure[0] == self.rcpt_count:
                if failure[1] == "close":
                    out.append(b"250 2.1.5 Ok\r\n")
                raise _Hangup
            reply = next(
                (r for k, r in server.rcpt_replies.items() if k in line), b"250 2.1.5 Ok\r\n"
            )
            if reply.startswith(b"2"):
                self.rcpts.append(line[8:].strip())
            out.append(reply)
        elif verb == b"DATA" and not self.rcpts:
            out.append(b"503 5.5.1 Need RCPT command\r\n")
        elif verb == b"DATA":
            out.append(server.data_reply)
            if server.data_reply.startswith(b"354"):
                return _DATA
        elif verb == b"RSET":
            self.end_transaction()
            out.append(b"250 2.0.0 Ok\r\n")
        elif verb == b"BDAT" and "CHUNKING" in server.ehlo_keywords:
            return self.bdat(line)
        elif verb == b"NOOP":
            out.append(b"250 2.0.0 Ok\r\n")
        elif verb == b"QUIT":
            out.append(b"221 2.0.0 Bye\r\n")
            return _QUIT
        else:
            out.append(b"500 5.5.2 What?\r\n")
        return None

    def bdat(self, line: bytes) -> object:
        """``BDAT size [LAST]``: the octets are read next, then :meth:`end_of_chunk`."""
        words = line.split()
        if not 2 <= len(words) <= 3 or not words[1].isdigit():
            raise _Hangup  # where the chunk ends is unknown
        self.chunk_left, self.chunk_last = int(words[1]), len(words) == 3
        self.bdat_commands.append(line.rstrip(b"\r\n"))
        self.chunk_refusal = None if self.rcpts else b"503 5.5.1 Need RCPT command\r\n"
        return _CHUNK

    def end_of_chunk(self) -> bytes | object:
        """Every octet of a chunk is in: its reply (LAST: the verdict), or _LISTEN."""
        server = self.server
        if self.chunk_refusal is not None:
            return self.chunk_refusal
        stage = "dot" if self.chunk_last else "chunk"
        fault = server.faults.get(stage)
        if fault is Fault.CLOSE:
            raise _Hangup
        if fault is Fault.STALL or (self.chunk_last and server.dot_reply is None):
            return _LISTEN
        if not self.chunk_last:
            if isinstance(fault, bytes):
                self.end_transaction()  # RFC 3030: the transaction failed
                return fault
            return b"250 2.0.0 Ok: %d octets\r\n" % int(self.bdat_commands[-1].split()[1])
        wire = bytes(self.bdat_content)
        return self.end_of_data(wire, bdat=True)

    def end_transaction(self) -> None:
        self.mail_from, self.rcpts, self.in_mail = b"", [], False
        self.bdat_content, self.bdat_commands = bytearray(), []

    def end_of_data(self, wire: bytes, *, bdat: bool = False) -> bytes:
        server = self.server
        at_dot = server.faults.get("dot")
        reply = at_dot if isinstance(at_dot, bytes) else server.dot_reply
        assert reply is not None
        if reply.startswith(b"2"):
            self.delivered += 1
            version, cipher = describe_tls(self.writer.get_extra_info("ssl_object"))
            chunks = tuple(self.bdat_commands)
            message = ReceivedMessage(
                self.mail_from, self.rcpts, wire, version, cipher, bdat=bdat, chunks=chunks
            )
            server._store(message)
        self.end_transaction()
        return reply


_DATA, _LISTEN, _QUIT, _TLS, _CHUNK = object(), object(), object(), object(), object()
_STAGES_BY_VERB = {
    b"EHLO": "EHLO",
    b"HELO": "HELO",
    b"STAR": "STARTTLS",
    b"MAIL": "MAIL",
    b"RCPT": "RCPT",
    b"DATA": "DATA",
}


def _address(argument: bytes) -> str:
    return argument.partition(b">")[0].removeprefix(b"<").decode("utf-8", "replace")


def _body_end(body: bytearray, start: int) -> int:
    """Where the final ``.`` line starts in ``body`` (the CRLF before it belongs to the
    content), or -1; searched from ``start``. An empty body is the ``.`` line alone."""
    if body[:3] == b".\r\n":
        return 0
    end = body.find(_END_OF_DATA, start)
    return -1 if end < 0 else end + 2
