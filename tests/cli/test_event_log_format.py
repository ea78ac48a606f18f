"""A JSON record is exactly what ``json.dumps(record, separators=(",", ":"), default=str)``
writes: the encoder made once (logs._json_encoder) changes the cost, not the text."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from smtpgate.logs import EventLog
from smtpgate.tls.result import NOT_CHECKED, VerificationResult


def test_json_record_is_the_text_json_dumps_writes() -> None:
    stream = io.StringIO()
    log = EventLog(stream)
    fields: dict[str, Any] = {
        "session": "1f.7",
        "recipients": ["bob@rcpt.test", "ünïcode@例え.jp"],
        "size": 10240,
        "ratio": 0.25,
        "tiny": 1e-07,
        "huge": 10**30,
        "nothing": None,
        "flag": True,
        "quote": 'a "quoted" \\ back\u2028slash',
        "nested": {"nan": float("nan"), "list": [1, [2, {}]]},
        "path": Path("/var/lib/smtpgate"),  # not JSON: written as str() says
        "verify": NOT_CHECKED,
        "failed": VerificationResult("failed", "certificate has expired"),
    }
    log.write("transaction", fields)
    line = stream.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    # The record as the log built it (time and event first), rendered by json.dumps:
    built = {"time": record["time"], "event": "transaction", **fields}
    assert line[:-1] == json.dumps(built, separators=(",", ":"), default=str)
    assert record["path"] == "/var/lib/smtpgate"
    assert record["failed"] == "failed: certificate has expired"


def test_emit_and_write_give_the_same_record() -> None:
    by_emit, by_write = io.StringIO(), io.StringIO()
    EventLog(by_emit).emit("session_end", session="1.1", reason="client_quit")
    EventLog(by_write).write("session_end", {"session": "1.1", "reason": "client_quit"})
    emitted, written = json.loads(by_emit.getvalue()), json.loads(by_write.getvalue())
    assert emitted.pop("time")[:10] == written.pop("time")[:10]
    assert emitted == written == {"event": "session_end", "session": "1.1", "reason": "client_quit"}
