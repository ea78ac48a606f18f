"""``[logging] target``: a real ``smtpgate serve`` logging to syslog (RFC 5424 over a
Unix datagram socket, UDP, TCP) and to the journal's native protocol, each
received by a real socket server standing in for the daemon; SIGUSR1 reopens
the log file as logrotate expects."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpgate.config import toml_writer
from smtpgate.config.errors import ConfigError
from smtpgate.config.loader import parse_config
from smtpgate.config.netaddr import parse_syslog_address
from smtpgate.logtargets import (
    FACILITIES,
    JournaldSink,
    SyslogSink,
    journal_datagram,
    severity,
)
from smtpgate.reserved_port import ReservedPort
from tests.peers import accepts_connections, complete_lines, require_binary, wait_until
from tests.peers.certs import TestPKI
from tests.peers.gate_config import gate_config, rule
from tests.peers.smtpgate_proc import Record, SmtpgateProcess, smtpgate_binary
from tests.peers.swaks import run_swaks_auth
from tests.peers.upstream import AiosmtpdUpstream

#: RFC 5424 section 6: HEADER SP STRUCTURED-DATA SP MSG, with the values smtpgate sends.
RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) "
    r"(?P<host>[!-~]{1,255}) smtpgate (?P<pid>\d+) (?P<msgid>[!-~]{1,32}) - (?P<msg>\{.*\})"
)


class Received:
    """What a stand-in daemon got, in order, safe to read from the test's thread."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lock = threading.Lock()

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.items)


def serve_datagrams(sock: socket.socket, received: Received, stop: threading.Event) -> None:
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            data, ancillary, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
        except TimeoutError:
            continue
        except OSError:
            return
        fds = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(struct.unpack(f"{len(payload) // 4}i", payload))
        for fd in fds:  # a memfd: the datagram that did not fit
            with os.fdopen(fd, "rb") as memfd:
                memfd.seek(0)
                data = memfd.read()
        received.add(data)


@contextlib.contextmanager
def datagram_server(family: int, address: Any) -> Iterator[tuple[socket.socket, Received]]:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(address)
    received, stop = Received(), threading.Event()
    thread = threading.Thread(target=serve_datagrams, args=(sock, received, stop), daemon=True)
    thread.start()
    try:
        yield sock, received
    finally:
        stop.set()
        thread.join(5)
        sock.close()


@contextlib.contextmanager
def tcp_syslog_server() -> Iterator[tuple[int, Received]]:
    """RFC 6587 octet counting: ``MSG-LEN SP SYSLOG-MSG``, one after the other."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    received, stop = Received(), threading.Event()

    def run() -> None:
        buffer = b""
        conn: socket.socket | None = None
        while not stop.is_set():
            if conn is None:
                try:
                    conn, _ = listener.accept()
                    conn.settimeout(0.1)
                except TimeoutError:
                    continue
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                conn.close()
                conn = None
                continue
            buffer += data
            while b" " in buffer:
                length_text, rest = buffer.split(b" ", 1)
                length = int(length_text)
                if len(rest) < length:
                    break
                received.add(rest[:length])
                buffer = rest[length:]
        if conn is not None:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        stop.set()
        thread.join(5)
        listener.close()


class SocketLoggedGate(SmtpgateProcess):
    """serve whose records go to a socket: read back through ``parse`` from what the
    stand-in daemon received."""

    def __init__(
        self,
        workdir: Path,
        logging: dict[str, Any],
        upstream: int | dict[str, Any],
        received: Callable[[], list[Any]],
        parse: Callable[[Any], Record],
    ) -> None:
        """``upstream``: the port of the one policy's upstream, or the whole configuration."""
        if isinstance(upstream, int):
            upstream = {"policies": [{"name": "in", "upstream": f"127.0.0.1:{upstream}"}]}
        super().__init__(workdir, upstream)
        self.config["logging"] = {"format": "json", **logging}
        self.text = toml_writer.dumps(self.config)
        self.received = received
        self.parse = parse

    def records(self, event: str | None = None) -> list[Record]:
        out = [self.parse(item) for item in self.received()]
        return [r for r in out if event is None or r.get("event") == event]


def send(gate: SmtpgateProcess) -> None:
    with smtplib.SMTP("127.0.0.1", gate.port(), timeout=10) as client:
        assert (
            client.sendmail("a@sender.example", ["b@rcpt.example"], "Subject: x\r\n\r\nhi\r\n")
            == {}
        )


