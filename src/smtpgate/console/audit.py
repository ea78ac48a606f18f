"""The audit log: one record per change, saying who, when, what and from where.

Written to ``state_dir/audit.jsonl`` (JSON lines, mode 0600, appended with
one write per record), by every front end that changes something: the API
(configuration and certificate changes), the editing commands (configuration)
and ``smtpgate admin`` (accounts).
When the change went through a running ``serve``, the same record also goes
to the event log as ``event: "audit"``, so that whoever reads the log sees
it beside the ``reloaded`` record it caused. A record never carries a
password or a token: only account names.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from smtpgate.logs import EventLog

AUDIT_FILE = "audit.jsonl"
FILE_MODE = 0o600


class AuditLog:
    def __init__(self, state_dir: Path, event_log: EventLog | None = None) -> None:
        self.path = state_dir / AUDIT_FILE
        self._event_log = event_log

    def record(
        self, *, who: str, via: str, address: str, action: str, target: str, **details: Any
    ) -> dict[str, Any]:
        """Append one change; ``via`` is ``api`` or ``command``, ``address`` the
        client address (``local`` for a command)."""
        record: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "who": who,
            "via": via,
            "address": address,
            "action": action,
            "target": target,
            **details,
        }
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        if self._event_log is not None:
            fields = {k: v for k, v in record.items() if k != "time"}
            self._event_log.emit("audit", **fields)
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every record so far, oldest first (for the API and tests)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]
