"""Where log records go (``[logging] target``): a file, standard error, journald, syslog.

A *sink* takes each record already rendered (one line, JSON or text) together
with the record itself, for the fields a target adds (syslog's MSGID and
severity, the journal's ``PRIORITY`` and ``SMTPGATE_EVENT``). Every sink is
written from the event loop and never waits: a socket that cannot take a
record at once (the daemon is gone, its queue is full) hands that record to
standard error, which a service manager collects anyway, so no record is lost
without a trace and no mail waits for a log daemon.

- journald: its native protocol, one datagram per record on
  ``/run/systemd/journal/socket`` (a record too large for a datagram goes as
  a sealed memfd, as sd_journal_send does).
- syslog: RFC 5424 messages, to a Unix datagram socket (``/dev/log``), over
  UDP (RFC 5426, one message per datagram) or TCP (RFC 6587 octet counting).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import struct
import sys
import time
from collections import deque
from typing import Any

from smtpgate.config.netaddr import SyslogAddress, parse_syslog_address
from smtpgate.config.schema import LoggingSettings
from smtpgate.logs import FileSink, Sink, StreamSink

#: RFC 5424 APP-NAME and the journal's SYSLOG_IDENTIFIER.
APP_NAME = "smtpgate"

#: Records that say something went wrong, by syslog severity (RFC 5424 6.2.1);
#: every other record is informational (6).
SEVERITY: dict[str, int] = {
    "session_error": 3,
    "reload_failed": 3,
    "accept_failed": 3,
    "out_of_memory": 3,
    "log_reopen_failed": 3,
    "pid_file_failed": 3,
    "console_tls_failed": 3,
    "worker_exited": 3,
    "config_warning": 4,
    "login_failed": 4,
    "login_blocked": 4,
    "proxy_header_error": 4,
    "tls_handshake_failed": 4,
    "starttls_failed": 4,
    "starttls_injection": 4,
}
INFO = 6
#: Records whose severity depends on their ``outcome``, by (event, outcome): a
#: failed AUTH (wrong credentials) is what fail2ban-style watchers look for; the
#: other outcomes of ``auth`` are informational.
OUTCOME_SEVERITY: dict[tuple[str, str], int] = {
    ("auth", "failed"): 4,
}


def severity(record: dict[str, Any]) -> int:
    """The syslog severity of ``record`` (RFC 5424 6.2.1), also the journal's PRIORITY."""
    event = str(record.get("event", ""))
    by_outcome = OUTCOME_SEVERITY.get((event, str(record.get("outcome", ""))))
    return by_outcome if by_outcome is not None else SEVERITY.get(event, INFO)


#: RFC 5424 facility codes by the name ``[logging] syslog_facility`` takes.
FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "local0": 16,
    "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22,
    "local7": 23,
}  # fmt: skip

#: What a TCP syslog connection may hold unsent before records go to standard error.
MAX_TCP_BACKLOG = 1 << 20
#: A syslog or journal socket that failed is tried again after this many seconds.
RETRY_SECONDS = 1.0


