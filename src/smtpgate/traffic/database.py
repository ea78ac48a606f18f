"""Where traffic rows are kept: an SQLite file (the default) or PostgreSQL.

Both speak the same SQL, written once here with ``?`` placeholders
(PostgreSQL's driver gets ``%s``); only creating the tables differs. A
:class:`TrafficDatabase` opens a connection per use: the writer thread keeps
one for its batches, each API request opens its own (a request runs in a
worker thread, and a SQLite connection belongs to the thread that opened it).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from smtpgate.traffic.rows import COLUMNS, TrafficRow

#: Errors of either database: the writer logs them and retries, a request answers 503.
DatabaseError: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error, OSError)

#: How long ``check`` waits for PostgreSQL to answer (serve's writer waits 10 s and retries).
_PROBE_TIMEOUT = 5

#: SQLite's file in ``gateway.state_dir``.
SQLITE_FILE = "traffic.sqlite3"

#: Serializes creating the tables when several instances start on one PostgreSQL
#: database at once (CREATE TABLE IF NOT EXISTS alone can collide): any constant key.
_SCHEMA_LOCK_KEY = 0x736D7470

#: Each column's type where it is not text; the same SQL in both databases.
_COLUMN_TYPES = {
    "time_ms": "BIGINT NOT NULL",
    "reply": "BIGINT NOT NULL",
    "size": "BIGINT NOT NULL",
    "mx_preference": "BIGINT",  # NULL: not an MX host
    "relay_ms": "DOUBLE PRECISION",  # NULL: no verdict on a relayed body
    "upstream_reused": "BIGINT NOT NULL DEFAULT 0",
}


def column_type(name: str) -> str:
    """``name``'s SQL type; the defaults are what rows written before the column was
    added (:meth:`TrafficDatabase.create_schema`) say."""
    return _COLUMN_TYPES.get(name, "TEXT NOT NULL DEFAULT ''")


_COLUMN_DEFINITIONS = ", ".join(f"{name} {column_type(name)}" for name in COLUMNS)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS traffic_time ON traffic (time_ms, id)",
    "CREATE INDEX IF NOT EXISTS traffic_sender ON traffic (sender_domain, time_ms)",
    "CREATE INDEX IF NOT EXISTS traffic_recipients_domain ON traffic_recipients (domain)",
    "CREATE INDEX IF NOT EXISTS traffic_recipients_row ON traffic_recipients (traffic_id)",
)


class Connection:
    """One database connection with the few calls the store makes, ``?`` placeholders."""

    def __init__(self, raw: Any, *, pyformat: bool) -> None:
        self._raw = raw
        self._pyformat = pyformat

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._pyformat else sql

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._raw.execute(self._sql(sql), tuple(params))
        return [tuple(row) for row in cursor.fetchall()]

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows it changed."""
        cursor = self._raw.execute(self._sql(sql), tuple(params))
        count: int = cursor.rowcount
        return count

    def columns(self, table: str) -> set[str]:
        """The column names of ``table`` (which exists), as the database reports them."""
        cursor = self._raw.execute(f"SELECT * FROM {table} WHERE 1 = 0")
        return {str(column[0]).lower() for column in cursor.description}

    def run_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            self._raw.cursor().executemany(self._sql(sql), [tuple(p) for p in params])

    def commit(self) -> None:
        self._raw.commit()

    def rollback(self) -> None:
        self._raw.rollback()

    def close(self) -> None:
        self._raw.close()

    def close_quietly(self) -> None:
        """Close a connection that may be broken already."""
        with contextlib.suppress(*DatabaseError):
            self._raw.close()


@dataclass(frozen=True, slots=True)
class TrafficDatabase:
    """An SQLite file (``path``) or a PostgreSQL database (``url``)."""

    path: Path | None = None
    url: str | None = None

    @property
    def where(self) -> str:
        """What the database is, for records that mention it (never a password)."""
        if self.path is not None:
            return str(self.path)
        return _without_password(self.url or "")

    def open(self) -> Connection:
        if self.url is not None:
            return Connection(psycopg.connect(self.url, connect_timeout=10), pyformat=True)
        assert self.path is not None
        raw = sqlite3.connect(self.path, timeout=10)
        # WAL: readers (API requests) never wait for the writer's batch, nor it for them.
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        return Connection(raw, pyformat=False)

    def unusable(self) -> str | None:
        """Why this database cannot be reached, found without writing to it (for
        ``check``); None when it can, or when it is an SQLite file not made yet."""
        try:
            if self.url is not None:
                with psycopg.connect(self.url, connect_timeout=_PROBE_TIMEOUT) as connection:
                    connection.execute("SELECT 1")
            elif self.path is not None and self.path.exists():
                raw = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=10)
                try:
                    raw.execute("SELECT count(*) FROM sqlite_master").fetchall()
                finally:
                    raw.close()
        except DatabaseError as exc:
            # libpq's second line is a hint ("Is the server running ...?").
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        connection = self.open()
        try:
            yield connection
        finally:
            connection.close()

    def create_schema(self, connection: Connection) -> None:
        if self.url is not None:
            connection.run("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK_KEY,))
            key = "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        else:
            key = "id INTEGER PRIMARY KEY AUTOINCREMENT"
        connection.run(f"CREATE TABLE IF NOT EXISTS traffic ({key}, {_COLUMN_DEFINITIONS})")
        # A database a build with fewer columns created: the new ones are added, and
        # its rows get their defaults (empty, NULL, 0).
        present = connection.columns("traffic")
        for name in COLUMNS:
            if name not in present:
                connection.run(f"ALTER TABLE traffic ADD COLUMN {name} {column_type(name)}")
        connection.run(
            "CREATE TABLE IF NOT EXISTS traffic_recipients "
            "(traffic_id BIGINT NOT NULL, domain TEXT NOT NULL)"
        )
        for statement in _INDEXES:
            connection.run(statement)
        connection.commit()

    def insert(self, connection: Connection, rows: Sequence[TrafficRow]) -> None:
        """Write ``rows`` in one transaction (all or none)."""
        names = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        statement = f"INSERT INTO traffic ({names}) VALUES ({marks}) RETURNING id"
        recipients: list[tuple[int, str]] = []
        try:
            for row in rows:
                (row_id,) = connection.rows(statement, row.values())[0]
                unique = dict.fromkeys(row.recipient_domains)
                recipients.extend((row_id, domain) for domain in unique)
            connection.run_many(
                "INSERT INTO traffic_recipients (traffic_id, domain) VALUES (?, ?)", recipients
            )
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    def prune(self, connection: Connection, before_ms: int) -> int:
        """Remove rows older than ``before_ms``; how many."""
        try:
            connection.run(
                "DELETE FROM traffic_recipients WHERE traffic_id IN "
                "(SELECT id FROM traffic WHERE time_ms < ?)",
                (before_ms,),
            )
            count = connection.run("DELETE FROM traffic WHERE time_ms < ?", (before_ms,))
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        return count


def _without_password(url: str) -> str:
    """``postgresql://user:secret@host/db?password=x`` as ``postgresql://user@host/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    location, mark, query = rest.partition("?")
    if "@" in location:
        credentials, _, host = location.rpartition("@")
        location = f"{credentials.partition(':')[0]}@{host}"
    kept = "&".join(p for p in query.split("&") if not p.startswith("password="))
    return f"{scheme}://{location}{mark if kept else ''}{kept}"
