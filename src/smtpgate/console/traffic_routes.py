"""The read routes of the Traffic and Coverage pages (docs/api.md, "Traffic and coverage").

Each request opens its own connection to the traffic store's database (it
runs in a worker thread) and asks :mod:`smtpgate.traffic.queries`; the
suggestions come from :mod:`smtpgate.traffic.coverage` against the
configuration file the answer's ``etag`` names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request

from smtpgate.config.editing import EditError, Invalid, NotFound
from smtpgate.config.units import parse_duration
from smtpgate.console.auth import Reader
from smtpgate.console.backend import Backend
from smtpgate.logs import describe_error
from smtpgate.policy.patterns import normalize_domain
from smtpgate.traffic.coverage import coverage as compute_coverage
from smtpgate.traffic.database import Connection, DatabaseError, TrafficDatabase
from smtpgate.traffic.queries import (
    MAX_LIMIT,
    OUTCOMES,
    Cursor,
    Period,
    recipient_groups,
    records,
    sender_groups,
    tls_versions,
)
from smtpgate.traffic.rows import format_time, parse_time_parameter

DAY_MS = 86_400_000


T = TypeVar("T")


class Unavailable(EditError):
    """The traffic database cannot be read now (HTTP 503)."""

    status = 503


#: Included under the API's prefix by :func:`smtpgate.console.api.create_app`.
router = APIRouter()

TimeParameter = Annotated[
    str | None,
    Query(description="RFC 3339 time with offset (2026-11-29T15:00:00Z), or a duration ago (24h)"),
]


def _database(request: Request) -> TrafficDatabase:
    database: TrafficDatabase | None = getattr(request.app.state, "traffic", None)
    if database is None:
        raise NotFound([("console", "this serve keeps no traffic store")])
    return database


def _time(name: str, text: str | None, now_ms: int) -> int | None:
    if text is None or text == "":
        return None
    try:
        return parse_time_parameter(text, now_ms)
    except ValueError as exc:
        raise Invalid([(f"query.{name}", str(exc))]) from None


def _period(since: str | None, until: str | None, now_ms: int, default_since: int | None) -> Period:
    start = _time("since", since, now_ms)
    end = _time("until", until, now_ms)
    period = Period(default_since if start is None else start, end)
    if period.since is not None and period.until is not None and period.since >= period.until:
        raise Invalid([("query.since", "since must be before until")])
    return period


def _ask(database: TrafficDatabase, question: Callable[[Connection], T]) -> T:
    try:
        with database.connect() as connection:
            return question(connection)
    except DatabaseError as exc:
        raise Unavailable([("console.database", describe_error(exc))]) from exc


def _now_ms() -> int:
    return int(time.time() * 1000)


@router.get("/traffic", summary="Transaction records, newest first")
def list_traffic(
    request: Request,
    _: Reader,
    domain: Annotated[str | None, Query(description="Sender or recipient domain")] = None,
    outcome: Annotated[str | None, Query(description=", ".join(OUTCOMES))] = None,
    since: TimeParameter = None,
    until: TimeParameter = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    before: Annotated[str | None, Query(description="next_before of the previous page")] = None,
) -> dict[str, Any]:
    database = _database(request)
    period = _period(since, until, _now_ms(), None)
    if outcome and outcome not in OUTCOMES:
        raise Invalid([("query.outcome", f"{outcome!r} is not one of {', '.join(OUTCOMES)}")])
    cursor = None
    if before:
        try:
            cursor = Cursor.parse(before)
        except ValueError as exc:
            raise Invalid([("query.before", str(exc))]) from None
    wanted = normalize_domain(domain.strip()) if domain else None
    return _ask(
        database,
        lambda c: records(
            c, period, domain=wanted, outcome=outcome or None, limit=limit, before=cursor
        ),
    )


@router.get("/traffic/tls-versions", summary="TLS versions per leg, per time bucket")
def traffic_tls_versions(
    request: Request,
    _: Reader,
    since: TimeParameter = None,
    until: TimeParameter = None,
    bucket: Annotated[str, Query(description="A duration, 1h by default")] = "1h",
) -> dict[str, Any]:
    database = _database(request)
    now = _now_ms()
    period = _period(since, until, now, now - DAY_MS)
    try:
        bucket_ms = int(parse_duration(bucket) * 1000)
    except ValueError as exc:
        raise Invalid([("query.bucket", str(exc))]) from None
    if bucket_ms < 1000 or bucket_ms % 1000:
        raise Invalid([("query.bucket", "a whole number of seconds, at least 1s")])
    since_ms = now - DAY_MS if period.since is None else period.since
    until_ms = now if period.until is None else period.until
    try:
        return _ask(database, lambda c: tls_versions(c, since_ms, until_ms, bucket_ms))
    except ValueError as exc:
        raise Invalid([("query.bucket", str(exc))]) from None


@router.get("/coverage", summary="Encryption per domain and rules that would tighten a leg")
def get_coverage(
    request: Request,
    _: Reader,
    since: TimeParameter = None,
    until: TimeParameter = None,
) -> dict[str, Any]:
    database = _database(request)
    period = _period(since, until, _now_ms(), None)
    backend: Backend = request.app.state.backend
    try:
        document = backend.document()
        config, etag = document.config, document.etag
    except NotFound:
        # The embedded default: no file to add a rule to, the running rules all the same.
        config, etag = backend.proxy.config, None
    senders, recipients = _ask(
        database, lambda c: (sender_groups(c, period), recipient_groups(c, period))
    )
    return {
        "since": None if period.since is None else format_time(period.since),
        "until": None if period.until is None else format_time(period.until),
        "etag": etag,
        **compute_coverage(senders, recipients, config),
    }