def _fallback(line: str) -> None:
    """A record a socket target could not take: standard error instead."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _datagram_socket(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


class JournaldSink:
    """The journal's native protocol: ``MESSAGE`` is the rendered record, with
    ``PRIORITY``, ``SYSLOG_IDENTIFIER``, ``SYSLOG_FACILITY``, ``SMTPGATE_EVENT`` and,
    for session records, ``SMTPGATE_SESSION`` (``journalctl SMTPGATE_SESSION=4a80.17``)."""

    def __init__(self, path: str, facility: int) -> None:
        self.path = self.name = path
        self._facility = str(facility).encode()
        self._sock: socket.socket | None = _datagram_socket(socket.AF_UNIX, path)

    def write(self, line: str, record: dict[str, Any]) -> None:
        event = str(record.get("event", ""))
        fields = [
            (b"MESSAGE", line.encode()),
            (b"PRIORITY", str(severity(record)).encode()),
            (b"SYSLOG_IDENTIFIER", APP_NAME.encode()),
            (b"SYSLOG_FACILITY", self._facility),
            (b"SMTPGATE_EVENT", event.encode()),
        ]
        session = record.get("session")
        if session:
            fields.append((b"SMTPGATE_SESSION", str(session).encode()))
        datagram = journal_datagram(fields)
        try:
            if self._sock is None:
                self._sock = _datagram_socket(socket.AF_UNIX, self.path)
            try:
                self._sock.send(datagram)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_as_memfd(datagram)
        except OSError:
            self._drop_socket()
            _fallback(line)

    def _send_as_memfd(self, datagram: bytes) -> None:
        """What does not fit a datagram goes as a sealed memfd (systemd's own way)."""
        assert self._sock is not None
        fd = os.memfd_create("smtpgate-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, datagram)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals | fcntl.F_SEAL_SEAL)
            socket.send_fds(self._sock, [b""], [fd])
        finally:
            os.close(fd)

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def reopen(self) -> None:
        sock = _datagram_socket(socket.AF_UNIX, self.path)
        self._drop_socket()
        self._sock = sock

    def close(self) -> None:
        self._drop_socket()


def journal_datagram(fields: list[tuple[bytes, bytes]]) -> bytes:
    """The native protocol: ``KEY=value\\n``, or for a value with a newline
    ``KEY\\n``, its length as 64-bit little endian, the value and ``\\n``."""
    parts = []
    for key, value in fields:
        if b"\n" in value:
            parts.append(key + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
        else:
            parts.append(key + b"=" + value + b"\n")
    return b"".join(parts)


class SyslogSink:
    """RFC 5424: ``<PRI>1 TIMESTAMP HOSTNAME smtpgate PID EVENT - MSG``, where MSGID
    is the record's event and MSG the rendered record."""

    def __init__(self, address: SyslogAddress, facility: int, name: str) -> None:
        self.address = address
        self.name = name
        self._facility = facility
        self._hostname = _syslog_hostname()
        self._pid = str(os.getpid())
        self._sock: socket.socket | None = None
        #: TCP: frames the connection has not taken yet (sent when it is writable),
        #: each with its line for standard error should the connection break.
        self._held: deque[tuple[bytes, str]] = deque()
        self._held_bytes = 0
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        self._retry_at = 0.0
        #: Host names are resolved once, here: never while records are written.
        self._sockaddr: tuple[int, Any] = (socket.AF_UNIX, address.path)
        if address.address is not None:
            host, port = address.address
            kind = socket.SOCK_DGRAM if address.transport == "udp" else socket.SOCK_STREAM
            family, *_, sockaddr = socket.getaddrinfo(host, port, type=kind)[0]
            self._sockaddr = (family, sockaddr)
        self._sock = self._connect(wait=True)

    def _connect(self, *, wait: bool = False) -> socket.socket:
        """A connected socket. Over TCP, ``wait`` (at start) waits up to 5 s for the
        connection, so that an unreachable collector stops serve with a clear error;
        otherwise the connection completes in the background (records sent meanwhile
        wait in order)."""
        if self.address.transport == "unix":
            return _datagram_socket(socket.AF_UNIX, self.address.path)
        family, sockaddr = self._sockaddr
        if self.address.transport == "udp":
            return _datagram_socket(family, sockaddr)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if wait:
                sock.settimeout(5)
                sock.connect(sockaddr)
                sock.setblocking(False)
            else:
                sock.setblocking(False)
                error = sock.connect_ex(sockaddr)
                if error not in (0, errno.EINPROGRESS):
                    raise OSError(error, os.strerror(error))
        except OSError:
            sock.close()
            raise
        return sock

    def _reconnect(self) -> socket.socket | None:
        """After a failure: a new connection at most once a second (records go to
        standard error meanwhile)."""
        now = time.monotonic()
        if now < self._retry_at:
            return None
        self._retry_at = now + RETRY_SECONDS
        try:
            self._sock = self._connect()
        except OSError:
            return None
        return self._sock

    def message(self, line: str, record: dict[str, Any]) -> bytes:
        event = str(record.get("event", "-"))
        pri = self._facility * 8 + severity(record)
        msgid = "".join(c for c in event if 33 <= ord(c) <= 126)[:32] or "-"
        timestamp = str(record.get("time") or "-")
        head = f"<{pri}>1 {timestamp} {self._hostname} {APP_NAME} {self._pid} {msgid} - "
        return (head + line).encode()

    def write(self, line: str, record: dict[str, Any]) -> None:
        message = self.message(line, record)
        if self._sock is None and self._reconnect() is None:
            _fallback(line)
            return
        assert self._sock is not None
        try:
            if self.address.transport != "tcp":
                self._sock.send(message)
            elif not self._send_stream(b"%d " % len(message) + message, line):
                _fallback(line)  # the collector is that far behind: this one waits nowhere
        except OSError:
            self._drop_socket()
            _fallback(line)

    def _send_stream(self, frame: bytes, line: str) -> bool:
        """Send ``frame`` or hold it (in order) until the connection takes it; False
        when too much is held already."""
        if self._held:
            if self._held_bytes + len(frame) > MAX_TCP_BACKLOG:
                return False
            self._held.append((frame, line))
            self._held_bytes += len(frame)
            return True
        assert self._sock is not None
        try:
            sent = self._sock.send(frame)
        except BlockingIOError:  # also while a new connection is being made
            sent = 0
        if sent < len(frame):
            self._held.append((frame[sent:], line))
            self._held_bytes += len(frame) - sent
            with contextlib.suppress(RuntimeError):  # no loop (a command, not serve)
                loop = asyncio.get_running_loop()
                loop.add_writer(self._sock.fileno(), self._flush)
                self._writer_loop = loop
        return True

    def _flush(self) -> None:
        """The connection is writable: send what is held, oldest first."""
        sock = self._sock
        while sock is not None and self._held:
            frame, line = self._held[0]
            try:
                sent = sock.send(frame)
            except BlockingIOError:
                return
            except OSError:
                self._drop_socket()
                return
            self._held_bytes -= sent
            if sent < len(frame):
                self._held[0] = (frame[sent:], line)
                return
            self._held.popleft()
        self._stop_writer()

    def _stop_writer(self) -> None:
        if self._writer_loop is not None and self._sock is not None:
            self._writer_loop.remove_writer(self._sock.fileno())
        self._writer_loop = None

    def _drop_socket(self) -> None:
        """Close the connection; what it still held goes to standard error (a frame cut
        in the middle is lost to the collector, never to the operator)."""
        self._stop_writer()
        for _, line in self._held:
            _fallback(line)
        self._held.clear()
        self._held_bytes = 0
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send_held(self) -> None:
        """Before the connection closes: what it holds, waiting up to 5 s in all."""
        if self._held and self._sock is not None:
            self._stop_writer()
            self._sock.settimeout(5)
            with contextlib.suppress(OSError):
                while self._held:
                    self._sock.sendall(self._held[0][0])
                    self._held.popleft()

    def reopen(self) -> None:
        sock = self._connect()
        self._send_held()  # the old connection's records first, in order
        self._drop_socket()
        self._sock = sock

    def close(self) -> None:
        self._send_held()
        self._drop_socket()


def _syslog_hostname() -> str:
    """RFC 5424 HOSTNAME: printable US-ASCII, at most 255 characters, ``-`` if unknown."""
    name = "".join(c for c in socket.gethostname() if 33 <= ord(c) <= 126)[:255]
    return name or "-"


def destination(settings: LoggingSettings) -> tuple[object, ...] | None:
    """What identifies where records go: a reload that keeps it keeps the sink.
    None for standard error, as for a log made on a stream (a test's, the demo's),
    which a configuration without a target keeps."""
    if settings.target == "file":
        return ("file", str(settings.file))
    if settings.target == "syslog":
        return ("syslog", settings.syslog_address, settings.syslog_facility)
    if settings.target == "journald":
        return ("journald", settings.journald_socket, settings.syslog_facility)
    return None


def open_sink(settings: LoggingSettings) -> Sink:
    """The sink ``[logging]`` asks for; OSError when it cannot be opened."""
    facility = FACILITIES[settings.syslog_facility]
    if settings.target == "file":
        assert settings.file is not None  # the schema insists
        return FileSink(str(settings.file))
    if settings.target == "syslog":
        address = settings.syslog_address
        return SyslogSink(parse_syslog_address(address), facility, address)
    if settings.target == "journald":
        return JournaldSink(settings.journald_socket, facility)
    return StreamSink(sys.stderr)


def destination_key(settings: LoggingSettings) -> tuple[str, str]:
    """The key that names where records go, and its value: what an error to open names
    (``logging.file``, ``logging.syslog_address``, ``logging.journald_socket``)."""
    if settings.target == "syslog":
        return "logging.syslog_address", settings.syslog_address
    if settings.target == "journald":
        return "logging.journald_socket", settings.journald_socket
    return "logging.file", str(settings.file or "")


def open_error(settings: LoggingSettings, exc: OSError) -> str:
    """``logging.file: <file>: cannot open: <why>`` (or the socket's key)."""
    key, value = destination_key(settings)
    return f"{key}: {value}: cannot open: {exc.strerror or exc}"
