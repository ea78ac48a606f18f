"""A traffic database made by a build before the hop details (``next_hop_address``,
``mx_preference``, ``next_hop_via``, ``tls_name``, ``relay_ms``, ``upstream_reused``)
is brought up to date when the store connects: SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpgate.traffic import queries
from smtpgate.traffic.database import TrafficDatabase
from smtpgate.traffic.queries import Period
from smtpgate.traffic.rows import COLUMNS, TrafficRow
from tests.peers.postgres import PostgresServer
from tests.traffic.traffic_testkit import T0, transaction

#: The columns of the table as the build of 2026-11-29 (b258705) created it.
OLD_COLUMNS = (
    "time_ms",
    "instance",
    "session",
    "client",
    "policy",
    "sender_domain",
    "recipient_domains",
    "rule",
    "client_tls",
    "client_cipher",
    "upstream",
    "upstream_tls",
    "upstream_cipher",
    "upstream_verify",
    "upstream_verified",
    "upstream_fallback",
    "outcome",
    "reply",
    "upstream_reply",
    "size",
    "message_id",
)


def old_schema(database: TrafficDatabase) -> list[str]:
    """That build's statements, as it ran them."""
    key = (
        "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        if database.url is not None
        else "id INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    columns = ", ".join(
        f"{name} {'BIGINT' if name in ('time_ms', 'reply', 'size') else 'TEXT'} NOT NULL"
        for name in OLD_COLUMNS
    )
    return [
        f"CREATE TABLE traffic ({key}, {columns})",
        "CREATE TABLE traffic_recipients (traffic_id BIGINT NOT NULL, domain TEXT NOT NULL)",
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TrafficDatabase]:
    if request.param == "sqlite":
        yield TrafficDatabase(path=tmp_path / "traffic.sqlite3")
        return
    with PostgresServer(tmp_path / "postgres") as server:
        yield TrafficDatabase(url=server.url)


def test_an_old_database_gets_the_hop_details_and_keeps_its_rows(
    database: TrafficDatabase,
) -> None:
    old_record: dict[str, Any] = transaction(time_ms=T0, recipient_domains=["old.example"])
    with database.connect() as connection:
        for statement in old_schema(database):
            connection.run(statement)
        marks = ", ".join("?" for _ in OLD_COLUMNS)
        row = TrafficRow.from_record({"event": "transaction", **old_record}, "mx1")
        values = dict(zip(COLUMNS, row.values(), strict=True))
        ((old_id,),) = connection.rows(
            f"INSERT INTO traffic ({', '.join(OLD_COLUMNS)}) VALUES ({marks}) RETURNING id",
            [values[name] for name in OLD_COLUMNS],
        )
        connection.run(
            "INSERT INTO traffic_recipients (traffic_id, domain) VALUES (?, ?)",
            (old_id, "old.example"),
        )
        connection.commit()

    new_record = transaction(time_ms=T0 + 1000, recipient_domains=["new.example"]) | {
        "upstream": "mx2.new.example:25",
        "next_hop_address": "192.0.2.2",
        "mx_preference": 20,
        "next_hop_via": "mx",
        "tls_name": "new.example",
        "relay_ms": 3.25,
        "upstream_reused": True,
    }
    with database.connect() as connection:
        database.create_schema(connection)
        database.create_schema(connection)  # once up to date, nothing more to do
        database.insert(
            connection, [TrafficRow.from_record({"event": "transaction", **new_record}, "mx1")]
        )
        shown = queries.records(connection, Period())["records"]

    new, old = shown
    hop = ("next_hop_address", "mx_preference", "next_hop_via", "tls_name")
    assert [new[k] for k in (*hop, "relay_ms", "upstream_reused")] == [
        "192.0.2.2",
        20,
        "mx",
        "new.example",
        3.25,
        True,
    ]
    assert old["recipient_domains"] == ["old.example"]
    assert old["upstream"] == old_record["upstream"]
    assert [old[k] for k in (*hop, "relay_ms", "upstream_reused")] == [
        "",
        None,
        "",
        "",
        None,
        False,
    ]
    with database.connect() as connection:
        by_domain = queries.records(connection, Period(), domain="old.example")["records"]
    assert [r["id"] for r in by_domain] == [old["id"]] == [old_id]
