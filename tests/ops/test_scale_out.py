"""Several instances (issue 13 item 4): a real HAProxy (Debian) in TCP mode with
``send-proxy-v2`` and health checks in front of two ``smtpgate serve`` sharing one
PostgreSQL traffic database. Under a bounded load one instance gets SIGTERM: its
sessions in progress finish, new ones go to the other, nothing is lost; client
addresses are preserved in the logs and the traffic records, and one console
shows both instances' records."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import pytest

from smtpgate.config.errors import ConfigError
from smtpgate.config.loader import parse_config
from smtpgate.config.netaddr import in_networks, parse_network
from smtpgate.config.warnings import config_warnings
from smtpgate.reserved_port import ReservedPort
from tests.api.helpers import ConsoleUnderTest
from tests.peers import wait_until
from tests.peers.haproxy import HAProxy
from tests.peers.postgres import PostgresServer
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream

MESSAGES = 40
CLIENTS = 4
#: The upstream takes this long to answer the final dot: sessions are in progress
#: when SIGTERM comes.
DATA_DELAY = 0.3


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path / "postgres") as server:
        yield server


@pytest.fixture
def upstream() -> Iterator[AiosmtpdUpstream]:
    server = AiosmtpdUpstream(data_delay=DATA_DELAY).start()
    yield server
    server.stop()


def instance(
    workdir: Path, name: str, upstream: AiosmtpdUpstream, database: str, console_port: int | None
) -> SmtpgateProcess:
    config: dict[str, Any] = {
        "gateway": {"hostname": f"{name}.example.test"},
        "console": {"database": database},
        "policies": [
            {
                "name": "in",
                "upstream": f"127.0.0.1:{upstream.port}",
                "proxy_protocol": True,
                "proxy_protocol_from": ["127.0.0.1"],  # the balancer
            }
        ],
    }
    if console_port is not None:
        config["console"].update(enabled=True, listen=f"127.0.0.1:{console_port}")
    return SmtpgateProcess(workdir / name, config)


class Sender:
    """An MTA's behaviour: each message is sent until a 250 takes it (a connection that
    breaks or a 4xx before that is retried), one connection per message."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        #: Message-ID -> the client address (our end) of the attempt that got 250.
        self.accepted: dict[str, str] = {}
        self.retries = 0
        self.errors: list[str] = []

    def send(self, number: int) -> None:
        message_id = f"<load-{number}@sender.example>"
        content = f"Message-ID: {message_id}\r\nSubject: load {number}\r\n\r\nbody\r\n"
        for _ in range(10):
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as client:
                    assert client.sock is not None
                    host, port = client.sock.getsockname()[:2]
                    refused = client.sendmail("a@sender.example", ["b@rcpt.example"], content)
                    assert refused == {}
                with self.lock:
                    self.accepted[message_id] = f"{host}:{port}"
                return
            except (OSError, smtplib.SMTPException) as exc:
                with self.lock:
                    self.retries += 1
                    self.errors.append(f"{message_id}: {exc!r}")
                time.sleep(0.1)
        raise AssertionError(f"{message_id} never accepted: {self.errors[-3:]}")

    def run(self, numbers: list[int]) -> None:
        for number in numbers:
            self.send(number)


