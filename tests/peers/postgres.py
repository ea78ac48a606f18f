"""A private PostgreSQL server from Debian's packages, on a UNIX socket only.

``PostgresServer`` runs ``initdb`` into a fresh directory and ``pg_ctl start``
with ``listen_addresses = ''``: no TCP port at all (nothing to collide with
other tests), the socket in the same directory. Connections are trusted
(``initdb --auth=trust``): only the socket's directory lets anyone in.

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as
the ``postgres`` user the Debian package creates, in a directory under ``/tmp``
that user owns (pytest's ``/tmp/pytest-of-root`` is mode 0700, so a directory
inside ``tmp_path`` could not be reached). Not root: the server runs as us.
The server is stopped with ``pg_ctl stop -m fast`` (its postmaster PID, never
a name), the directory removed; its log is copied into the test's directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.peers import PeerMissing

PACKAGE = "postgresql"
DATABASE = "smtpgate"


def postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb, pg_ctl and postgres."""
    candidates = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PeerMissing(
        "PostgreSQL is not installed (Debian package 'postgresql'): run scripts/install-peers.sh"
    )


def _server_user() -> str | None:
    """Who runs the server: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PeerMissing(
            "the 'postgres' user is missing (PostgreSQL refuses to run as root): "
            "reinstall the postgresql package"
        ) from exc
    return "postgres"


class PostgresServer:
    """A running private server with the database ``smtpgate``; a context manager."""

    def __init__(self, artifacts: Path) -> None:
        self.bindir = postgres_bindir()
        self.user = _server_user()
        self.artifacts = artifacts
        self.dir = Path(tempfile.mkdtemp(prefix="sgpg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.log_file = self.dir / "postgres.log"
        self._running = False

    @property
    def url(self) -> str:
        """A libpq URL for the database over the socket: what ``[console] database`` takes."""
        return f"postgresql:///{DATABASE}?host={self.dir}&user=postgres"

    def _run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            user=self.user,
            **kwargs,
        )
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result

    def start(self) -> PostgresServer:
        if self.user is not None:
            shutil.chown(self.dir, self.user, self.user)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = f"-c listen_addresses='' -k {self.dir} -c fsync=off"
        self._running = True
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-o", options, "-w", "start"
        )
        self._run("createdb", "-h", str(self.dir), "-U", "postgres", DATABASE)
        return self

    def stop(self) -> None:
        if self._running:
            self._running = False
            subprocess.run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
                user=self.user,
            )
        try:
            if self.log_file.exists():
                self.artifacts.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.log_file, self.artifacts / "postgres.log")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
