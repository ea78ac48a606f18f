"""``[gateway] workers = 2`` (issue 12 item 3, docs/operations.md#workers): a real
``smtpgate serve`` whose main process supervises two worker processes, under the
bounded load of :mod:`tests.reliability.load` (every message marked, each copy at the
scripted upstream counted).

Both workers take connections on the same address; the log, the metrics and the
traffic store, which run once in the main process, count each session once; a worker
killed with SIGKILL is replaced, the other serves on, and no message a client saw
``250`` for is lost. SIGHUP and SIGTERM under load with two workers:
test_signals_under_load (its ``two-workers`` cases).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smtpgate.config.errors import ConfigError
from smtpgate.config.loader import parse_config
from smtpgate.proxy.supervisor import worker_count
from smtpgate.reserved_port import ReservedPort
from tests.peers import wait_until
from tests.peers.gate_config import gate_config
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.peers.smtpgate_proc import Record, SmtpgateProcess
from tests.proxy.helpers import LoopThread
from tests.reliability.load import (
    CLIENTS,
    MESSAGES,
    SESSIONS,
    Load,
    MakeRaw,
    make_load,
    session,
    start_load,
    upstream_copies,
    wait_accepted,
)

WORKERS = 2
Started = tuple[SmtpgateProcess, ScriptedUpstream, Load]


@pytest.fixture
def started(tmp_path: Path, loop: LoopThread, make_scripted_upstream: MakeRaw) -> Iterator[Started]:
    upstream = make_scripted_upstream()
    config = gate_config(
        upstream.port,
        general={"command_timeout": "10s", "data_timeout": "10s"},
        gateway={"workers": WORKERS},
    )
    # Both ports held while serve runs: nothing else can take them before it listens
    # there (see ReservedPort).
    with ReservedPort() as metrics_port, ReservedPort() as console_port:
        config["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port.port}"}
        # The console on: the traffic store runs (in the main process), rows in SQLite.
        config["console"] = {"enabled": True, "listen": f"127.0.0.1:{console_port.port}"}
        with SmtpgateProcess(tmp_path, config) as gate:
            gate.wait_record("metrics_listening")
            yield gate, upstream, loop.run(make_load())


def worker_of(record: Record) -> int:
    """The pid of the worker that served a session record (its id is ``<pid hex>.<n>``)."""
    return int(str(record["session"]).split(".")[0], 16)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def scrape(gate: SmtpgateProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"http://{gate.config['metrics']['listen']}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_both_workers_serve_and_the_main_process_counts_each_session_once(
    loop: LoopThread, started: Started
) -> None:
    gate, upstream, load = started
    assert gate.proc is not None
    main = gate.proc.pid
    start_load(loop, gate, load).result(120)

    # Two workers, children of the main process, which the pid file names.
    workers = gate.serving_pids()
    assert len(workers) == WORKERS and main not in workers
    assert [parent_of(pid) for pid in workers] == [main] * WORKERS
    assert json.loads((gate.state_dir / "smtpgate.pid").read_text())["pid"] == main
    # A worker's records reach the log just after the replies they go with: the last
    # sessions' may still be on their way when the load's clients are done.
    sent = CLIENTS * SESSIONS * MESSAGES
    gate.wait_record("transaction", count=sent)
    gate.wait_record("session_end", count=CLIENTS * SESSIONS)
    # The kernel spread the sessions over both.
    starts = gate.records("session_start")
    by_worker = Counter(worker_of(r) for r in starts)
    assert set(by_worker) == set(workers)
    assert min(by_worker.values()) >= len(starts) // 10, by_worker
    # Every message relayed once.
    assert Counter(load.replies.values()) == {"250 2.0.0 Ok queued": sent}
    copies = upstream_copies(upstream)
    assert set(copies) == set(load.replies) and set(copies.values()) == {1}
    # The records a worker's start writes, once for both; each session's once.
    assert len(gate.records("listening")) == 1
    assert len(gate.records("transaction")) == sent
    # The metrics (in the main process) count the sessions of both workers, once.
    samples = scrape(gate)
    delivered = (("outcome", "delivered"), ("policy", "p"))
    assert samples[("smtpgate_transactions_total", delivered)] == sent
    assert samples[("smtpgate_sessions_total", (("policy", "p"),))] == len(starts)
    assert samples[("smtpgate_connections_current", ())] == 0
    # SIGTERM: exit 0 once both workers stopped; one stopping and one stopped record.
    assert gate.stop() == 0, gate.diagnostics()
    assert len(gate.records("stopping")) == 1 and len(gate.records("stopped")) == 1
    assert gate.records("stopping")[0]["workers"] == WORKERS
    # The traffic store (one writer, in the main process): one row per transaction.
    with sqlite3.connect(gate.state_dir / "traffic.sqlite3") as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM traffic").fetchone()
    assert rows == sent


def test_a_worker_killed_under_load_is_replaced_and_no_acknowledged_message_is_lost(
    loop: LoopThread, started: Started
) -> None:
    gate, upstream, load = started
    running = start_load(loop, gate, load)
    wait_accepted(upstream, 40)
    victim, other = gate.serving_pids()
    os.kill(victim, signal.SIGKILL)

    (exited,) = gate.wait_record("worker_exited")
    assert (exited["worker"], exited["pid"], exited["status"]) == (0, victim, "killed by SIGKILL")
    gate.wait_record("worker_started", count=WORKERS + 1)
    replacement, still = gate.serving_pids()
    assert still == other and replacement not in (victim, other)
    running.result(120)

    # Every message a client saw 250 for is upstream, none twice; the sessions the
    # dead worker had were cut (their clients got no 250 for what was not relayed).
    copies = upstream_copies(upstream)
    assert load.acknowledged() <= set(copies)
    assert set(copies.values()) == {1}
    # The other worker served on after the kill (its last records may still be on
    # their way to the log).
    gate.wait_record(
        "session_start", lambda r: r["time"] > exited["time"] and worker_of(r) == other
    )

    # The replacement takes connections too.
    def served_by_replacement() -> bool | None:
        marker = f"after{len(gate.records('session_start'))}"
        loop.run(session(gate.port(), [marker], load))
        return replacement in {worker_of(r) for r in gate.records("session_start")} or None

    wait_until(served_by_replacement, lambda: "the replacement served nobody", timeout=30)
    assert gate.stop() == 0, gate.diagnostics()


def test_a_worker_that_keeps_dying_waits_longer_each_time(started: Started) -> None:
    gate, _, _ = started
    for kills in (1, 2, 3):
        os.kill(gate.serving_pids()[0], signal.SIGKILL)
        gate.wait_record("worker_started", count=WORKERS + kills, timeout=30)
    delays = [r["restart_in"] for r in gate.records("worker_exited")]
    # Each one died within 10 s of its start (the first may have run longer).
    assert delays[1] > 0 and delays[2] == 2 * delays[1], delays
    assert len(set(gate.serving_pids())) == WORKERS


def test_the_connection_limits_are_totals_over_the_workers(
    tmp_path: Path, make_scripted_upstream: MakeRaw
) -> None:
    """Each worker takes its share (docs/proxy.md, Workers and the limits): 2 per client
    over 2 workers is 1 each, so one address never has more than 2 sessions at once,
    however the kernel spreads its connections."""
    upstream = make_scripted_upstream()
    config = gate_config(
        upstream.port, gateway={"workers": WORKERS, "max_connections_per_client": 2}
    )
    with SmtpgateProcess(tmp_path, config) as gate:
        socks = [socket.create_connection(("127.0.0.1", gate.port()), timeout=10) for _ in range(8)]
        try:
            firsts = [sock.recv(200) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
    greeted = [f for f in firsts if f.startswith(b"220 ")]
    refused = b"421 4.7.0 Too many connections from your address, try again later\r\n"
    assert 1 <= len(greeted) <= 2, firsts
    assert firsts.count(refused) == len(firsts) - len(greeted), firsts


@pytest.mark.parametrize("value", ["0", "257", '"all"', "true", "1.5"])
def test_workers_is_a_number_of_processes_or_auto(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[gateway]\nworkers = {value}\n", tmp_path)
    (error,) = caught.value.errors
    assert error[0] == "gateway.workers"
    assert error[1].endswith('is not a number of processes: 1 to 256, or "auto"')


def test_auto_is_one_worker_per_core_this_process_may_use(tmp_path: Path) -> None:
    config = parse_config('[gateway]\nworkers = "auto"\n', tmp_path)
    assert worker_count(config) == len(os.sched_getaffinity(0))
    assert worker_count(parse_config("[gateway]\nworkers = 3\n", tmp_path)) == 3


def test_a_second_serve_cannot_listen_where_the_workers_listen(
    tmp_path: Path, make_scripted_upstream: MakeRaw
) -> None:
    """The workers' sockets share the address with SO_REUSEPORT; another serve's must
    not join them (the main process's held socket does not allow it)."""
    upstream = make_scripted_upstream()
    config = gate_config(upstream.port, gateway={"workers": WORKERS})
    with SmtpgateProcess(tmp_path / "first", config) as first:
        taken = f"127.0.0.1:{first.port()}"
        second_config = gate_config(upstream.port, gateway={"workers": WORKERS})
        second_config["policies"][0]["listen"] = taken
        second = SmtpgateProcess(tmp_path / "second", second_config)
        with pytest.raises(AssertionError, match="exited with 1 before listening"):
            second.start(timeout=30)
        assert f"policies[1].listen: {taken}: address already in use" in second.stderr()
