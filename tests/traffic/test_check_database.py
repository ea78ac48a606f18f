"""``smtpgate check`` reaches the traffic database serve would write to
(docs/configuration.md, Checking a configuration): a real PostgreSQL, down or
wrong (warnings), or up; an SQLite file that is not one (an error); nothing when
serve keeps no rows."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.reserved_port import ReservedPort
from smtpgate.traffic.store import DEFAULT_CAPACITY
from tests.peers.postgres import PostgresServer
from tests.peers.smtpgate_proc import smtpgate_binary

CONFIG = """\
[gateway]
hostname = "mx.check.test"
state_dir = "state"
[[policies]]
name = "inbound"
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{upstream}"
{console}
"""


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path / "postgres") as server:
        yield server


def check(tmp_path: Path, console: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    path = tmp_path / "smtpgate.toml"
    with ReservedPort() as listen, ReservedPort() as upstream:
        path.write_text(CONFIG.format(listen=listen.port, upstream=upstream.port, console=console))
    result = subprocess.run(
        [smtpgate_binary(), "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return path, result


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def warnings(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def test_check_reaches_postgresql_and_names_the_key_when_it_cannot(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    up = f'[console]\ndatabase = "{postgres.url}"'
    path, result = check(tmp_path, up)
    assert result.returncode == 0, result.stderr
    assert errors(result) == []

    # A database that cannot be reached is a warning: serve starts and retries, and
    # systemd runs check before serve (ExecStartPre), so it must not keep mail waiting.
    waiting = f"(serve starts without it and retries; up to {DEFAULT_CAPACITY} transaction "
    waiting += "records wait in memory meanwhile)"
    wrong = postgres.url.replace("/smtpgate?", "/nosuchdb?")
    path, result = check(tmp_path, f'[console]\ndatabase = "{wrong}"')
    assert result.returncode == 0, result.stderr
    assert errors(result) == []
    assert warnings(result) == [
        f"warning: {path}: console.database: {wrong}: cannot reach: connection failed: "
        f'connection to server on socket "{postgres.dir}/.s.PGSQL.5432" failed: '
        f'FATAL:  database "nosuchdb" does not exist {waiting}'
    ]
    assert result.stdout.endswith(", 1 warnings)\n")

    postgres.stop()
    path, result = check(tmp_path, up)
    assert result.returncode == 0, result.stderr
    assert warnings(result) == [
        f"warning: {path}: console.database: {postgres.url}: cannot reach: connection is bad: "
        f'connection to server on socket "{postgres.dir}/.s.PGSQL.5432" failed: '
        f"No such file or directory {waiting}"
    ]
    # With the console off and no database serve keeps no rows: nothing to reach.
    path, result = check(tmp_path, "[console]\nenabled = false")
    assert result.returncode == 0, result.stderr


def test_check_reads_the_sqlite_file_without_writing_it(tmp_path: Path) -> None:
    console = "[console]\nenabled = true"
    path, result = check(tmp_path, console)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "state").exists()
    database = tmp_path / "state" / "traffic.sqlite3"
    database.parent.mkdir()
    database.write_bytes(b"not a database, but forty bytes or more of it\n")
    path, result = check(tmp_path, console)
    assert result.returncode == 1
    assert errors(result) == [
        f"error: {path}: gateway.state_dir: {database}: cannot reach: file is not a database"
    ]
    assert database.read_bytes() == b"not a database, but forty bytes or more of it\n"
