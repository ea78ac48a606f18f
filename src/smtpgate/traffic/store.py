"""The traffic store: ``transaction`` records in, database rows out, off the mail path.

The event log feeds every record to :meth:`TrafficStore.observe` on the
event loop, in the middle of a session's work: it only appends the record
to a bounded queue (no formatting, no I/O, no lock the writer can hold
long). A writer thread takes what is queued, turns it into rows and writes
them in one transaction per batch. When the database is slow or failing the
queue fills, and records beyond :attr:`TrafficStore.capacity` are dropped
and counted, never the mail: a ``traffic_dropped`` record says so once per
episode and ``traffic_resumed`` how many were lost when writes go through
again. A failed batch is kept and retried (``traffic_write_failed`` once
per episode). The writer also prunes rows older than the retention.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from smtpgate.config.schema import Config
from smtpgate.logs import EventLog, describe_error
from smtpgate.traffic.database import SQLITE_FILE, Connection, DatabaseError, TrafficDatabase
from smtpgate.traffic.rows import TrafficRow

#: Records waiting for the writer at most; beyond, new ones are dropped.
DEFAULT_CAPACITY = 10_000
#: Rows per database transaction at most.
BATCH = 500
#: How long the writer lets records gather before a batch (fewer, larger transactions).
FLUSH_INTERVAL = 0.5
#: How often rows older than the retention are removed.
PRUNE_INTERVAL = 600.0
#: Wait before retrying a failed batch, doubled per failure up to the maximum.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0


class TrafficStore:
    """The queue, the writer thread and the database of one ``serve``."""

    def __init__(
        self,
        database: TrafficDatabase,
        log: EventLog,
        *,
        instance: str,
        retention: float,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.instance = instance
        self.retention = retention
        self.capacity = capacity
        self._log = log
        self._clock = clock
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Records dropped in the current episode of a full queue (0: not full).
        self._dropped = 0
        #: Records the writer took from the queue and has not written yet: they count
        #: against the capacity too, so a stuck batch cannot let the queue grow.
        self._in_flight = 0
        #: Rows written since start (tests and the metrics read it).
        self.written = 0
        self.dropped_total = 0

    # -- the event loop side -----------------------------------------------------------------

    def observe(self, record: dict[str, Any]) -> None:
        """The log's observer: queue a ``transaction`` record, or count it as dropped."""
        if record.get("event") != "transaction":
            return
        if len(self._queue) + self._in_flight >= self.capacity:
            self.dropped_total += 1
            self._dropped += 1
            if self._dropped == 1:
                self._log.emit(
                    "traffic_dropped",
                    reason=(
                        f"{self.capacity} records wait for {self.database.where}; "
                        "transaction records are not stored until it catches up"
                    ),
                )
            return
        self._queue.append(record)
        if len(self._queue) >= BATCH:
            self._wake.set()

    def start(self) -> None:
        """Start the writer and observe the log; call on the event loop. The database
        is not touched here: mail must flow while it is unreachable (the writer
        retries and says so)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="traffic-writer", daemon=True)
        self._thread.start()
        self._log.observe(self.observe)

    async def stop(self) -> None:
        """Stop observing, write what is queued (a last try), end the writer."""
        self._log.unobserve(self.observe)
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 15)

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        pending: list[TrafficRow] = []
        retry_wait = 0.0
        failing = False
        next_prune = 0.0
        connection: Connection | None = None
        while True:
            stopping = self._stopping
            if not stopping:
                self._wake.wait(retry_wait or FLUSH_INTERVAL)
                self._wake.clear()
            while len(pending) < BATCH and self._queue:
                record = self._queue.popleft()
                pending.append(TrafficRow.from_record(record, self.instance))
            self._in_flight = len(pending)
            try:
                if connection is None:
                    connection = self.database.open()
                    self.database.create_schema(connection)
                if pending:
                    self.database.insert(connection, pending)
                    self.written += len(pending)
                    pending = []
                    self._in_flight = 0
                    if self._dropped:
                        self._call(self._resumed)
                now = self._clock()
                if now >= next_prune:
                    self.database.prune(connection, int((now - self.retention) * 1000))
                    next_prune = now + PRUNE_INTERVAL
            except DatabaseError as exc:
                # A broken connection (a restarted PostgreSQL) is opened afresh next time.
                if connection is not None:
                    connection.close_quietly()
                    connection = None
                retry_wait = min(RETRY_MAX, max(RETRY_FIRST, retry_wait * 2))
                if not failing:
                    failing = True
                    self._call(
                        functools.partial(
                            self._log.emit,
                            "traffic_write_failed",
                            database=self.database.where,
                            reason=describe_error(exc),
                        )
                    )
                if stopping:
                    return
                continue
            retry_wait = 0.0
            failing = False
            if self._queue and not stopping:
                self._wake.set()  # more than one batch waits: no pause
                continue
            if stopping and not self._queue:
                if connection is not None:
                    connection.close_quietly()
                return

    def _call(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop (the log and the drop count are its)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: serve is ending
            loop.call_soon_threadsafe(callback)

    def _resumed(self) -> None:
        if self._dropped and len(self._queue) + self._in_flight < self.capacity:
            dropped, self._dropped = self._dropped, 0
            self._log.emit("traffic_resumed", dropped=dropped)

    def prune_now(self) -> int:
        """Remove rows older than the retention now (the writer does it every
        PRUNE_INTERVAL); how many."""
        with self.database.connect() as connection:
            return self.database.prune(connection, int((self._clock() - self.retention) * 1000))


def open_store(config: Config, log: EventLog) -> TrafficStore | None:
    """The store ``serve`` runs: with the console enabled (its pages read it), or with
    ``[console] database`` set (an instance that only writes to the shared database)."""
    database = traffic_database(config)
    if database is None:
        return None
    return TrafficStore(
        database, log, instance=config.gateway.hostname, retention=config.console.retention
    )


def traffic_database(config: Config) -> TrafficDatabase | None:
    """The database ``serve`` keeps traffic rows in; None when it keeps none."""
    console = config.console
    if console.database is not None:
        return TrafficDatabase(url=console.database)
    if console.enabled:
        return TrafficDatabase(path=config.gateway.state_dir / SQLITE_FILE)
    return None