def syslog_record(data: bytes) -> Record:
    match = RFC5424.fullmatch(data.decode())
    assert match, data
    record: Record = json.loads(match["msg"])
    facility, level = divmod(int(match["pri"]), 8)
    assert facility == FACILITIES["mail"]
    assert level == severity(record)
    assert match["msgid"] == record["event"]
    assert match["time"] == record["time"]
    record["_pid"] = int(match["pid"])
    return record


def check_syslog_run(gate: SocketLoggedGate) -> None:
    with gate:
        send(gate)
        (transaction,) = gate.transactions()
        assert transaction["outcome"] == "delivered"
        gate.wait_record("session_end")
        assert gate.proc is not None
        assert {r["_pid"] for r in gate.records()} == {gate.proc.pid}
    assert gate.returncode == 0, gate.diagnostics()
    assert "transaction" not in gate.stderr()  # every record went to syslog


def test_syslog_over_a_unix_datagram_socket(tmp_path: Path, upstream: AiosmtpdUpstream) -> None:
    path = str(tmp_path / "log.sock")
    with datagram_server(socket.AF_UNIX, path) as (_, received):
        logging = {"target": "syslog", "syslog_address": path}
        check_syslog_run(
            SocketLoggedGate(
                tmp_path / "gate", logging, upstream.port, received.snapshot, syslog_record
            )
        )


def test_syslog_over_udp(tmp_path: Path, upstream: AiosmtpdUpstream) -> None:
    with datagram_server(socket.AF_INET, ("127.0.0.1", 0)) as (sock, received):
        port = sock.getsockname()[1]
        logging = {"target": "syslog", "syslog_address": f"udp://127.0.0.1:{port}"}
        check_syslog_run(
            SocketLoggedGate(
                tmp_path / "gate", logging, upstream.port, received.snapshot, syslog_record
            )
        )


def test_syslog_over_tcp_with_octet_counting(tmp_path: Path, upstream: AiosmtpdUpstream) -> None:
    with tcp_syslog_server() as (port, received):
        logging = {"target": "syslog", "syslog_address": f"tcp://127.0.0.1:{port}"}
        check_syslog_run(
            SocketLoggedGate(
                tmp_path / "gate", logging, upstream.port, received.snapshot, syslog_record
            )
        )


def test_a_failed_auth_is_logged_as_a_warning(tmp_path: Path) -> None:
    """What fail2ban-style watchers look for: the ``auth`` record of wrong credentials
    has severity warning (4), a successful one info (6). swaks authenticates through
    smtpgate (``auth = "relay"``) to aiosmtpd as the submission server."""
    user, password = "alice@sender.test", "s3cret-Pa55-wOrd"
    pki = TestPKI(tmp_path / "pki")
    submission = AiosmtpdUpstream(starttls=pki.server_context(), users={user: password})
    with submission, datagram_server(socket.AF_INET, ("127.0.0.1", 0)) as (sock, received):
        address = f"udp://127.0.0.1:{sock.getsockname()[1]}"
        config = gate_config(
            submission.port,
            policy={"auth": "relay"},
            profile={"ca_file": str(pki.ca_file)},
            rules=[rule(recipient_encryption="none")],
        )
        logging = {"target": "syslog", "syslog_address": address}
        with SocketLoggedGate(
            tmp_path / "gate", logging, config, received.snapshot, syslog_record
        ) as gate:
            assert run_swaks_auth(gate.port(), "PLAIN", user, password).returncode == 0
            refused = run_swaks_auth(gate.port(), "LOGIN", user, "wrong")
            assert [r.code for r in refused.replies][-2:] == [535, 221], refused
            gate.wait_record("auth", count=2)
        pri_by_outcome = {}
        for data in received.snapshot():
            match = RFC5424.fullmatch(data.decode())
            assert match, data
            record = json.loads(match["msg"])
            if record["event"] == "auth":
                pri_by_outcome[record["outcome"]] = int(match["pri"])
    mail = FACILITIES["mail"] * 8
    assert pri_by_outcome == {"authenticated": mail + 6, "failed": mail + 4}


def journal_fields(data: bytes) -> dict[str, bytes]:
    """Parse the journal's native protocol (both the ``KEY=value`` and the binary form)."""
    fields: dict[str, bytes] = {}
    rest = data
    while rest:
        line, sep, after = rest.partition(b"\n")
        assert sep, data
        if b"=" in line:
            key, _, value = line.partition(b"=")
            rest = after
        else:
            key = line
            (length,) = struct.unpack("<Q", after[:8])
            value = after[8 : 8 + length]
            assert after[8 + length : 9 + length] == b"\n"
            rest = after[9 + length :]
        fields[key.decode()] = value
    return fields


