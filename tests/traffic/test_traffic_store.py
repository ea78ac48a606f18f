"""The traffic store on SQLite: rows from the event log, the queries of the pages,
retention, and a database that does not keep up (docs/api.md, docs/configuration.md)."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtpgate.logs import EventLog
from smtpgate.traffic import queries, store
from smtpgate.traffic.database import TrafficDatabase
from smtpgate.traffic.queries import Cursor, Period
from smtpgate.traffic.store import TrafficStore
from tests.traffic.traffic_testkit import T0, busy, insert, transaction

DAY = 86_400


def records_of(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [r for r in lines if r["event"] == event]


async def until(probe: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return found


@pytest.fixture
def database(tmp_path: Path) -> TrafficDatabase:
    return TrafficDatabase(path=tmp_path / "traffic.sqlite3")


def listing(
    database: TrafficDatabase, period: Period | None = None, **kwargs: Any
) -> dict[str, Any]:
    with database.connect() as connection:
        return queries.records(connection, period or Period(), **kwargs)


async def test_transaction_records_become_rows_newest_first_without_addresses(
    database: TrafficDatabase,
) -> None:
    stream = io.StringIO()
    log = EventLog(stream)
    traffic = TrafficStore(database, log, instance="mx1.test", retention=30 * DAY)
    traffic.start()
    try:
        log.emit("session_start", session="1a.1")  # not a transaction: no row
        for domain in ("one.example", "two.example", "three.example"):
            fields = transaction(recipient_domains=[domain, "example.com"])
            log.emit("transaction", **fields)
        await until(lambda: traffic.written == 3, "3 rows written")
    finally:
        await traffic.stop()
    logged = records_of(stream, "transaction")
    shown = listing(database)
    assert shown["next_before"] is None
    assert [r["recipient_domains"][0] for r in shown["records"]] == [
        "three.example",
        "two.example",
        "one.example",
    ]
    newest, record = shown["records"][0], logged[-1]
    assert newest["instance"] == "mx1.test"
    # The row is the record, less its event name and the addresses.
    assert newest == {"id": newest["id"], "instance": "mx1.test"} | {
        key: value for key, value in record.items() if key not in ("event", "sender", "recipients")
    }
    assert "sender" not in newest and "recipients" not in newest
    assert b"alice@" not in Path(str(database.path)).read_bytes()


def test_filters_by_domain_outcome_and_time_and_pages_through_equal_times(
    database: TrafficDatabase,
) -> None:
    insert(
        database,
        transaction(time_ms=T0, sender_domain="a.example", recipient_domains=["x.example"]),
        transaction(time_ms=T0 + 1000, sender_domain="b.example", recipient_domains=["a.example"]),
        transaction(
            time_ms=T0 + 2000,
            sender_domain="c.example",
            recipient_domains=["x.example"],
            outcome="tempfail",
        ),
        *[transaction(time_ms=T0 + 3000, sender_domain=f"s{i}.example") for i in range(5)],
    )
    by_domain = listing(database, domain="a.example")["records"]
    assert [r["sender_domain"] for r in by_domain] == ["b.example", "a.example"]
    assert [r["sender_domain"] for r in listing(database, outcome="tempfail")["records"]] == [
        "c.example"
    ]
    window = listing(database, Period(T0 + 1000, T0 + 3000))["records"]
    assert [r["sender_domain"] for r in window] == ["c.example", "b.example"]

    # Five rows share one millisecond: pages of two lose none and repeat none.
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        page = listing(database, limit=2, before=cursor)
        seen += [r["sender_domain"] for r in page["records"]]
        if page["next_before"] is None:
            break
        cursor = Cursor.parse(page["next_before"])
    assert len(seen) == 8 and len(set(seen)) == 8
    assert seen[-3:] == ["c.example", "b.example", "a.example"]


def test_tls_versions_per_leg_per_bucket_empty_buckets_listed(database: TrafficDatabase) -> None:
    hour = 3_600_000
    start = T0 - T0 % hour
    insert(
        database,
        transaction(time_ms=start + 10, client_tls="TLSv1.3", upstream_tls="TLSv1.2"),
        transaction(time_ms=start + 20, client_tls="none", upstream_tls="TLSv1.2"),
        transaction(time_ms=start + 2 * hour, client_tls="TLSv1.2", upstream_tls="none"),
        transaction(time_ms=start + 3 * hour, client_tls="TLSv1.2"),  # outside
    )
    with database.connect() as connection:
        chart = queries.tls_versions(connection, start, start + 3 * hour, hour)
    assert chart["bucket"] == 3600
    assert chart["versions"] == ["TLSv1.2", "TLSv1.3", "none"]
    assert [b["start"] for b in chart["buckets"]] == [
        queries._whole(start + i * hour) for i in range(3)
    ]
    assert chart["buckets"][0] == {
        "start": chart["buckets"][0]["start"],
        "client": {"TLSv1.3": 1, "none": 1},
        "upstream": {"TLSv1.2": 2},
    }
    assert chart["buckets"][1]["client"] == {} and chart["buckets"][1]["upstream"] == {}
    assert chart["buckets"][2]["client"] == {"TLSv1.2": 1}
    assert chart["buckets"][2]["upstream"] == {"none": 1}
    with database.connect() as connection, pytest.raises(ValueError, match="at most 1000"):
        queries.tls_versions(connection, start, start + 1001 * 1000, 1000)


async def test_rows_older_than_the_retention_are_pruned_at_start_and_periodically(
    database: TrafficDatabase,
) -> None:
    now = time.time()
    clock = [now]
    insert(
        database,
        transaction(time_ms=int((now - 31 * DAY) * 1000), sender_domain="old.example"),
        # 100 s before it expires.
        transaction(time_ms=int((now - 30 * DAY + 100) * 1000), sender_domain="kept.example"),
    )
    traffic = TrafficStore(
        database,
        EventLog(io.StringIO()),
        instance="mx1",
        retention=30 * DAY,
        clock=lambda: clock[0],
    )
    traffic.start()
    try:

        def senders() -> list[str]:
            return [r["sender_domain"] for r in listing(database)["records"]]

        await until(lambda: senders() == ["kept.example"], "the 31-day-old row pruned")
        clock[0] = now + 200  # kept.example has expired, but the next prune is not due
        await asyncio.sleep(3 * store.FLUSH_INTERVAL)
        assert senders() == ["kept.example"]
        clock[0] = now + store.PRUNE_INTERVAL
        await until(lambda: senders() == [], "the next prune after PRUNE_INTERVAL")
    finally:
        await traffic.stop()


async def test_a_database_that_does_not_keep_up_drops_records_counts_them_and_never_blocks(
    database: TrafficDatabase,
) -> None:
    stream = io.StringIO()
    log = EventLog(stream)
    with database.connect() as connection:
        database.create_schema(connection)
    traffic = TrafficStore(database, log, instance="mx1", retention=30 * DAY, capacity=5)
    traffic.start()
    try:
        assert database.path is not None
        with busy(database.path):
            slowest = 0.0
            for i in range(8):
                started = time.monotonic()
                log.emit("transaction", **transaction(sender_domain=f"s{i}.example"))
                slowest = max(slowest, time.monotonic() - started)
                await asyncio.sleep(0.05)
            # The writer is stuck in its batch for the busy timeout (10 s); emit is not.
            # (Bounded well below that, not at a few milliseconds: a garbage collection
            # or a busy machine may hold any Python call up for tens of them.)
            assert slowest < 1.0, slowest
            assert traffic.written == 0
            assert traffic.dropped_total == 3
            dropped = records_of(stream, "traffic_dropped")
            assert len(dropped) == 1
            assert dropped[0]["reason"] == (
                f"5 records wait for {database.path}; transaction records are not stored "
                "until it catches up"
            )
        await until(lambda: traffic.written == 5, "the 5 queued rows written after the lock")
        resumed = await until(lambda: records_of(stream, "traffic_resumed"), "traffic_resumed")
        assert [r["dropped"] for r in resumed] == [3]
        # A second episode is reported again.
        with busy(database.path):
            for i in range(7):
                log.emit("transaction", **transaction(sender_domain=f"t{i}.example"))
                await asyncio.sleep(0.05)
            assert len(records_of(stream, "traffic_dropped")) == 2
    finally:
        await traffic.stop()
    kept = [r["sender_domain"] for r in listing(database, limit=1000)["records"]]
    assert sorted(kept[-5:]) == [f"s{i}.example" for i in range(5)]


async def test_an_unreachable_database_is_reported_once_and_retried(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = EventLog(stream)
    missing = tmp_path / "no-such-dir"
    database = TrafficDatabase(url=f"postgresql:///smtpgate?host={missing}&user=postgres")
    traffic = TrafficStore(database, log, instance="mx1", retention=DAY)
    traffic.start()  # does not wait for the database: mail first
    try:
        log.emit("transaction", **transaction())
        failed = await until(
            lambda: records_of(stream, "traffic_write_failed"), "traffic_write_failed"
        )
        await asyncio.sleep(2.5)  # retried after 1 s and 2 s: not reported again
        assert len(records_of(stream, "traffic_write_failed")) == 1
        assert failed[0]["database"] == f"postgresql:///smtpgate?host={missing}&user=postgres"
        assert str(missing) in failed[0]["reason"]
    finally:
        await traffic.stop()


def test_sqlite_file_is_in_wal_mode(database: TrafficDatabase) -> None:
    insert(database, transaction(time_ms=T0))
    assert database.path is not None
    with sqlite3.connect(database.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
