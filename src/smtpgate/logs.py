"""Event log of SPEC section 7: one record per event that matters, JSON lines or text.

Deliberately tiny: a record is a dict rendered once by ``json.dumps`` (C) and
written with one call; nothing is formatted for records nobody asked for.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Literal, TextIO

LogFormat = Literal["json", "text"]


class EventLog:
    def __init__(self, stream: TextIO | None = None, *, fmt: LogFormat = "json") -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._json = fmt == "json"

    @classmethod
    def open(cls, path: str | None, fmt: LogFormat) -> EventLog:
        stream = open(path, "a", encoding="utf-8", buffering=1) if path else None  # noqa: SIM115
        return cls(stream, fmt=fmt)

    def emit(self, event: str, **fields: Any) -> None:
        record = {"time": _timestamp(), "event": event, **fields}
        if self._json:
            line = json.dumps(record, separators=(",", ":"), default=str)
        else:
            line = render_text(record)
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a full disk or closed log must not take mail down

    def close(self) -> None:
        if self._stream not in (sys.stderr, sys.stdout):
            self._stream.close()


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def render_text(record: dict[str, Any]) -> str:
    """``time event key=value ...``, the form people read."""
    head = f"{record.get('time', '')} {record.get('event', '')}"
    rest = " ".join(
        f"{key}={_text_value(value)}"
        for key, value in record.items()
        if key not in ("time", "event") and value not in (None, "", [])
    )
    return f"{head} {rest}" if rest else head


def _text_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    text = str(value)
    return f'"{text}"' if " " in text else text
