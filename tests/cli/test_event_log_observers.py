"""EventLog observers: what the traffic store and metrics read is exactly what the log writes."""

from __future__ import annotations

import io
import json
from typing import Any

from smtpgate.logs import EventLog


def test_observer_gets_each_record_as_the_log_writes_it() -> None:
    stream = io.StringIO()
    log = EventLog(stream)
    seen: list[dict[str, Any]] = []
    log.observe(seen.append)
    log.emit("transaction", session="1.1", reply=250)
    written = json.loads(stream.getvalue())
    assert seen == [written]
    assert list(seen[0])[:2] == ["time", "event"]


def test_a_failing_observer_stops_neither_the_log_nor_other_observers() -> None:
    stream = io.StringIO()
    log = EventLog(stream)
    seen: list[dict[str, Any]] = []

    def broken(record: dict[str, Any]) -> None:
        raise RuntimeError("bug in an observer")

    log.observe(broken)
    log.observe(seen.append)
    log.emit("session_end", session="1.1", reason="quit")
    assert json.loads(stream.getvalue())["event"] == "session_end"
    assert [r["event"] for r in seen] == ["session_end"]


def test_unobserve_stops_the_feed() -> None:
    log = EventLog(io.StringIO())
    seen: list[dict[str, Any]] = []
    log.observe(seen.append)
    log.unobserve(seen.append)
    log.emit("stopped")
    assert seen == []
