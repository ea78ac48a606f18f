"""One worker process of ``serve`` (``[gateway] workers`` > 1): ``python -m
smtpgate.proxy.worker FD PARENT``, started by :mod:`smtpgate.proxy.supervisor`.

A worker runs an ordinary :class:`~smtpgate.proxy.gateway.Gateway` (its own
listeners, bound with ``SO_REUSEPORT`` beside the other workers', its own
upstream pools) and nothing else: no console, no metrics listener, no
traffic database, no log file. Its records go, batched, to the supervisor
over the socket pair ``FD`` (:mod:`smtpgate.proxy.channel`), which writes the
log once for all workers. Signals: ``SIGTERM`` and ``SIGINT`` drain and stop
it as they stop ``serve``; ``SIGHUP`` and ``SIGUSR1`` are the supervisor's
(a reload comes as a frame, with the configuration the supervisor checked).
When the supervisor dies, so does the worker (``PR_SET_PDEATHSIG``), as a
single ``serve`` process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from typing import Any

import uvloop

from smtpgate.config.errors import ConfigError
from smtpgate.logs import EventLog, describe_error
from smtpgate.proxy.channel import (
    APPLIED,
    CONFIG,
    STATUS,
    STATUS_KEY,
    answer,
    assignment,
    read_frame,
)
from smtpgate.proxy.gateway import Gateway

#: linux/prctl.h
_PR_SET_PDEATHSIG = 1

#: How long a worker's first record waits for others to go with it, seconds.
BATCH_DELAY = 0.005


class ForwardSink:
    """The worker's log sink: records to the supervisor, one write per batch.

    A record is queued; the first one of a batch schedules the write
    :data:`BATCH_DELAY` later, so the records of every session served meanwhile go
    in one system call and wake the supervisor once. Sent at the loop's next turn
    instead, a batch held one or two records, and the wake-ups, reads and writes
    cost the two processes about a tenth more CPU per message
    (``python -m bench.compare``: x0.86 at one message per connection, x0.91 at ten,
    with the delay). A record still reaches the log a few milliseconds behind the
    reply it goes with, which neither an administrator tailing it nor a reader
    waiting for it can tell. An answer goes at once, behind the records queued
    before it; so do the last records at the stop. The transport buffers what the
    supervisor has not read yet.
    """

    name = "the supervisor"

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport
        self._lines: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.Handle | None = None

    def write(self, line: str, record: dict[str, Any]) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(BATCH_DELAY, self.flush)
        self._lines.append(line)

    def send(self, message: dict[str, Any]) -> None:
        """An answer, behind the records queued before it, sent now."""
        self._lines.append(answer(message))
        self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            lines, self._lines = self._lines, []
            lines.append("")
            with contextlib.suppress(RuntimeError):  # the supervisor is gone
                self._transport.write("\n".join(lines).encode())

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


def _die_with_parent(parent: int) -> None:
    """Be killed with SIGKILL when the supervisor dies, whatever kills it (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


async def _run(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    first = await read_frame(reader)
    if first is None or first[0] != CONFIG:
        return 2
    given = assignment(first[1])
    sink = ForwardSink(writer.transport)
    log = EventLog(sink=sink, addresses=given.config.logging.addresses)
    gateway = Gateway(given.config, log, worker=given.share)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, gateway.request_stop)
    loop.add_signal_handler(signal.SIGINT, gateway.request_stop)
    for theirs in (signal.SIGHUP, signal.SIGUSR1):
        loop.add_signal_handler(theirs, lambda: None)
    try:
        await gateway.start()
    except ConfigError as exc:
        for key, reason in exc.errors:
            sys.stderr.write(f"error: worker {os.getpid()}: {key}: {reason}\n")
        sink.flush()
        return 1
    sink.send({APPLIED: True})  # the answer to the first frame: it listens
    obeying = loop.create_task(_obey(reader, gateway, sink))
    await gateway.serve_until_stopped()
    obeying.cancel()
    sink.flush()
    with contextlib.suppress(OSError):
        await writer.drain()  # every record reaches the supervisor before the exit
        writer.close()
        await writer.wait_closed()
    return 0


async def _obey(reader: asyncio.StreamReader, gateway: Gateway, sink: ForwardSink) -> None:
    """The supervisor's frames, one at a time, until it is gone (then the worker stops)."""
    while (frame := await read_frame(reader)) is not None:
        kind, payload = frame
        if kind == CONFIG:
            try:
                given = assignment(payload)
                applied = await gateway.apply(given.config, given.share)
            except Exception as exc:  # a bug must not leave the supervisor waiting
                gateway.log.emit("reload_failed", reason=f"worker: {describe_error(exc)}")
                applied = False
            sink.send({APPLIED: applied})
        elif kind == STATUS:
            pools = {name: len(pool) for name, pool in gateway.pools.items()}
            sink.send({STATUS_KEY: {"connections": gateway.open_connections, "pools": pools}})
    gateway.request_stop()


def main() -> None:
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    _die_with_parent(parent)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(_run(fd))
    sys.exit(code)


if __name__ == "__main__":
    main()