def journal_record(data: bytes) -> Record:
    fields = journal_fields(data)
    record: Record = json.loads(fields["MESSAGE"])
    assert fields["SYSLOG_IDENTIFIER"] == b"smtpgate"
    assert fields["SMTPGATE_EVENT"].decode() == record["event"]
    assert int(fields["PRIORITY"]) == severity(record)
    assert fields["SYSLOG_FACILITY"] == str(FACILITIES["mail"]).encode()
    if "session" in record:
        assert fields["SMTPGATE_SESSION"].decode() == record["session"]
    return record


def test_journald_native_protocol(tmp_path: Path, upstream: AiosmtpdUpstream) -> None:
    path = str(tmp_path / "journal.sock")
    with datagram_server(socket.AF_UNIX, path) as (_, received):
        logging = {"target": "journald", "journald_socket": path}
        gate = SocketLoggedGate(
            tmp_path / "gate", logging, upstream.port, received.snapshot, journal_record
        )
        with gate:
            send(gate)
            (transaction,) = gate.transactions()
            assert transaction["outcome"] == "delivered"
        assert gate.returncode == 0, gate.diagnostics()


def test_a_record_too_large_for_a_datagram_goes_to_the_journal_as_a_sealed_memfd(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "journal.sock")
    with datagram_server(socket.AF_UNIX, path) as (_, received):
        sink = JournaldSink(path, FACILITIES["mail"])
        big = "x" * (4 << 20)  # over any datagram limit of an AF_UNIX socket
        line = json.dumps({"time": "t", "event": "transaction", "message_id": big})
        sink.write(line, {"event": "transaction"})
        sink.close()
        (data,) = wait_until(lambda: received.snapshot() or None, lambda: "no datagram", timeout=10)
    assert json.loads(journal_fields(data)["MESSAGE"])["message_id"] == big


def test_a_record_the_socket_cannot_take_goes_to_standard_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "gone.sock")
    with datagram_server(socket.AF_UNIX, path) as (_, received):
        sink = SyslogSink(parse_syslog_address(path), FACILITIES["mail"], path)
        sink.write('{"event":"first"}', {"event": "first", "time": "t"})
        wait_until(lambda: received.snapshot() or None, lambda: "no datagram", timeout=10)
    os.unlink(path)  # the daemon went away
    sink.write('{"event":"second"}', {"event": "second", "time": "t"})
    assert capsys.readouterr().err == '{"event":"second"}\n'
    sink.close()


def test_journal_datagram_uses_the_binary_form_for_values_with_newlines() -> None:
    data = journal_datagram([(b"MESSAGE", b"two\nlines"), (b"PRIORITY", b"6")])
    assert data == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nPRIORITY=6\n"


@pytest.mark.skipif(
    not Path("/run/systemd/journal/socket").exists() or shutil.which("journalctl") is None,
    reason="no systemd-journald on this machine (the stand-in socket tests above cover it)",
)
def test_the_real_journal_gets_the_records(tmp_path: Path) -> None:
    sink = JournaldSink("/run/systemd/journal/socket", FACILITIES["mail"])
    marker = uuid.uuid4().hex
    sink.write(json.dumps({"event": "stopped", "marker": marker}), {"event": "stopped"})
    sink.close()

    def found() -> str | None:
        out = subprocess.run(
            ["journalctl", "-o", "json", "SYSLOG_IDENTIFIER=smtpgate", "SMTPGATE_EVENT=stopped"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return out if marker in out else None

    wait_until(found, lambda: "the journal did not show the record", timeout=10)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[logging]\ntarget = "file"\n', 'logging.file: target = "file" needs a file'),
        (
            '[logging]\ntarget = "syslog"\nfile = "x.log"\n',
            'logging.file: a file is set, but target = "syslog"',
        ),
        (
            '[logging]\ntarget = "syslog"\nsyslog_address = "loghost:514"\n',
            "logging.syslog_address: invalid syslog address 'loghost:514'; write a socket "
            "path (/dev/log), udp://host:port or tcp://host:port",
        ),
        (
            '[logging]\ntarget = "syslog"\nsyslog_address = "udp://[::1]"\n',
            "logging.syslog_address: invalid address '[::1]'; write [IPv6]:port, e.g. [::1]:2525",
        ),
        ('[logging]\ntarget = "kafka"\n', "logging.target:"),
        ('[logging]\nsyslog_facility = "mial"\n', "logging.syslog_facility:"),
    ],
)
def test_logging_settings_errors_name_the_key(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("/tmp"))
    assert str(caught.value).startswith(error)


