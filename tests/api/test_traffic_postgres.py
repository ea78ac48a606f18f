"""Several instances, one console (issue 9 item 3): two ``smtpgate serve`` write their
transaction rows into one PostgreSQL database (a real server from Debian's packages,
started here), and the console of one shows both."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smtpgate.reserved_port import ReservedPort
from tests.api.helpers import ConsoleUnderTest, console_config
from tests.peers import wait_until
from tests.peers.gate_config import gate_config
from tests.peers.postgres import PostgresServer
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream

MESSAGE = b"From: a@one.example\r\nSubject: two instances\r\n\r\nhello\r\n"


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path / "postgres") as server:
        yield server


def send(port: int, sender: str, recipient: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.sendmail(sender, [recipient], MESSAGE)


def start_with_console(
    workdir: Path, upstream: AiosmtpdUpstream, postgres: PostgresServer, **sections: Any
) -> tuple[SmtpgateProcess, int]:
    """serve with its console, writing traffic to ``postgres``, and the console's port:
    held until the console listens on it, so nothing else can take it meanwhile."""
    with ReservedPort() as console_port:
        config = console_config(upstream.port, console_port.port, **sections)
        config["console"]["database"] = postgres.url
        gate = SmtpgateProcess(workdir, config)
        try:
            gate.start()
            gate.wait_record("console_listening")
        except BaseException:
            gate.stop()
            raise
    return gate, console_port.port


def test_two_instances_write_one_database_and_one_console_shows_both(
    tmp_path: Path, postgres: PostgresServer, upstream: AiosmtpdUpstream
) -> None:
    # mx1 serves the console; mx2 has none and only writes to the shared database.
    second_config: dict[str, Any] = gate_config(
        upstream.port, gateway={"hostname": "mx2.example.test"}
    )
    second_config["console"] = {"enabled": False, "database": postgres.url}
    second = SmtpgateProcess(tmp_path / "mx2", second_config)
    first, console_port = start_with_console(
        tmp_path / "mx1", upstream, postgres, gateway={"hostname": "mx1.example.test"}
    )
    try:
        console = ConsoleUnderTest(first, console_port)
        second.start()
        send(first.port(), "a@one.example", "b@example.com")
        send(second.port(), "a@two.example", "c@example.com")
        send(second.port(), "a@two.example", "d@other.example")
        with console.admin() as client:

            def rows() -> list[dict[str, Any]] | None:
                found = client.get("/api/v1/traffic").json()["records"]
                return found if len(found) == 3 else None

            shown = wait_until(rows, lambda: client.get("/api/v1/traffic").text, timeout=15)
            assert [(r["instance"], r["sender_domain"]) for r in shown] == [
                ("mx2.example.test", "two.example"),
                ("mx2.example.test", "two.example"),
                ("mx1.example.test", "one.example"),
            ]
            assert all(r["outcome"] == "delivered" for r in shown)
            by_domain = client.get("/api/v1/traffic", params={"domain": "example.com"}).json()
            assert {r["instance"] for r in by_domain["records"]} == {
                "mx1.example.test",
                "mx2.example.test",
            }
            page = client.get("/api/v1/traffic", params={"limit": 2}).json()
            rest = client.get(
                "/api/v1/traffic", params={"limit": 2, "before": page["next_before"]}
            ).json()
            assert [r["id"] for r in page["records"] + rest["records"]] == [r["id"] for r in shown]
            chart = client.get("/api/v1/traffic/tls-versions", params={"bucket": "1d"}).json()
            assert sum(sum(b["client"].values()) for b in chart["buckets"]) == 3
            coverage = client.get("/api/v1/coverage").json()
            assert [(s["domain"], s["messages"]) for s in coverage["senders"]] == [
                ("two.example", 2),
                ("one.example", 1),
            ]
            assert [(r["domain"], r["messages"]) for r in coverage["recipients"]] == [
                ("example.com", 2),
                ("other.example", 1),
            ]
    finally:
        second.stop()
        first.stop()
    # Both wrote through the same tables of the one database.
    with psycopg.connect(postgres.url) as connection:
        counted = connection.execute(
            "SELECT instance, COUNT(*) FROM traffic GROUP BY instance ORDER BY instance"
        ).fetchall()
    assert counted == [("mx1.example.test", 1), ("mx2.example.test", 2)]


def test_postgresql_down_is_503_on_the_console_and_mail_goes_on(
    tmp_path: Path, postgres: PostgresServer, upstream: AiosmtpdUpstream
) -> None:
    gate, console_port = start_with_console(tmp_path / "gate", upstream, postgres)
    try:
        console = ConsoleUnderTest(gate, console_port)
        postgres.stop()
        send(gate.port(), "a@one.example", "b@example.com")
        gate.transactions(outcome="delivered")
        assert len(upstream.messages) == 1
        failed = gate.wait_record("traffic_write_failed", timeout=15)
        assert failed[0]["database"] == postgres.url  # no password in it to hide
        with console.admin() as client:
            reply = client.get("/api/v1/traffic")
        assert reply.status_code == 503
        assert [e["key"] for e in reply.json()["errors"]] == ["console.database"]
    finally:
        gate.stop()
