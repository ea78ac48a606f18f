"""Connection limits: how many clients at once, from one address, and within the
process's open-files limit.

One :class:`ConnectionLimits` per gateway counts the client connections from
the moment they are taken (before a PROXY header or a handshake) until they
close, across reloads, all listeners together. A connection past a limit is
answered ``421 4.7.0`` and closed at once, so no client can use up what the
others need: not the descriptors (one address opening 20,000 connections), not
the sessions. Refusals are logged, at most one record per second per reason
(a flood would otherwise flood the log too), each with how many were refused
since the record before.
"""

from __future__ import annotations

import contextlib
import os
import resource
import ssl
from dataclasses import dataclass
from typing import Final

REPLY_TOO_MANY: Final = b"421 4.7.0 Too many connections, try again later\r\n"
REPLY_TOO_MANY_FROM_CLIENT: Final = (
    b"421 4.7.0 Too many connections from your address, try again later\r\n"
)

#: A session that ran out of memory (RFC 3463 X.3.0: a temporary problem of the
#: mail system; nothing about it the client could change).
REPLY_OUT_OF_MEMORY: Final = b"421 4.3.0 Insufficient system resources, try again later\r\n"

#: Why a connection was refused (the ``connection_refused`` record's ``reason``).
MAX_CONNECTIONS = "max_connections"
MAX_CONNECTIONS_PER_CLIENT = "max_connections_per_client"
OPEN_FILES = "open_files_limit"

#: Descriptors a session may hold: the client's and the upstream leg's.
DESCRIPTORS_PER_SESSION = 2
#: Descriptors kept free for everything else (listeners, log files, the console,
#: parked upstream legs, the upstream connects of sessions already running).
DESCRIPTORS_SPARE = 64


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    reply: bytes


TOO_MANY = Refusal(MAX_CONNECTIONS, REPLY_TOO_MANY)
TOO_MANY_FROM_CLIENT = Refusal(MAX_CONNECTIONS_PER_CLIENT, REPLY_TOO_MANY_FROM_CLIENT)
OUT_OF_DESCRIPTORS = Refusal(OPEN_FILES, REPLY_TOO_MANY)
#: Not a refusal at the door but counted and logged the same way (one record a second).
OUT_OF_MEMORY = Refusal("out_of_memory", REPLY_OUT_OF_MEMORY)


def is_out_of_memory(exc: BaseException | None) -> bool:
    """A failed allocation: Python's ``MemoryError``, or OpenSSL's own (an
    ``SSLError`` whose reason is ``MALLOC_FAILURE``, raised inside a handshake)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, ssl.SSLError) and "MALLOC_FAILURE" in str(exc.reason or exc).upper()


class ConnectionLimits:
    """Counts of client connections, total and per client address."""

    __slots__ = ("_last_logged", "_per_client", "_refused", "total")

    def __init__(self) -> None:
        self.total = 0
        self._per_client: dict[str, int] = {}
        #: Per reason: refusals not logged yet, and when the last record was written.
        self._refused: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}

    def take(self, max_connections: int) -> Refusal | None:
        """A connection arrived: counted and None, or why it is refused (not counted)."""
        if self.total >= max_connections:
            return TOO_MANY
        if out_of_descriptors(self.total):
            return OUT_OF_DESCRIPTORS
        self.total += 1
        return None

    def release(self) -> None:
        self.total -= 1

    def take_client(self, address: str, limit: int) -> Refusal | None:
        """The connection's client ``address`` is known: counted and None, or refused."""
        count = self._per_client.get(address, 0)
        if count >= limit:
            return TOO_MANY_FROM_CLIENT
        self._per_client[address] = count + 1
        return None

    def release_client(self, address: str) -> None:
        count = self._per_client[address] - 1
        if count:
            self._per_client[address] = count
        else:
            del self._per_client[address]

    def refused(self, refusal: Refusal, now: float) -> int:
        """Count a refusal; how many to log now (0: a record was written less than
        a second ago, this one is told in the next)."""
        reason = refusal.reason
        pending = self._refused.get(reason, 0) + 1
        if now - self._last_logged.get(reason, -1e9) < 1.0:
            self._refused[reason] = pending
            return 0
        self._refused[reason] = 0
        self._last_logged[reason] = now
        return pending


def out_of_descriptors(sessions: int) -> bool:
    """Whether one more session would leave fewer than :data:`DESCRIPTORS_SPARE`
    descriptors under the open-files limit.

    The descriptors in use are only counted (``/proc/self/fd``) when two per
    session could come within twice the spare of the limit, so with a generous
    limit this is one ``getrlimit`` per connection.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return False
    if (sessions + 1) * DESCRIPTORS_PER_SESSION + 2 * DESCRIPTORS_SPARE < soft:
        return False
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc, or no descriptor left to read it with
        return True
    return in_use + DESCRIPTORS_PER_SESSION + DESCRIPTORS_SPARE > soft


def raise_open_files_limit() -> tuple[int, int]:
    """The soft open-files limit raised to the hard one (as nginx's
    ``worker_rlimit_nofile`` and Go's runtime do); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft, hard


def descriptors_needed(max_connections: int) -> int:
    """Open files ``max_connections`` sessions may need at once."""
    return max_connections * DESCRIPTORS_PER_SESSION + DESCRIPTORS_SPARE