def test_target_defaults_to_file_when_a_file_is_set() -> None:
    assert parse_config('[logging]\nfile = "a.log"\n', Path("/x")).logging.target == "file"
    assert parse_config("", Path("/x")).logging.target == "stderr"


def test_serve_refuses_a_syslog_socket_that_is_not_there(tmp_path: Path) -> None:
    gate = SmtpgateProcess(tmp_path, {"policies": []})
    gate.config["logging"] = {"target": "syslog", "syslog_address": str(tmp_path / "none")}
    gate.config_file.write_text(toml_writer.dumps(gate.config))
    proc = subprocess.run(
        [smtpgate_binary(), "serve", "--config", str(gate.config_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert (
        f"logging.syslog_address: {tmp_path / 'none'}: cannot open: No such file or directory"
        in proc.stderr
    )


# -- SIGUSR1 ---------------------------------------------------------------------------------


def test_sigusr1_reopens_the_log_file_without_reloading(
    tmp_path: Path, upstream: AiosmtpdUpstream
) -> None:
    config = {
        "logging": {"file": "smtpgate.log"},
        "policies": [{"name": "in", "upstream": f"127.0.0.1:{upstream.port}"}],
    }
    with SmtpgateProcess(tmp_path, config) as gate:
        send(gate)
        gate.wait_record("session_end")
        rotated = gate.log_file.with_name("smtpgate.log.1")
        gate.log_file.rename(rotated)  # what logrotate does before it signals
        gate.config_file.write_text("broken = [")  # a reload now would fail: none must happen
        assert gate.proc is not None
        gate.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: gate.log_file.exists() or None, lambda: "no new log file", timeout=10)
        send(gate)
        (after,) = gate.wait_record("transaction")
        assert after["outcome"] == "delivered"
        time.sleep(0.2)
        events = [r["event"] for r in gate.records()]
        assert "reload_failed" not in events and "reloaded" not in events
    old = [json.loads(line)["event"] for line in rotated.read_text().splitlines()]
    assert old.count("transaction") == 1 and "stopped" not in old
    assert gate.records("stopped")  # the rest went to the new file


def test_sigusr1_names_a_file_it_cannot_reopen(tmp_path: Path, upstream: AiosmtpdUpstream) -> None:
    config = {
        "logging": {"file": "smtpgate.log"},
        "policies": [{"name": "in", "upstream": f"127.0.0.1:{upstream.port}"}],
    }
    with SmtpgateProcess(tmp_path, config) as gate:
        rotated = gate.log_file.with_name("smtpgate.log.1")
        gate.log_file.rename(rotated)
        gate.log_file.mkdir()  # in the way of the new file, whoever runs the test
        assert gate.proc is not None
        gate.proc.send_signal(signal.SIGUSR1)
        wait_until(
            lambda: "log_reopen_failed" in rotated.read_text() or None,
            lambda: "no log_reopen_failed",
            timeout=10,
        )
    (failed,) = [
        json.loads(line)
        for line in rotated.read_text().splitlines()
        if '"log_reopen_failed"' in line
    ]
    assert failed["file"] == str(gate.log_file)
    assert failed["reason"] == "cannot open: Is a directory"


def test_tcp_syslog_holds_what_a_slow_collector_cannot_take_and_loses_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A collector that does not read: records wait in order up to 1 MiB held; past
    that a record goes to standard error instead. Each record arrives once, somewhere."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    received = bytearray()
    try:
        sink = SyslogSink(parse_syslog_address(f"tcp://127.0.0.1:{port}"), 2, "tcp")
        conn, _ = listener.accept()
        count = 3000  # 12 MB: more than the kernel buffers and the 1 MiB held together
        for n in range(count):
            line = json.dumps({"event": "transaction", "n": n, "pad": "x" * 4000})
            sink.write(line, {"event": "transaction", "time": "t"})

        def read() -> None:
            conn.settimeout(10)
            while chunk := conn.recv(1 << 20):
                received.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        sink.close()  # sends what it still holds, then closes
        reader.join(15)
        conn.close()
    finally:
        listener.close()
    data = bytes(received)
    over_tcp = []
    while data:
        length, _, rest = data.partition(b" ")
        over_tcp.append(json.loads(rest[: int(length)].split(b" - ", 1)[1])["n"])
        data = rest[int(length) :]
    on_stderr = [json.loads(line)["n"] for line in capsys.readouterr().err.splitlines()]
    assert over_tcp == sorted(over_tcp) and on_stderr == sorted(on_stderr)
    assert on_stderr, "the test did not get past what is held"
    assert sorted(over_tcp + on_stderr) == list(range(count))


def test_a_tcp_collector_that_went_away_is_tried_again_without_blocking(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Records go to standard error while the collector is down (no wait per record),
    and to the collector again once it is back (tried at most once a second)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sink = SyslogSink(parse_syslog_address(f"tcp://127.0.0.1:{port}"), 2, "tcp")
    conn, _ = listener.accept()
    conn.close()
    listener.close()  # the collector is gone: connecting is refused
    started = time.monotonic()
    deadline = started + 5
    while time.monotonic() < deadline and "down-3" not in capsys.readouterr().err:
        for n in range(4):
            sink.write(f'{{"n":"down-{n}"}}', {"event": "x", "time": "t"})
        time.sleep(0.05)
    assert time.monotonic() - started < 5
    listener = socket.create_server(("127.0.0.1", port))  # back
    try:
        time.sleep(1.1)  # past the retry delay
        sink.write('{"n":"back"}', {"event": "x", "time": "t"})
        conn, _ = listener.accept()
        sink.close()  # sends what waited for the connection
        conn.settimeout(5)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.close()
    finally:
        listener.close()
    assert data.endswith(b' - {"n":"back"}')


# -- a real syslog daemon --------------------------------------------------------------------

RSYSLOG_CONF = """\
global(workDirectory="{workdir}")
module(load="imtcp")
module(load="imudp")
template(name="fields" type="list") {{
  property(name="pri-text") constant(value="|")
  property(name="hostname") constant(value="|")
  property(name="app-name") constant(value="|")
  property(name="procid") constant(value="|")
  property(name="msgid") constant(value="|")
  property(name="timereported" dateFormat="rfc3339") constant(value="|")
  property(name="msg") constant(value="\\n")
}}
ruleset(name="received") {{
  action(type="omfile" file="{workdir}/received.log" template="fields")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="received")
input(type="imudp" address="127.0.0.1" port="{port}" ruleset="received")
"""


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """rsyslogd (Debian's) on a loopback port, TCP and UDP, writing what it parsed."""
    binary = require_binary("rsyslogd", "rsyslog")
    workdir = tmp_path / "rsyslog"
    workdir.mkdir()
    reserved = ReservedPort()  # held until rsyslogd listens on it (TCP)
    port = reserved.port
    conf = workdir / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(workdir=workdir, port=port))
    proc = subprocess.Popen(
        [binary, "-n", "-f", str(conf), "-i", str(workdir / "rsyslogd.pid")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "stderr").open("wb"),
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: accepts_connections(port) or None,
            lambda: f"rsyslogd does not listen: {(workdir / 'stderr').read_text()}",
            timeout=20,
        )
        reserved.release()
        yield port, workdir / "received.log"
    finally:
        reserved.release()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def rsyslog_parsed(line: str) -> Record:
    """A line of what rsyslog parsed: its fields must be the RFC 5424 header's."""
    pri, host, app, procid, msgid, reported, msg = line.split("|", 6)
    record: Record = json.loads(msg)
    assert (pri, app, msgid) == (
        f"mail.{ {3: 'err', 4: 'warning', 6: 'info'}[severity(record)] }",
        "smtpgate",
        record["event"],
    )
    assert host and host != "-"
    assert reported.startswith(record["time"][:19])
    record["_pid"] = int(procid)
    return record


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rsyslog_parses_what_serve_sends(
    tmp_path: Path,
    upstream: AiosmtpdUpstream,
    rsyslog: tuple[int, Path],
    transport: str,
) -> None:
    port, received_log = rsyslog

    logging = {"target": "syslog", "syslog_address": f"{transport}://127.0.0.1:{port}"}
    gate = SocketLoggedGate(
        tmp_path / "gate",
        logging,
        upstream.port,
        lambda: complete_lines(received_log),
        rsyslog_parsed,
    )
    with gate:
        send(gate)
        (transaction,) = gate.transactions()
        assert transaction["outcome"] == "delivered"
        assert gate.proc is not None
        assert {r["_pid"] for r in gate.records()} == {gate.proc.pid}
    assert gate.returncode == 0, gate.diagnostics()
