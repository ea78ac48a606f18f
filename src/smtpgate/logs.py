"""Event log of SPEC section 7: one record per event that matters, JSON lines or text.

Deliberately tiny: a record is a dict rendered once by ``json.dumps`` (C) and
written with one call; nothing is formatted for records nobody asked for.
Every event and its fields: docs/logs.md.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

LogFormat = Literal["json", "text"]

#: Something fed every record as it is emitted (the traffic store, the metrics):
#: it gets the record dict itself (``time`` and ``event`` first) and must not block
#: or mutate it; an observer that raises stops nothing: its error is swallowed so
#: mail goes on.
RecordObserver = Callable[[dict[str, Any]], None]


class EventLog:
    """Where records go and how they look; SIGHUP reopens and reconfigures it in place.

    ``path`` is the file being written (None: the stream given, or standard
    error). ``addresses`` says whether records carry envelope addresses (the
    session asks it; ``[logging] addresses``).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        fmt: LogFormat = "json",
        addresses: bool = True,
        path: str | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._json = fmt == "json"
        self.path = path
        self.addresses = addresses
        #: The timestamp up to the second, formatted once a second rather than per record.
        self._second = -1
        self._second_text = ""
        self._observers: list[RecordObserver] = []

    @classmethod
    def open(cls, path: str | None, fmt: LogFormat, *, addresses: bool = True) -> EventLog:
        return cls(_open(path) if path else None, fmt=fmt, addresses=addresses, path=path)

    def emit(self, event: str, **fields: Any) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        record = {"time": f"{self._second_text}.{int(now % 1 * 1000):03d}Z", "event": event}
        record.update(fields)
        for observer in self._observers:
            # An observer's bug must not take mail down.
            with contextlib.suppress(Exception):
                observer(record)
        if self._json:
            line = json.dumps(record, separators=(",", ":"), default=str)
        else:
            line = render_text(record)
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a full disk or closed log must not take mail down

    def observe(self, observer: RecordObserver) -> None:
        """Feed ``observer`` every record from now on (the same records the log gets,
        so what the traffic store and the metrics count is what the log says)."""
        self._observers.append(observer)

    def unobserve(self, observer: RecordObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def reopen(self) -> None:
        """Open ``path`` afresh (logrotate renamed the old file): no ``copytruncate`` needed.

        If it cannot be opened, records keep going where they went, and one says why.
        """
        if self.path is None:
            return
        try:
            stream = _open(self.path)
        except OSError as exc:
            why = exc.strerror or describe_error(exc)
            self.emit("log_reopen_failed", file=self.path, reason=f"cannot open: {why}")
            return
        old, self._stream = self._stream, stream
        _close(old)

    def configure(self, path: str | None, fmt: LogFormat, addresses: bool) -> None:
        """Apply ``[logging]`` from a reloaded configuration; raises OSError (nothing
        changed) when a new file cannot be opened."""
        if path != self.path:
            stream = _open(path) if path else sys.stderr
            old, self._stream, self.path = self._stream, stream, path
            _close(old)
        self._json = fmt == "json"
        self.addresses = addresses

    def close(self) -> None:
        _close(self._stream)


def _open(path: str) -> TextIO:
    return open(path, "a", encoding="utf-8", buffering=1)


def _close(stream: TextIO) -> None:
    if stream not in (sys.stderr, sys.stdout):
        stream.close()


#: What exceptions that come without a text (asyncio raises them so) mean.
_WORDLESS_ERRORS: dict[type[BaseException], str] = {
    TimeoutError: "timed out",
    ConnectionResetError: "connection closed by the peer",
    BrokenPipeError: "connection closed by the peer",
    ConnectionAbortedError: "connection aborted",
}


def describe_error(exc: BaseException) -> str:
    """An exception as a log reason that is never empty (``TimeoutError()`` has no text)."""
    text = str(exc)
    if text:
        return text
    return _WORDLESS_ERRORS.get(type(exc)) or type(exc).__name__


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
