"""The load generator: N concurrent senders on the project's sending peer, over uvloop.

A sender that resumes TLS sessions (as Postfix's ``tlsmgr`` makes its ``smtp``
clients do) is a client context whose ``wrap_bio`` hands the last session it
saw to the next handshake: asyncio and uvloop both create their TLS object
through ``wrap_bio``, so no change to the sending peer is needed.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from tests.peers.mailsender import OutgoingMessage, send_messages

HOST = "127.0.0.1"


def body(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    head = b"From: bench@sender.bench\r\nTo: rcpt@rcpt.bench\r\nSubject: bench\r\n\r\n"
    return head + line * ((size - len(head)) // len(line))


class ResumingContext(ssl.SSLContext):
    """A client context that offers the last TLS session it got on every new handshake."""

    session: ssl.SSLSession | None
    last: ssl.SSLObject | None

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        kwargs.setdefault("session", self.session)
        obj = super().wrap_bio(*args, **kwargs)
        self.last = obj
        return obj


def client_context(ca: str, *, resuming: bool) -> ssl.SSLContext:
    """Trusts the benchmark CA, not names (everything is 127.0.0.1)."""
    cls = ResumingContext if resuming else ssl.SSLContext
    context = cls(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.check_hostname = False
    if isinstance(context, ResumingContext):
        context.session = context.last = None
    return context


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float]
    handshakes: int = 0
    resumed: int = 0
    failures: list[str] = field(default_factory=list)


async def run_load(
    port: int,
    *,
    per_connection: int,
    total: int,
    concurrency: int,
    implicit: bool,
    ca: str,
    resuming: bool,
    message_size: int,
) -> LoadResult:
    """Send ``total`` messages; latency is connect to the last ``250`` divided by the
    messages of the connection. Each sender has its own context, so a resuming
    sender offers the session of its own previous connection."""
    message = OutgoingMessage("bench@sender.bench", ["rcpt@rcpt.bench"], body(message_size))
    connections = total // per_connection
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(connections):
        queue.put_nowait(i)
    result = LoadResult(0.0, [])

    async def sender() -> None:
        context = client_context(ca, resuming=resuming)
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            results = await send_messages(
                HOST,
                port,
                messages=[message] * per_connection,
                starttls=None if implicit else context,
                require_starttls=not implicit,
                implicit_tls=context if implicit else None,
                timeout=120,
            )
            elapsed = time.perf_counter() - started
            if not all(r.end is not None and r.end.code == 250 for r in results):
                result.failures.append(str(results[-1]))
                continue
            result.latencies.extend([elapsed / per_connection] * per_connection)
            if isinstance(context, ResumingContext) and context.last is not None:
                result.handshakes += 1
                result.resumed += context.last.session_reused
                # TLS 1.3 tickets arrive after the handshake: take the session at the end.
                context.session = context.last.session

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result
