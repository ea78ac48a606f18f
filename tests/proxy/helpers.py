"""Real-socket plumbing for the end-to-end proxy tests.

Everything listens on 127.0.0.1 and runs in background threads, so the tests
themselves are plain synchronous code that reads like the conversation it
checks (``C: EHLO x`` / ``S: 250-...``):

- :class:`LoopThread`: an event loop (uvloop, as ``smtpgate serve`` uses) in a thread
- :class:`GatewayHarness`: an in-process :class:`smtpgate.proxy.gateway.Gateway`
  with its JSON event log in memory
- :class:`AiosmtpdUpstream`: a recording aiosmtpd server (clear, STARTTLS or implicit TLS)
- :class:`RawUpstream`: a hand-written SMTP server that can misbehave on purpose
  (answers 4xx/5xx to the final dot, drops mid-DATA, never answers, sends
  garbage, breaks the TLS handshake) and records the exact bytes it received
- :class:`RawClient`: a socket client for exact bytes (pipelining, injection, smuggling)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from cryptography import x509

from smtpgate.config import toml_writer
from smtpgate.config.loader import parse_config
from smtpgate.logs import EventLog
from smtpgate.proxy.gateway import Gateway
from smtpgate.smtp import Reply
from tests.peers import free_port as free_port  # re-exported for the tests
from tests.peers.smtpgate_proc import rule as rule  # re-exported for the tests
from tests.peers.upstream import AiosmtpdUpstream as PeerUpstream

T = TypeVar("T")

TIMEOUT = 10.0
HOSTNAME = "mx.example.test"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


# --- TOML for the gateway ---------------------------------------------------------------


def config_toml(
    *,
    state_dir: Path,
    listen_port: int,
    upstream_port: int,
    upstream_host: str = "127.0.0.1",
    rules: Sequence[Mapping[str, Any]] = (),
    profile: Mapping[str, Any] | None = None,
    general: Mapping[str, Any] | None = None,
    esmtp: Mapping[str, Any] | None = None,
    starttls: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
    direction: str = "incoming",
    certificates: Mapping[str, Any] | None = None,
    sni: Sequence[Mapping[str, Any]] = (),
    logging: Mapping[str, Any] | None = None,
) -> str:
    """One policy ``p`` -> action ``A`` -> profile ``T``, with test-friendly timeouts."""
    certs: dict[str, Any] = dict(certificates or {})
    if sni:
        certs["sni"] = list(sni)
    starttls_table: dict[str, Any] = {"tls_profile": "T", **(starttls or {})}
    if rules:
        starttls_table["rules"] = list(rules)
    action: dict[str, Any] = {
        "name": "A",
        "direction": direction,
        "general": {"command_timeout": "8s", "data_timeout": "8s", **(general or {})},
    }
    if esmtp:
        action["esmtp"] = dict(esmtp)
    action["starttls"] = starttls_table
    config: dict[str, Any] = {"gateway": {"hostname": HOSTNAME, "state_dir": str(state_dir)}}
    if logging:
        config["logging"] = dict(logging)
    if certs:
        config["certificates"] = certs
    config["policies"] = [
        {
            "name": "p",
            "listen": f"127.0.0.1:{listen_port}",
            "upstream": f"{upstream_host}:{upstream_port}",
            "proxy_action": "A",
            **(policy or {}),
        }
    ]
    config["tls_profiles"] = [
        {"name": "T", "min_version": "1.2", "pfs": "allowed", **(profile or {})}
    ]
    config["proxy_actions"] = [action]
    return toml_writer.dumps(config)


# --- event loop in a thread, and the gateway on it --------------------------------------


class LoopThread:
    """uvloop, as ``smtpgate serve`` uses; ``SMTPGATE_E2E_LOOP=asyncio``: the stdlib loop."""

    def __init__(self, *, use_uvloop: bool | None = None) -> None:
        if use_uvloop is None:
            use_uvloop = os.environ.get("SMTPGATE_E2E_LOOP", "uvloop") != "asyncio"
        self.loop = uvloop.new_event_loop() if use_uvloop else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class GatewayHarness:
    """An in-process gateway; ``records()`` are the parsed JSON lines of its log."""

    def __init__(self, toml_text: str, base_dir: Path, loop: LoopThread) -> None:
        self.toml = toml_text
        self.config = parse_config(toml_text, base_dir)
        self.loop = loop
        self._log_stream = io.StringIO()
        self.log = EventLog(self._log_stream)

        async def start() -> Gateway:
            gateway = Gateway(self.config, self.log, drain_seconds=1.0)
            await gateway.start()
            return gateway

        self.gateway = loop.run(start(), timeout=30)
        self.ports = self.gateway.bound_ports()
        self.port = self.ports["p"]
        self.state_dir = Path(self.config.gateway.state_dir)

    def stop(self) -> None:
        self.loop.run(self.gateway.stop(), timeout=15)

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        lines = self._log_stream.getvalue().splitlines()
        out = [json.loads(line) for line in lines if line.strip()]
        return [r for r in out if event is None or r["event"] == event]

    def wait_record(
        self,
        event: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda r: True,
        *,
        count: int = 1,
        timeout: float = 8.0,
    ) -> list[dict[str, Any]]:
        def matching() -> list[dict[str, Any]]:
            return [r for r in self.records(event) if predicate(r)]

        wait_until(lambda: len(matching()) >= count, timeout, f"{count} {event!r} record(s)")
        return matching()

    def transaction(self, count: int = 1) -> dict[str, Any]:
        """The ``count``-th transaction summary record (waits for it)."""
        return self.wait_record("transaction", count=count)[count - 1]


# --- TLS contexts -------------------------------------------------------------------------


def insecure_client_context(
    *, max_version: ssl.TLSVersion | None = None, ciphers: str | None = None
) -> ssl.SSLContext:
    """A sending MTA that encrypts but does not check the proxy's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def server_context(
    cert: Any,
    *,
    max_version: ssl.TLSVersion | None = None,
    sni_seen: list[str | None] | None = None,
) -> ssl.SSLContext:
    """Server-side context from a ``trustme.LeafCert``; records SNI names in ``sni_seen``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    if sni_seen is not None:

        def remember(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            sni_seen.append(name)

        ctx.sni_callback = remember
    return ctx


def cert_names(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


# --- aiosmtpd upstream --------------------------------------------------------------------


class AiosmtpdUpstream(PeerUpstream):
    """The recording aiosmtpd receiver of :mod:`tests.peers.upstream`, started at once,
    SMTPUTF8 on; ``stop()`` it (the ``make_upstream`` fixture does)."""

    def __init__(
        self,
        *,
        data_reply: str = "250 2.0.0 Ok queued",
        smtputf8: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_reply=data_reply, smtputf8=smtputf8, **kwargs)
        self.start()


# --- a misbehaving upstream ---------------------------------------------------------------


@dataclass
class RawMessage:
    mail_from: bytes
    rcpt_tos: list[bytes]
    wire: bytes  # DATA bytes as received, still dot-stuffed, without the final ".\r\n"


class RawUpstream:
    """A small SMTP server with knobs for misbehaviour; records raw bytes.

    ``greeting``: the 220 line, or ``None`` to never say anything.
    ``dot_reply``: bytes sent for the final dot (default 250); ``None``: never answer.
    ``drop_after_body_bytes``: close the connection once this many body bytes arrived.
    ``starttls``: advertise STARTTLS, answer 220, then send garbage instead of a handshake.
    ``starttls_refusal``: with ``starttls``, answer STARTTLS with these bytes and go on in clear.
    ``after_starttls``: what is sent after the 220 instead of a handshake, before closing
    (``b""``: close at once, so the handshake meets the end of the stream and nothing else).
    ``rcpt_failure``: ``(n, "drop")`` closes the connection instead of answering the n-th
    RCPT of a connection; ``(n, "close")`` answers it 250, then closes.
    ``rcpt_replies``: ``{"text": b"550 ...\r\n"}`` answers a RCPT containing ``text`` so.
    ``messages_per_connection``: after this many messages on a connection, the next
    MAIL gets ``421 4.7.0`` and the connection is closed (Exim's
    ``smtp_accept_max_per_connection``).
    Out-of-sequence commands get 503, as from a real server.
    """

    def __init__(
        self,
        *,
        greeting: bytes | None = b"220 raw.upstream.test ESMTP\r\n",
        ehlo_keywords: Iterable[str] = ("PIPELINING", "8BITMIME"),
        starttls: bool = False,
        starttls_refusal: bytes | None = None,
        after_starttls: bytes = b"this is not a TLS ServerHello\r\n" * 4,
        dot_reply: bytes | None = b"250 2.0.0 Ok queued\r\n",
        drop_after_body_bytes: int | None = None,
        rcpt_failure: tuple[int, str] | None = None,
        rcpt_replies: Mapping[str, bytes] | None = None,
        messages_per_connection: int | None = None,
    ) -> None:
        self.greeting = greeting
        self.ehlo_keywords = list(ehlo_keywords)
        self.starttls = starttls
        self.starttls_refusal = starttls_refusal
        self.after_starttls = after_starttls
        self.dot_reply = dot_reply
        self.drop_after_body_bytes = drop_after_body_bytes
        self.rcpt_failure = rcpt_failure
        self.rcpt_replies = dict(rcpt_replies or {})
        self.messages_per_connection = messages_per_connection
        self.messages: list[RawMessage] = []
        #: Command lines (outside DATA) of every connection, in arrival order.
        self.commands: list[bytes] = []
        self.transcripts: list[bytearray] = []
        self.connections = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def mail_commands(self) -> int:
        with self.lock:
            return sum(c.upper().startswith(b"MAIL FROM:") for c in self.commands)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(15)
        transcript = bytearray()
        with self.lock:
            self.connections += 1
            self.transcripts.append(transcript)
        buf = b""

        def read_line() -> bytes | None:
            nonlocal buf
            while b"\n" not in buf:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return None
                if not data:
                    return None
                with self.lock:
                    transcript.extend(data)
                buf += data
            line, _, buf = buf.partition(b"\n")
            return line + b"\n"

        def send(data: bytes) -> None:
            with contextlib.suppress(OSError):
                sock.sendall(data)

        try:
            if self.greeting is None:
                while read_line() is not None:
                    pass
                return
            send(self.greeting)
            mail_from, rcpts, in_mail, rcpt_count, delivered = b"", [], False, 0, 0
            while True:
                line = read_line()
                if line is None:
                    return
                with self.lock:
                    self.commands.append(line.rstrip(b"\r\n"))
                verb = line[:4].upper()
                if verb == b"EHLO":
                    keywords = [*self.ehlo_keywords, *(["STARTTLS"] if self.starttls else [])]
                    lines = ["raw.upstream.test", *keywords]
                    text = "".join(
                        f"250{'-' if i < len(lines) - 1 else ' '}{w}\r\n"
                        for i, w in enumerate(lines)
                    )
                    send(text.encode())
                elif verb == b"HELO":
                    send(b"250 raw.upstream.test\r\n")
                elif verb == b"STAR" and self.starttls and self.starttls_refusal is not None:
                    send(self.starttls_refusal)
                elif verb == b"STAR" and self.starttls:
                    send(b"220 2.0.0 Go ahead\r\n")
                    send(self.after_starttls)
                    # Half-close, then read what comes: closing with the ClientHello
                    # unread would make the kernel send RST instead of FIN, by timing.
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    while read_line() is not None:
                        pass
                    return
                elif verb == b"MAIL" and delivered == self.messages_per_connection:
                    send(b"421 4.7.0 Too many messages on one connection, closing\r\n")
                    sock.shutdown(socket.SHUT_RDWR)
                    return
                elif verb == b"MAIL":
                    mail_from, rcpts, in_mail = line[10:].strip(), [], True
                    send(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT" and not in_mail:
                    send(b"503 5.5.1 Need MAIL command\r\n")
                elif verb == b"RCPT":
                    rcpt_count += 1
                    failure = self.rcpt_failure
                    if failure is not None and failure[0] == rcpt_count:
                        if failure[1] == "close":
                            send(b"250 2.1.5 Ok\r\n")
                        sock.shutdown(socket.SHUT_RDWR)
                        return
                    special = [r for k, r in self.rcpt_replies.items() if k.encode() in line]
                    if special:
                        send(special[0])
                        continue
                    rcpts.append(line[8:].strip())
                    send(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA" and not rcpts:
                    send(b"503 5.5.1 Need RCPT command\r\n")
                elif verb == b"DATA":
                    send(b"354 Go ahead\r\n")
                    body = bytearray()
                    while True:
                        data_line = read_line()
                        if data_line is None:
                            return  # connection lost mid-DATA: nothing delivered
                        if data_line == b".\r\n":
                            break
                        body += data_line
                        limit = self.drop_after_body_bytes
                        if limit is not None and len(body) >= limit:
                            sock.shutdown(socket.SHUT_RDWR)
                            return
                    if self.dot_reply is None:
                        while read_line() is not None:
                            pass
                        return
                    if self.dot_reply.startswith(b"250"):
                        delivered += 1
                        with self.lock:
                            self.messages.append(RawMessage(mail_from, rcpts, bytes(body)))
                    mail_from, rcpts, in_mail = b"", [], False
                    send(self.dot_reply)
                elif verb == b"RSET":
                    mail_from, rcpts, in_mail = b"", [], False
                    send(b"250 2.0.0 Ok\r\n")
                elif verb == b"NOOP":
                    send(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    send(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    send(b"500 5.5.2 What?\r\n")
        finally:
            with contextlib.suppress(OSError):
                sock.close()


# --- a client for exact bytes ---------------------------------------------------------------


class RawClient:
    def __init__(self, port: int, *, implicit_tls: ssl.SSLContext | None = None) -> None:
        sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if implicit_tls is not None:
            sock = implicit_tls.wrap_socket(sock)
        self.sock = sock
        self._buf = b""
        self.greeting = self.reply("greeting")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, command: str = "") -> Reply:
        """The next reply; ``command`` names what it answers."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self._buf:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"connection closed after {lines!r}")
                self._buf += data
            line, _, self._buf = self._buf.partition(b"\r\n")
            lines.append(line[4:])
            if line[3:4] != b"-":
                return Reply(int(line[:3]), tuple(lines), command)

    def cmd(self, line: str | bytes) -> Reply:
        data = line.encode("utf-8") if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply(data.split(b" ", 1)[0].decode("ascii", "replace").upper())

    def ehlo(self, name: str = "client.test") -> Reply:
        return self.cmd(f"EHLO {name}")

    def starttls(self, ctx: ssl.SSLContext, server_hostname: str | None = None) -> ssl.SSLSocket:
        answer = self.cmd("STARTTLS")
        assert answer.code == 220, answer
        assert not self._buf
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return self.sock

    def pending(self, wait: float = 0.3) -> bytes:
        """Bytes the server sent that nobody asked for (waits ``wait`` seconds)."""
        self.sock.settimeout(wait)
        try:
            data = self._buf + self.sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            data = self._buf
        finally:
            self.sock.settimeout(TIMEOUT)
        self._buf = b""
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a well-behaved sending MTA -------------------------------------------------------------


def message(subject: str = "test", body: str = "hello\r\n") -> bytes:
    return f"From: a@sender.example\r\nSubject: {subject}\r\n\r\n{body}".encode()


def smtplib_send(
    port: int,
    sender: str,
    recipients: Sequence[str],
    data: bytes | None = None,
    *,
    starttls: bool,
    mail_options: Sequence[str] = (),
) -> dict[str, tuple[int, bytes]]:
    """Send one message with smtplib (STARTTLS first if asked); returns the refused recipients."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        if starttls:
            client.starttls(context=insecure_client_context())
            client.ehlo("client.test")
        return client.sendmail(
            sender, list(recipients), data or message(), mail_options=list(mail_options)
        )
