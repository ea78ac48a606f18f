"""Shared by the traffic tests: transaction records as the session writes them,
rows at chosen times, and an SQLite database held busy by another connection."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from smtpgate.traffic.database import TrafficDatabase
from smtpgate.traffic.rows import TrafficRow, format_time

T0 = 1_795_000_000_000  # 2026-11-17T...Z, a whole second


def transaction(
    *,
    time_ms: int | None = None,
    policy: str = "p",
    sender_domain: str = "partner.example",
    recipient_domains: Sequence[str] = ("example.com",),
    client_tls: str = "TLSv1.3",
    upstream_tls: str = "TLSv1.3",
    upstream_verify: str = "ok",
    outcome: str = "delivered",
    rule: str = "default",
) -> dict[str, Any]:
    """The fields of a ``transaction`` record (docs/logs.md), addresses included."""
    record: dict[str, Any] = {}
    if time_ms is not None:
        record["time"] = format_time(time_ms)
    record |= {
        "session": "1a.1",
        "client": "127.0.0.1:40000",
        "policy": policy,
        "client_tls": client_tls,
        "client_cipher": "TLS_AES_256_GCM_SHA384" if client_tls != "none" else "none",
        "upstream": "127.0.0.1:2525",
        "upstream_tls": upstream_tls,
        "upstream_cipher": "TLS_AES_128_GCM_SHA256" if upstream_tls != "none" else "none",
        "upstream_verify": upstream_verify if upstream_tls != "none" else "not-checked",
        "upstream_fallback": "",
        "next_hop_address": "127.0.0.1",
        "mx_preference": None,
        "next_hop_via": "configured",
        "tls_name": "127.0.0.1" if upstream_tls != "none" else "",
        "rule": rule,
        "sender_domain": sender_domain,
        "recipient_domains": list(recipient_domains),
        "sender": f"alice@{sender_domain}" if sender_domain else "<>",
        "recipients": [f"bob@{d}" for d in recipient_domains],
        "size": 120,
        "body_transfer": "data",
        "message_id": "<m1@partner.example>",
        "outcome": outcome,
        "reply": {"delivered": 250, "tempfail": 451, "rejected": 550}.get(outcome, 0),
        "upstream_reply": "250 2.0.0 Ok: queued as ABC" if outcome == "delivered" else "",
        "upstream_reused": False,
        "relay_ms": 12.5 if outcome in ("delivered", "tempfail", "rejected") else None,
    }
    return record


def insert(database: TrafficDatabase, *records: dict[str, Any], instance: str = "mx1") -> None:
    """Rows written directly (times as given), in one transaction."""
    with database.connect() as connection:
        database.create_schema(connection)
        database.insert(
            connection,
            [TrafficRow.from_record({"event": "transaction", **r}, instance) for r in records],
        )


@contextlib.contextmanager
def busy(path: Path) -> Iterator[None]:
    """Another connection holds the write lock of the SQLite file: every writer waits
    (its busy timeout) until this ends, as on a disk that does not keep up."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()
