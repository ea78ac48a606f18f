"""Real-socket plumbing for the end-to-end proxy tests.

Everything listens on 127.0.0.1 and runs in background threads, so the tests
themselves are plain synchronous code that reads like the conversation it
checks (``C: EHLO x`` / ``S: 250-...``):

- :class:`LoopThread`: an event loop (uvloop, as ``smtpgate serve`` uses) in a thread
- :class:`GatewayHarness`: an in-process :class:`smtpgate.proxy.gateway.Gateway`
  with its JSON event log in memory
- :class:`RawClient`: a socket client for exact bytes (pipelining, injection, smuggling)
- the replies the docs promise, written out once (``UPSTREAM_LOST``, ...)

The upstreams are peers of :mod:`tests.peers`: the recording aiosmtpd server
(fixture ``make_upstream``) and the scripted upstream that misbehaves on purpose
(fixture ``make_scripted_upstream``, on the same loop thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from cryptography import x509

from smtpgate.config.loader import parse_config
from smtpgate.logs import EventLog
from smtpgate.proxy.gateway import Gateway
from smtpgate.smtp import Reply
from tests.peers import wait_until
from tests.peers.certs import client_context
from tests.peers.gate_config import rule as rule  # re-exported for the tests
from tests.peers.upstream import AiosmtpdUpstream as AiosmtpdUpstream  # for the tests

T = TypeVar("T")

TIMEOUT = 10.0
#: The timeouts of every gateway these tests configure, unless a test says otherwise.
GENERAL = {"command_timeout": "8s", "data_timeout": "8s"}

# The replies the docs promise (docs/proxy.md, docs/configuration.md), as the
# client sees them: tests compare whole replies, never "some 4xx".
MUST_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"
UPSTREAM_TLS_UNAVAILABLE = "451 4.7.5 Cannot deliver encrypted as required, try later"
OTHER_TRANSACTION = "452 4.5.3 Recipient needs another transaction, send it again separately"
UPSTREAM_LOST = "451 4.4.2 Upstream connection lost, message not delivered, try later"
UPSTREAM_UNAVAILABLE = "451 4.4.1 Upstream server unavailable, try later"
NO_VALID_RECIPIENTS = "554 5.5.1 No valid recipients"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
TLS_ALREADY_ACTIVE = "503 5.5.1 TLS already active"


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

        return wait_until(
            lambda: found if len(found := matching()) >= count else None,
            lambda: f"{len(matching())} of {count} {event!r} record(s)",
            timeout=timeout,
            interval=0.02,
        )

    def transaction(self, count: int = 1) -> dict[str, Any]:
        """The ``count``-th transaction summary record (waits for it)."""
        return self.wait_record("transaction", count=count)[count - 1]


# --- TLS contexts -------------------------------------------------------------------------


def insecure_client_context(**versions_and_ciphers: Any) -> ssl.SSLContext:
    """A sending MTA that encrypts but does not check the proxy's certificate."""
    return client_context(verify=False, **versions_and_ciphers)


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
