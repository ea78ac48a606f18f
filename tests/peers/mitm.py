"""A man in the middle between smtpgate and its upstream, for the downgrade tests.

It listens on loopback, connects each connection it takes to the real
upstream, relays the bytes both ways, and records every byte smtpgate sent
(:attr:`Mitm.from_smtpgate`, one buffer per connection, exactly as on the
wire: ciphertext once TLS runs). The attack is one of:

- ``"strip"``: removes ``STARTTLS`` from the upstream's EHLO reply;
- ``"454"``: answers smtpgate's ``STARTTLS`` itself with ``454 4.7.0`` and
  never passes it on (the upstream goes on in clear);
- ``"break"``: passes ``STARTTLS`` and the upstream's ``220``, then replaces
  what the upstream sends with bytes that are no TLS handshake;
- ``"inject"``: passes the upstream's ``220`` to STARTTLS with plaintext replies
  appended in the same segment (STARTTLS response injection: a client that
  kept them would take them, inside TLS, for the answers to its next commands);
- ``None``: relays faithfully (the control).

It runs on an asyncio loop (the e2e tests' loop thread, like
:class:`tests.peers.scripted_upstream.ScriptedUpstream`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

__all__ = ["Attack", "Mitm"]

Attack = Literal["strip", "454", "break", "inject"] | None

REPLY_454 = b"454 4.7.0 TLS not available due to temporary reason\r\n"
INJECTED = b"250-injected.example\r\n250 8BITMIME\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
GARBAGE = b"\x15\x03\x03\x00\x02\x02\x28" + b"not a ServerHello, a man in the middle\r\n" * 8


class Mitm:
    def __init__(self, upstream_port: int, attack: Attack) -> None:
        self.upstream_port = upstream_port
        self.attack = attack
        #: Per connection: every byte smtpgate sent, as on the wire.
        self.from_smtpgate: list[bytearray] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, gate_r: asyncio.StreamReader, gate_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        sent = bytearray()
        self.from_smtpgate.append(sent)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        #: Set once smtpgate asked for STARTTLS and the attack takes the answer over.
        starttls_asked = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._to_upstream(gate_r, up_w, gate_w, sent, starttls_asked))
                group.create_task(self._to_smtpgate(up_r, gate_w, starttls_asked))
        except* (ConnectionError, OSError, EOFError):
            pass
        finally:
            for writer in (gate_w, up_w):
                with contextlib.suppress(Exception):
                    writer.close()
            self._tasks.discard(task)

    async def _to_upstream(
        self,
        gate_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        gate_w: asyncio.StreamWriter,
        sent: bytearray,
        starttls_asked: asyncio.Event,
    ) -> None:
        line_start = True
        while data := await gate_r.read(65536):
            sent += data
            if self.attack == "454" and line_start and data.upper().startswith(b"STARTTLS\r\n"):
                gate_w.write(REPLY_454)
                rest = data[len(b"STARTTLS\r\n") :]
                if rest:
                    up_w.write(rest)
                line_start = True
                continue
            if self.attack in ("break", "inject") and data.upper().startswith(b"STARTTLS\r\n"):
                starttls_asked.set()
            line_start = data.endswith(b"\n")
            up_w.write(data)
            await up_w.drain()
        up_w.write_eof()

    async def _to_smtpgate(
        self,
        up_r: asyncio.StreamReader,
        gate_w: asyncio.StreamWriter,
        starttls_asked: asyncio.Event,
    ) -> None:
        pending = b""
        while data := await up_r.read(65536):
            if self.attack in ("break", "inject") and starttls_asked.is_set():
                pending += data
                if b"\r\n" not in pending:
                    continue
                line, _, rest = pending.partition(b"\r\n")
                if self.attack == "break":
                    # The upstream's 220 goes through, its handshake does not.
                    gate_w.write(line + b"\r\n" + GARBAGE)
                    await gate_w.drain()
                    return
                gate_w.write(line + b"\r\n" + INJECTED + rest)
                starttls_asked.clear()
                pending = b""
                continue
            if self.attack == "strip":
                data = strip_starttls(data)
            gate_w.write(data)
            await gate_w.drain()
        gate_w.write_eof()


def strip_starttls(data: bytes) -> bytes:
    """``data`` with any ``250-STARTTLS`` / ``250 STARTTLS`` line of an EHLO reply
    removed (the reply's last line keeps its space)."""
    lines = data.split(b"\r\n")
    kept = [line for line in lines if line[4:].upper() != b"STARTTLS"]
    if len(kept) == len(lines):
        return data
    # If STARTTLS was the last line, the line before it is the last one now.
    for i in range(len(kept) - 1, -1, -1):
        if kept[i][:3].isdigit():
            if kept[i][3:4] == b"-" and (i == len(kept) - 1 or not kept[i + 1][:3].isdigit()):
                kept[i] = kept[i][:3] + b" " + kept[i][4:]
            break
    return b"\r\n".join(kept)
