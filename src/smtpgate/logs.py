"""Event log of SPEC section 7: one record per event that matters, JSON lines or text.

Deliberately tiny: a record is a dict rendered once by ``json.dumps`` (C) and
written with one call; nothing is formatted for records nobody asked for.
Every event and its fields: docs/logs.md.
"""

from __future__ import annotations

import contextlib
import json
import json.encoder
import sys
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Literal, Protocol, TextIO

LogFormat = Literal["json", "text"]

#: Something fed every record as it is emitted (the traffic store, the metrics):
#: it gets the record dict itself (``time`` and ``event`` first) and must not block
#: or mutate it; an observer that raises stops nothing: its error is swallowed so
#: mail goes on.
RecordObserver = Callable[[dict[str, Any]], None]


def _json_encoder() -> Callable[[dict[str, Any]], str]:
    """``json.dumps(record, separators=(",", ":"), default=str)``, the same text,
    without what ``dumps`` builds per call (a ``JSONEncoder``, then its C encoder
    with a dict for the circular check): over half of its time for a record.
    The C encoder is made once here, without the check (a record holds no
    cycles); without the C accelerator, a ``JSONEncoder`` made once.
    """
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return json.JSONEncoder(separators=(",", ":"), default=str).encode
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys,
    # skipkeys, allow_nan), as JSONEncoder.iterencode passes them.
    encoder = make_encoder(
        None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )

    def encode(record: dict[str, Any]) -> str:
        return "".join(encoder(record, 0))

    return encode


#: Made once: it holds nothing that changes.
_encode_json = _json_encoder()


class Sink(Protocol):
    """Where rendered records go (:mod:`smtpgate.logtargets` has journald and syslog).
    ``write`` never raises and never blocks: a log must not take mail down."""

    #: What it writes to, as ``log_reopen_failed`` names it (a file, a socket).
    name: str

    def write(self, line: str, record: dict[str, Any]) -> None: ...

    def reopen(self) -> None:
        """SIGHUP/SIGUSR1: open the destination afresh; OSError when that fails
        (the old one stays)."""

    def close(self) -> None: ...


class StreamSink:
    """Standard error, or a stream a test or the demo hands in."""

    def __init__(self, stream: TextIO, name: str = "") -> None:
        self.stream = stream
        self.name = name

    def write(self, line: str, record: dict[str, Any]) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a full disk or closed log must not take mail down

    def write_lines(self, lines: list[str]) -> None:
        """Several rendered records in one write."""
        if lines:
            self.write("\n".join(lines), {})

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        if self.stream not in (sys.stderr, sys.stdout):
            self.stream.close()


class FileSink(StreamSink):
    """A file, appended to line by line; reopened by name once logrotate renamed it
    (no ``copytruncate`` needed)."""

    def __init__(self, path: str) -> None:
        super().__init__(_open(path), path)
        self.path = path

    def reopen(self) -> None:
        stream = _open(self.path)
        old, self.stream = self.stream, stream
        old.close()


class EventLog:
    """Where records go and how they look; SIGHUP reopens and reconfigures it in place,
    SIGUSR1 reopens it.

    ``addresses`` says whether records carry envelope addresses (the session
    asks it; ``[logging] addresses``).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        fmt: LogFormat = "json",
        addresses: bool = True,
        sink: Sink | None = None,
        destination: Hashable = None,
    ) -> None:
        self._sink: Sink = sink or StreamSink(stream if stream is not None else sys.stderr)
        #: What identifies the sink's destination: a reload that keeps it keeps the sink.
        self._destination = destination
        self._json = fmt == "json"
        self.addresses = addresses
        #: The timestamp up to the second, formatted once a second rather than per record.
        self._second = -1
        self._second_text = ""
        self._observers: list[RecordObserver] = []

    @property
    def path(self) -> str | None:
        """The file being written, if records go to a file."""
        return self._sink.path if isinstance(self._sink, FileSink) else None

    def emit(self, event: str, **fields: Any) -> None:
        self.write(event, fields)

    def write(self, event: str, fields: dict[str, Any]) -> None:
        """:meth:`emit` with the fields in a dict of the caller's, which is not kept (a
        proxy session's :class:`~smtpgate.proxy.commands.Log` carries one): not copied
        into keyword arguments and out again."""
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
        line = _encode_json(record) if self._json else render_text(record)
        self._sink.write(line, record)

    def forward(self, lines: list[str]) -> None:
        """Records another process emitted, as JSON lines (a worker's batch, which
        :mod:`smtpgate.proxy.supervisor` reads): observed and written as if they were
        emitted here. Parsed only when something needs the objects (observers, the
        text format, a syslog or journal target); a file or standard error gets the
        lines as they are, in one write."""
        sink = self._sink
        if self._json and isinstance(sink, StreamSink):
            if self._observers:
                self._observe(json.loads(line) for line in lines)
            sink.write_lines(lines)
            return
        records = [json.loads(line) for line in lines]
        self._observe(records)
        for line, record in zip(lines, records, strict=True):
            sink.write(line if self._json else render_text(record), record)

    def _observe(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            for observer in self._observers:
                with contextlib.suppress(Exception):
                    observer(record)

    def observe(self, observer: RecordObserver) -> None:
        """Feed ``observer`` every record from now on (the same records the log gets,
        so what the traffic store and the metrics count is what the log says)."""
        self._observers.append(observer)

    def unobserve(self, observer: RecordObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def reopen(self) -> None:
        """Open the destination afresh: logrotate renamed the file (SIGUSR1 or SIGHUP),
        or the syslog or journal daemon restarted.

        If it cannot be opened, records keep going where they went, and one says why.
        """
        try:
            self._sink.reopen()
        except OSError as exc:
            why = exc.strerror or describe_error(exc)
            self.emit("log_reopen_failed", file=self._sink.name, reason=f"cannot open: {why}")

    def configure(
        self,
        destination: Hashable,
        open_sink: Callable[[], Sink],
        fmt: LogFormat,
        addresses: bool,
    ) -> None:
        """Apply ``[logging]`` from a reloaded configuration: a new ``destination`` gets
        the sink ``open_sink`` makes; raises OSError (nothing changed) when it cannot."""
        if destination != self._destination:
            sink = open_sink()
            old, self._sink, self._destination = self._sink, sink, destination
            old.close()
        self._json = fmt == "json"
        self.addresses = addresses

    def close(self) -> None:
        self._sink.close()


def _open(path: str) -> TextIO:
    return open(path, "a", encoding="utf-8", buffering=1)


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
