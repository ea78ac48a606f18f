"""The link between ``serve``'s supervisor and one worker process: a socket pair.

Down, supervisor to worker, frames (a kind byte, a 4-byte length, the payload):
``CONFIG``, the configuration to run and the worker's share of the limits (the
first one starts the worker, each later one is a reload), and ``STATUS``, a
question for the gauges a scrape reads.

Up, worker to supervisor, JSON lines: the worker's log records (objects with
``event``), written in batches (one write per turn of its event loop, never
one per record), and the answers: ``{"applied": true}`` after a ``CONFIG``,
``{"status": {...}}`` after a ``STATUS``. Answers travel behind the records
written before them, so the supervisor has seen those records when it reads
the answer.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from smtpgate.config.schema import Config
from smtpgate.proxy.gateway import WorkerShare

#: Frame kinds (supervisor to worker).
CONFIG = b"C"
STATUS = b"S"

_HEADER = struct.Struct("!cI")

#: Keys of the answers (worker to supervisor); a record has ``event`` instead.
APPLIED = "applied"
STATUS_KEY = "status"


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a worker runs: the configuration (as the supervisor read and checked it)
    and its share of the limits."""

    config: Config
    share: WorkerShare


def config_frame(config: Config, workers: int) -> bytes:
    """A ``CONFIG`` frame. Pickled: the worker runs the very configuration its
    supervisor checked (no second parse that a file changed meanwhile could fail);
    both ends are this program, the socket pair is theirs alone."""
    payload = pickle.dumps(Assignment(config, WorkerShare(workers)))
    return _HEADER.pack(CONFIG, len(payload)) + payload


def status_frame() -> bytes:
    return _HEADER.pack(STATUS, 0)


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """The next frame's kind and payload; None once the supervisor is gone."""
    try:
        kind, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        return kind, await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None


def assignment(payload: bytes) -> Assignment:
    found = pickle.loads(payload)
    if not isinstance(found, Assignment):
        raise TypeError(f"not an assignment: {type(found).__name__}")
    return found


def answer(message: dict[str, Any]) -> str:
    """An answer as its line (without the newline)."""
    return json.dumps(message, separators=(",", ":"))


class Lines:
    """Lines out of the bytes as they arrive (a read may end inside a line)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> Iterator[str]:
        """Each complete line of what came so far."""
        *complete, self._rest = (self._rest + data).split(b"\n")
        for raw in complete:
            if raw:
                yield raw.decode("utf-8", "replace")


#: A record line begins so (``logs.py`` writes its time, always 24 characters, then
#: its event), and its event name begins at this offset.
_RECORD_START = '{"time":"'
_EVENT_AT = len('{"time":"2026-01-01T00:00:00.000Z","event":"')


def event_of(line: str) -> str | None:
    """The event of a record line, None for an answer. Read at its place in the line,
    not parsed: the supervisor parses only the records something needs as objects."""
    if line.startswith(_RECORD_START) and line[_EVENT_AT - 11 : _EVENT_AT] == '","event":"':
        return line[_EVENT_AT : line.find('"', _EVENT_AT)]
    event = message_of(line).get("event")
    return str(event) if event is not None else None


def message_of(line: str) -> dict[str, Any]:
    """A line as the object it holds (``{}`` if it holds none)."""
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}
