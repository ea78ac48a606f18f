"""The three questions the pages ask of the traffic store (docs/api.md), as SQL.

Each answer is computed in the database (filters, counts grouped by what
the page shows) and shaped here; nothing reads every row into Python.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from smtpgate.traffic.database import Connection
from smtpgate.traffic.rows import CLEAR, COLUMNS, format_time, parse_log_time, row_json

OUTCOMES = ("delivered", "tempfail", "rejected", "aborted")
MAX_LIMIT = 1000
MAX_BUCKETS = 1000


@dataclass(frozen=True, slots=True)
class Period:
    """``since <= time < until``, epoch milliseconds; None: open on that side."""

    since: int | None = None
    until: int | None = None

    def where(self, column: str = "time_ms") -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            clauses.append(f"{column} >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{column} < ?")
            params.append(self.until)
        return clauses, params


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page of records ended: the last row's time and id (rows are ordered by both)."""

    time_ms: int
    row_id: int

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """``2026-11-29T15:33:14.686Z/1843``, the ``next_before`` of a page."""
        shown, sep, number = text.rpartition("/")
        if not sep or not number.isdigit() or len(shown) != 24:
            raise ValueError(f"{text!r} is not a next_before value of an earlier page")
        return cls(parse_log_time(shown), int(number))

    def __str__(self) -> str:
        return f"{format_time(self.time_ms)}/{self.row_id}"


def records(
    connection: Connection,
    period: Period,
    *,
    domain: str | None = None,
    outcome: str | None = None,
    limit: int = 100,
    before: Cursor | None = None,
) -> dict[str, Any]:
    clauses, params = period.where()
    if domain:
        clauses.append(
            "(sender_domain = ? OR id IN "
            "(SELECT traffic_id FROM traffic_recipients WHERE domain = ?))"
        )
        params += [domain, domain]
    if outcome:
        clauses.append("outcome = ?")
        params.append(outcome)
    if before is not None:
        clauses.append("(time_ms < ? OR (time_ms = ? AND id < ?))")
        params += [before.time_ms, before.time_ms, before.row_id]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    found = connection.rows(
        f"SELECT id, {', '.join(COLUMNS)} FROM traffic {where} "
        "ORDER BY time_ms DESC, id DESC LIMIT ?",
        [*params, limit + 1],
    )
    shown = found[:limit]
    more = len(found) > limit
    last = shown[-1] if shown else None
    return {
        "records": [row_json(int(row[0]), row[1:]) for row in shown],
        "next_before": str(Cursor(int(last[1]), int(last[0]))) if more and last else None,
    }


def tls_versions(connection: Connection, since: int, until: int, bucket_ms: int) -> dict[str, Any]:
    """Counts per bucket of TLS versions per leg; every bucket listed, empty ones too."""
    first, last = since // bucket_ms, (until - 1) // bucket_ms
    if last - first + 1 > MAX_BUCKETS:
        raise ValueError(
            f"{last - first + 1} buckets; at most {MAX_BUCKETS}: choose a larger bucket "
            "or a shorter period"
        )
    found = connection.rows(
        "SELECT time_ms / ?, client_tls, upstream_tls, COUNT(*) FROM traffic "
        "WHERE time_ms >= ? AND time_ms < ? GROUP BY 1, 2, 3",
        (bucket_ms, since, until),
    )
    client: dict[int, Counter[str]] = {}
    upstream: dict[int, Counter[str]] = {}
    versions: set[str] = set()
    for slot, client_tls, upstream_tls, count in found:
        client.setdefault(int(slot), Counter())[client_tls] += int(count)
        upstream.setdefault(int(slot), Counter())[upstream_tls] += int(count)
        versions.update((client_tls, upstream_tls))
    return {
        "since": _whole(since),
        "until": _whole(until),
        "bucket": bucket_ms // 1000,
        "versions": sort_versions(versions),
        "buckets": [
            {
                "start": _whole(slot * bucket_ms),
                "client": dict(sorted(client.get(slot, Counter()).items())),
                "upstream": dict(sorted(upstream.get(slot, Counter()).items())),
            }
            for slot in range(first, last + 1)
        ],
    }


def sort_versions(versions: set[str]) -> list[str]:
    """Sorted, ``none`` (in clear) last."""
    return sorted(versions, key=lambda v: (v == CLEAR, v))


def _whole(time_ms: int) -> str:
    """A bucket boundary: whole seconds, ``2026-11-29T00:00:00Z``."""
    return format_time(time_ms).replace(".000Z", "Z")


#: One coverage group: the transactions (or, per recipient domain, the
#: transaction-recipient pairs) with these values, and how many.
GROUP_COLUMNS = (
    "policy",
    "sender_domain",
    "client_tls",
    "upstream_tls",
    "upstream_verified",
    "outcome",
)


def sender_groups(connection: Connection, period: Period) -> list[tuple[Any, ...]]:
    """``GROUP_COLUMNS`` and a count, one transaction counted once."""
    clauses, params = period.where()
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    names = ", ".join(GROUP_COLUMNS)
    return connection.rows(
        f"SELECT {names}, COUNT(*) FROM traffic {where} GROUP BY {names}", params
    )


def recipient_groups(connection: Connection, period: Period) -> list[tuple[Any, ...]]:
    """``GROUP_COLUMNS``, the recipient domain and a count: a transaction counts once per
    recipient domain."""
    clauses, params = period.where("t.time_ms")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    names = ", ".join(f"t.{name}" for name in GROUP_COLUMNS)
    return connection.rows(
        f"SELECT {names}, r.domain, COUNT(*) FROM traffic t "
        f"JOIN traffic_recipients r ON r.traffic_id = t.id {where} "
        f"GROUP BY {names}, r.domain",
        params,
    )