class HeldSession:
    """A client that reaches the first instance directly, as the balancer would (a PROXY
    header first), and stops in the middle of its message body."""

    MESSAGE_ID = "<held@sender.example>"

    def __init__(self, port: int, client_ip: str, client_port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        header = f"PROXY TCP4 {client_ip} 127.0.0.1 {client_port} {port}\r\n"
        self.sock.sendall(header.encode())
        self.replies = self.sock.makefile("rb")

    def reply(self) -> int:
        while True:
            line = self.replies.readline()
            assert line, "connection closed"
            if line[3:4] != b"-":
                return int(line[:3])

    def command(self, line: str) -> int:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def start_body(self) -> None:
        assert self.reply() == 220
        assert self.command("EHLO held.example") == 250
        assert self.command("MAIL FROM:<a@sender.example>") == 250
        assert self.command("RCPT TO:<b@rcpt.example>") == 250
        assert self.command("DATA") == 354
        self.sock.sendall(f"Message-ID: {self.MESSAGE_ID}\r\nSubject: held\r\n\r\n".encode())

    def finish(self) -> int:
        self.sock.sendall(b"the rest of the body\r\n.\r\n")
        code = self.reply()
        self.command("QUIT")
        self.sock.close()
        return code


def received_ids(upstream: AiosmtpdUpstream) -> list[str]:
    parser = BytesHeaderParser()
    return [str(parser.parsebytes(m.content)["Message-ID"]) for m in upstream.messages]


def test_two_instances_behind_haproxy_lose_nothing_when_one_stops(
    tmp_path: Path, postgres: PostgresServer, upstream: AiosmtpdUpstream
) -> None:
    with contextlib.ExitStack() as stack, ReservedPort() as console:
        first = instance(tmp_path, "first", upstream, postgres.url, None)
        second = instance(tmp_path, "second", upstream, postgres.url, console.port)
        stack.enter_context(first)
        stack.enter_context(second)
        second.wait_record("console_listening")
        balancer = HAProxy(
            tmp_path / "haproxy", first.port(), version=2, more_targets=[second.port()]
        )
        # Both servers take connections at once: HAProxy counts a server up from its
        # start until a check fails (no wait for "rise" checks).
        stack.enter_context(balancer)

        sender = Sender(balancer.port)
        threads = [
            threading.Thread(target=sender.run, args=(list(range(c, MESSAGES, CLIENTS)),))
            for c in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        # In the middle of the load, with sessions of the first instance in progress:
        wait_until(
            lambda: len(sender.accepted) >= MESSAGES // 3 or None,
            lambda: f"only {len(sender.accepted)} accepted",
            timeout=60,
        )
        # A session surely in progress on the first instance: in the middle of its body.
        held = HeldSession(first.port(), "192.0.2.25", 40025)
        held.start_body()
        assert first.proc is not None
        first.proc.terminate()  # SIGTERM
        first.wait_record("stopping")
        assert held.finish() == 250  # its session in progress finished
        for thread in threads:
            thread.join(120)
        assert first.proc.wait(60) == 0

        # Nothing lost: every message was accepted, and each accepted one arrived.
        assert len(sender.accepted) == MESSAGES
        arrived = received_ids(upstream)
        assert set(sender.accepted) <= set(arrived)
        assert HeldSession.MESSAGE_ID in arrived
        # The first instance's sessions in progress finished; none was cut.
        (stopping,) = first.records("stopping")
        assert stopping["sessions"] >= 1
        assert first.records("stopped")
        assert "server_shutdown" not in {r["reason"] for r in first.records("session_end")}
        (held_record,) = first.transactions(message_id=HeldSession.MESSAGE_ID)
        assert (held_record["client"], held_record["outcome"]) == ("192.0.2.25:40025", "delivered")

        # New sessions went to the second instance, and both took mail. A worker's
        # records reach the log just after the client's reply: wait for all of them.
        def recorded() -> int:
            return sum(
                t["outcome"] == "delivered"
                for gate in (first, second)
                for t in gate.records("transaction")
            )

        wait_until(
            lambda: recorded() > len(sender.accepted) or None,
            lambda: f"{recorded()} delivered records for {len(sender.accepted) + 1} messages",
            timeout=20,
        )
        delivered = {
            name: [t for t in gate.records("transaction") if t["outcome"] == "delivered"]
            for name, gate in (("first", first), ("second", second))
        }
        assert delivered["first"] and delivered["second"]
        stopped_at = first.records("stopping")[0]["time"]
        assert all(t["time"] > stopped_at for t in delivered["second"][-3:])
        # The client address in each record is the sender's, from the PROXY header.
        for record in delivered["first"] + delivered["second"]:
            if sender.accepted.get(record["message_id"]) is not None:
                assert record["client"] == sender.accepted[record["message_id"]]
        matched = {
            r["message_id"]
            for r in delivered["first"] + delivered["second"]
            if r["client"] == sender.accepted.get(r["message_id"])
        }
        assert matched == set(sender.accepted)

        # One console shows both instances' records, client addresses included.
        console_client = ConsoleUnderTest(second, console.port).admin()

        def rows() -> list[dict[str, Any]] | None:
            page = console_client.get("/api/v1/traffic", params={"limit": 500}).json()
            found = [r for r in page["records"] if r["outcome"] == "delivered"]
            return found if len(found) >= MESSAGES + 1 else None

        shown = wait_until(rows, lambda: "the console does not show every record", timeout=30)
        assert {r["instance"] for r in shown} == {"first.example.test", "second.example.test"}
        expected = {**sender.accepted, HeldSession.MESSAGE_ID: "192.0.2.25:40025"}
        assert {r["message_id"]: r["client"] for r in shown} == expected


# -- trusted balancers -----------------------------------------------------------------------


def test_a_proxy_header_from_an_untrusted_address_is_refused(
    tmp_path: Path, upstream: AiosmtpdUpstream
) -> None:
    config = {
        "policies": [
            {
                "name": "in",
                "upstream": f"127.0.0.1:{upstream.port}",
                "proxy_protocol": True,
                "proxy_protocol_from": ["192.0.2.0/24", "2001:db8::/32"],
            }
        ],
    }
    with SmtpgateProcess(tmp_path / "gate", config) as gate:
        # HAProxy on loopback is not among the trusted balancers: its header is not read.
        balancer = HAProxy(tmp_path / "haproxy", gate.port(), version=2)
        with balancer, socket.create_connection(("127.0.0.1", balancer.port), timeout=10) as c:
            assert c.recv(100) == b""  # closed without a greeting
        untrusted = "127.0.0.1 is not a trusted balancer (proxy_protocol_from)"
        gate.wait_record("proxy_header_error", where=lambda r: r["reason"] == untrusted)
        # HAProxy's own readiness probe was a connection too; it may be gone before
        # its address is read (the event loop asks the socket lazily): "unknown".
        gone = "unknown is not a trusted balancer (proxy_protocol_from)"
        refused = gate.records("proxy_header_error")
        assert {(r["policy"], r["reason"]) for r in refused} <= {("in", untrusted), ("in", gone)}
        assert gate.records("session_start") == []
        assert upstream.messages == []


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        ("192.0.2.7", True),
        ("::ffff:192.0.2.7", True),  # a dual-stack listener's view of an IPv4 peer
        ("2001:db8::1", True),
        ("198.51.100.7", False),
        ("2001:db9::1", False),
        ("", False),
        ("unknown", False),
    ],
)
def test_trusted_balancer_addresses(address: str, trusted: bool) -> None:
    networks = (parse_network("192.0.2.0/24"), parse_network("2001:db8::/32"))
    assert in_networks(address, networks) is trusted


def test_proxy_protocol_from_errors_and_warnings(tmp_path: Path) -> None:
    policy = '[[policies]]\nname = "in"\nlisten = "127.0.0.1:2525"\nupstream = "10.0.0.1:25"\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(
            policy + 'proxy_protocol = true\nproxy_protocol_from = ["10.0.0.1/8"]\n', tmp_path
        )
    assert str(caught.value) == (
        "policies[1].proxy_protocol_from[1]: '10.0.0.1/8' is not an IP address or network "
        "(10.0.0.1/8 has host bits set); write e.g. 192.0.2.10, 10.0.0.0/8 or 2001:db8::/32"
    )
    config = parse_config(policy + 'proxy_protocol_from = ["10.0.0.0/8"]\n', tmp_path)
    assert [(w.key, w.reason) for w in config_warnings(config)] == [
        (
            "policies[1].proxy_protocol_from",
            "has no effect: proxy_protocol is false (no PROXY header is read)",
        )
    ]
