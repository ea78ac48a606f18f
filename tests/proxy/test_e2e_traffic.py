"""The traffic store beside a running gateway: a database that does not keep up never
delays a reply, and loses records (counted, said once), never mail (docs/configuration.md)."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtpgate.traffic.database import TrafficDatabase
from smtpgate.traffic.store import TrafficStore
from tests.peers import wait_until
from tests.proxy.helpers import AiosmtpdUpstream, message
from tests.traffic.traffic_testkit import busy

CAPACITY = 5


def test_a_stuck_database_never_delays_a_reply_and_drops_records_not_mail(
    make_gate: Any,
    make_upstream: Callable[..., AiosmtpdUpstream],
    tmp_path: Path,
) -> None:
    upstream = make_upstream()
    gate = make_gate(upstream.port)
    database = TrafficDatabase(path=tmp_path / "traffic.sqlite3")
    with database.connect() as connection:
        database.create_schema(connection)
    traffic = TrafficStore(
        database, gate.log, instance="mx1", retention=86_400.0, capacity=CAPACITY
    )

    async def start() -> None:
        traffic.start()

    gate.loop.run(start())
    try:
        with busy(database.path or Path()):
            slowest = 0.0
            for i in range(CAPACITY + 3):
                started = time.monotonic()
                with smtplib.SMTP("127.0.0.1", gate.port, timeout=20) as client:
                    client.sendmail(f"a@s{i}.example", ["b@example.com"], message(f"m{i}"))
                slowest = max(slowest, time.monotonic() - started)
            # The writer waits for the lock (its busy timeout is 10 s) the whole time.
            assert traffic.written == 0
            assert slowest < 2.0, slowest
            gate.wait_record("transaction", count=CAPACITY + 3)
            assert len(gate.records("traffic_dropped")) == 1
            assert traffic.dropped_total == 3
        assert len(upstream.messages) == CAPACITY + 3
        resumed = gate.wait_record("traffic_resumed", timeout=15)
        assert resumed[0]["dropped"] == 3
        wait_until(lambda: traffic.written == CAPACITY, lambda: f"{traffic.written}", timeout=10)
        assert gate.records("traffic_write_failed") == []
    finally:
        gate.loop.run(traffic.stop())
