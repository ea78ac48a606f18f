"""The pid file of a running ``smtpgate serve``: ``state_dir/smtpgate.pid``.

``serve`` writes it once it listens and removes it when it stops. A command
that saves the configuration reads it to signal the server (``SIGHUP``, the
same reload an administrator triggers by hand) when that server runs the
file just saved. The file holds JSON: ``{"pid": 1234, "config": "/etc/...toml"}``.

A pid file is stale when its process is gone, or when the pid now belongs to
another program (checked through ``/proc/<pid>/cmdline`` where there is one):
such a file is never signalled, and is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

PID_FILE_NAME = "smtpgate.pid"


@dataclass(frozen=True, slots=True)
class SignalOutcome:
    """What :func:`signal_reload` did: ``pid`` is set when a server was signalled;
    ``note`` says why not, or ``""``."""

    pid: int | None
    note: str

    def describe(self) -> str:
        if self.pid is not None:
            return f"signalled the running server (pid {self.pid}) to reload"
        return self.note


def pid_file(state_dir: Path) -> Path:
    return state_dir / PID_FILE_NAME


def write_pid_file(state_dir: Path, config: Path | None) -> Path:
    """Record this process as the server of ``config`` (atomically)."""
    path = pid_file(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "config": str(config.resolve()) if config else None}
    temporary = path.with_name(f".{PID_FILE_NAME}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps(record) + "\n", encoding="utf-8")
        temporary.replace(path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    return path


def remove_pid_file(state_dir: Path) -> None:
    """Remove the pid file if it is still this process's."""
    path = pid_file(state_dir)
    record = _read(path)
    if record is not None and record[0] == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def signal_reload(state_dir: Path, config: Path) -> SignalOutcome:
    """Send ``SIGHUP`` to the server recorded in ``state_dir`` if it serves ``config``."""
    path = pid_file(state_dir)
    record = _read(path)
    if record is None:
        return SignalOutcome(None, "no running server found (no pid file in state_dir)")
    pid, served = record
    if not _is_smtpgate(pid):
        path.unlink(missing_ok=True)
        return SignalOutcome(None, f"no running server found (removed stale pid file {path})")
    if served is None or Path(served) != config.resolve():
        return SignalOutcome(
            None, f"the running server (pid {pid}) serves {served or 'the embedded default'}"
        )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return SignalOutcome(None, f"no running server found (removed stale pid file {path})")
    except PermissionError:
        return SignalOutcome(
            None,
            f"not allowed to signal the running server (pid {pid}); "
            f"send it SIGHUP as its user: kill -HUP {pid}",
        )
    return SignalOutcome(pid, "")


def _read(path: Path) -> tuple[int, str | None] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        pid = record["pid"]
        served = record.get("config")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if type(pid) is not int or pid <= 1 or not (served is None or isinstance(served, str)):
        return None
    return pid, served


def _is_smtpgate(pid: int) -> bool:
    """Whether ``pid`` is alive and (where /proc tells) an smtpgate process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc at all: trust kill(0)
    except OSError:
        return True
    return b"smtpgate" in cmdline
