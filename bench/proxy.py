"""Messages per second, latency and proxy CPU per message, TLS on both legs.

Every figure is paired with a baseline from the same run, because absolute
numbers on a shared 2-core machine mean little:

- ``direct``: the load generator talks to the receiving server itself
  (STARTTLS, or implicit TLS); the receiving server's CPU per message is the
  yardstick for "what one SMTP+TLS server side costs". The receiving server is
  the project's scripted test upstream (``bench/sink.py``), the load generator
  the sending peer of the tests (``tests/peers/mailsender.py``).
- ``smtpgate``: the same load through the proxy (client leg and upstream leg
  encrypted, the upstream certificate verified against the proxy CA).
- ``haproxy``: HAProxy in TCP mode terminating and re-originating TLS (implicit
  TLS on both legs: HAProxy cannot speak STARTTLS), the reference for the CPU
  an in-line TLS relay written in C spends per message.

CPU is read from /proc/<pid>/stat (user + system) of the proxy process only.
Latency: connect to the final ``250`` for one message per connection; that
time divided by ten for ten per connection.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from smtpgate.reserved_port import ReservedPort
from smtpgate.tls.certificates import CertificateStore
from tests.peers.mailsender import OutgoingMessage, send_messages

HOST = "127.0.0.1"
MESSAGE_SIZE = 10 * 1024
CONCURRENCY = 8
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _body(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    head = b"From: bench@sender.bench\r\nTo: rcpt@rcpt.bench\r\nSubject: bench\r\n\r\n"
    return head + line * ((size - len(head)) // len(line))


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    latencies: list[float]
    cpu: float | None  # proxy CPU seconds, None for direct

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def cpu_ms(self) -> float | None:
        return None if self.cpu is None else self.cpu / self.messages * 1000


class Process:
    """A benchmark participant; ``output``: a file for its stdout and stderr."""

    def __init__(
        self,
        args: list[str],
        ready: str | None = None,
        output: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        #: The line that said the process is ready (``ready`` given), else "".
        self.ready_line = ""
        sink = open(output, "w") if output else subprocess.PIPE  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=sink, stderr=sink if output else subprocess.PIPE, text=True, cwd=cwd
        )
        if ready is not None:
            assert self.proc.stdout is not None and self.proc.stderr is not None
            line = self.ready_line = self.proc.stdout.readline()
            if ready not in line:
                self.stop()
                raise RuntimeError(f"{args[0]} did not start: {self.proc.stderr.read()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


async def _load(
    port: int, *, per_connection: int, total: int, implicit: bool, client_ctx: object
) -> tuple[float, list[float]]:
    import ssl

    assert isinstance(client_ctx, ssl.SSLContext)
    body = _body(MESSAGE_SIZE)
    message = OutgoingMessage("bench@sender.bench", ["rcpt@rcpt.bench"], body)
    connections = total // per_connection
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(connections):
        queue.put_nowait(i)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            results = await send_messages(
                HOST,
                port,
                messages=[message] * per_connection,
                starttls=None if implicit else client_ctx,
                require_starttls=not implicit,
                implicit_tls=client_ctx if implicit else None,
            )
            elapsed = time.perf_counter() - started
            if not all(r.end is not None and r.end.code == 250 for r in results):
                raise RuntimeError(f"delivery failed: {results[-1]}")
            latencies.extend([elapsed / per_connection] * per_connection)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started, latencies


def _measure(
    name: str,
    port: int,
    pid: int | None,
    *,
    per_connection: int,
    total: int,
    implicit: bool,
    client_ctx: object,
) -> Result:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        # Warm-up: first connections pay for imports, caches and leaf issuing.
        runner.run(
            _load(
                port, per_connection=1, total=CONCURRENCY, implicit=implicit, client_ctx=client_ctx
            )
        )
        cpu0 = _cpu_seconds(pid) if pid else 0.0
        seconds, latencies = runner.run(
            _load(
                port,
                per_connection=per_connection,
                total=total,
                implicit=implicit,
                client_ctx=client_ctx,
            )
        )
        cpu = _cpu_seconds(pid) - cpu0 if pid else None
    return Result(name, total, seconds, latencies, cpu)


SMTPGATE_CONFIG = """\
[gateway]
hostname = "proxy.bench.test"
state_dir = "{state}"
[logging]
format = "json"
file = "{log}"
[[policies]]
name = "bench"
listen = "127.0.0.1:{listen}"
implicit_tls = {implicit}
upstream = "127.0.0.1:{upstream}"
upstream_implicit_tls = {implicit}
proxy_action = "Bench"
[[tls_profiles]]
name = "Bench.Verify"
ca_file = "{ca}"
tls_compliant_only = true
[[proxy_actions]]
name = "Bench"
[proxy_actions.starttls]
tls_profile = "Bench.Verify"
[[proxy_actions.starttls.rules]]
recipient_encryption = "required"
"""

HAPROXY_CONFIG = """\
global
    maxconn 1000
    nbthread 1
defaults
    mode tcp
    # One log line per connection, as smtpgate writes its records: like for like.
    log stdout format raw local0
    option tcplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtps
    bind 127.0.0.1:{listen} ssl crt {pem}
    default_backend upstream
backend upstream
    server sink 127.0.0.1:{upstream} ssl verify required ca-file {ca} sni str(127.0.0.1)
"""


ROUNDS = 3


@dataclass(frozen=True)
class Case:
    """One row of the table: a target (process and port) and a load shape."""

    name: str
    port: int
    pid: int
    per_connection: int
    total: int
    implicit: bool


def _start_sink(store: CertificateStore, mode: str) -> tuple[Process, int]:
    cert, key = store.leaf_for("127.0.0.1")
    sink = Process(
        [sys.executable, "-m", "bench.sink", str(cert), str(key), mode],
        ready="ready",
        cwd=Path(__file__).parent.parent,
    )
    return sink, int(sink.ready_line.split()[1])  # "ready PORT": the port it bound


#: Another build's ``smtpgate`` (e.g. ``/path/to/old-checkout/.venv/bin/smtpgate``) to
#: measure beside this one, interleaved in the same run: how a change is shown to cost
#: nothing (rows ``baseline ...``).
BASELINE_BINARY = os.environ.get("SMTPGATE_BASELINE", "")


def _start_smtpgate(
    tmp: Path,
    store: CertificateStore,
    ca: Path,
    mode: str,
    upstream: int,
    binary: str = str(Path(sys.executable).with_name("smtpgate")),
    label: str = "smtpgate",
):
    reserved = ReservedPort(HOST)  # held until smtpgate listens on it
    listen = reserved.port
    config = tmp / f"{label}-{mode}.toml"
    config.write_text(
        SMTPGATE_CONFIG.format(
            state=tmp / "state",  # the CA the load generator trusts, shared
            log=tmp / f"{label}-{mode}.log",
            listen=listen,
            implicit=str(mode == "implicit").lower(),
            upstream=upstream,
            ca=ca,
        )
    )
    with reserved:
        gate = Process([binary, "serve", "--config", str(config)])
        _wait_port(listen)
    return gate, listen


def _start_haproxy(tmp: Path, store: CertificateStore, ca: Path, upstream: int):
    pem = tmp / "haproxy.pem"
    pem.write_bytes(
        Path(store.server_cert_path).read_bytes() + Path(store.server_key_path).read_bytes()
    )
    with ReservedPort(HOST) as reserved:  # held until HAProxy listens on it
        port = reserved.port
        config = tmp / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(listen=port, pem=pem, upstream=upstream, ca=ca))
        hap = Process(
            [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(config)],
            output=tmp / "haproxy.log",
        )
        _wait_port(port)
    return hap, port


def _run_cases(cases: list[Case], rounds: int, client_ctx: object) -> list[Result]:
    """Every case once per round, interleaved, so machine noise hits all of them alike."""
    merged: dict[str, Result] = {}
    for _ in range(rounds):
        for case in cases:
            r = _measure(
                case.name,
                case.port,
                case.pid,
                per_connection=case.per_connection,
                total=case.total,
                implicit=case.implicit,
                client_ctx=client_ctx,
            )
            if case.name not in merged:
                merged[case.name] = r
            else:
                m = merged[case.name]
                m.messages += r.messages
                m.seconds += r.seconds
                m.latencies.extend(r.latencies)
                m.cpu = (m.cpu or 0.0) + (r.cpu or 0.0)
    return [merged[case.name] for case in cases]


def run(quick: bool = False) -> dict[str, object]:
    import ssl

    single = 100 if quick else 300
    ten = 200 if quick else 600
    rounds = 1 if quick else ROUNDS
    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-bench-"))
    processes: list[Process] = []
    results: list[Result] = []
    try:
        store = CertificateStore.load(
            tmp / "state",
            server_cert=None,
            server_key=None,
            ca_cert=None,
            ca_key=None,
            sni=[],
            hostname="proxy.bench.test",
        )
        ca = tmp / "ca.pem"
        ca.write_bytes(store.ca_pem())
        client_ctx = ssl.create_default_context(cafile=str(ca))
        client_ctx.check_hostname = False  # the load generator trusts the proxy CA, not names

        # STARTTLS on both legs: the product's main case.
        sink, sink_port = _start_sink(store, "starttls")
        processes.append(sink)
        gate, gate_port = _start_smtpgate(tmp, store, ca, "starttls", sink_port)
        processes.append(gate)
        cases = [
            Case("direct starttls, 1/conn", sink_port, sink.pid, 1, single, False),
            Case("smtpgate starttls, 1/conn", gate_port, gate.pid, 1, single, False),
            Case("direct starttls, 10/conn", sink_port, sink.pid, 10, ten, False),
            Case("smtpgate starttls, 10/conn", gate_port, gate.pid, 10, ten, False),
        ]
        if BASELINE_BINARY:
            base, base_port = _start_smtpgate(
                tmp, store, ca, "starttls", sink_port, BASELINE_BINARY, "baseline"
            )
            processes.append(base)
            cases[2:2] = [Case("baseline starttls, 1/conn", base_port, base.pid, 1, single, False)]
            cases += [Case("baseline starttls, 10/conn", base_port, base.pid, 10, ten, False)]
        results += _run_cases(cases, rounds, client_ctx)
        gate.stop()
        if BASELINE_BINARY:
            base.stop()
        sink.stop()

        # Implicit TLS on both legs, where HAProxy can stand in the same place.
        sink, sink_port = _start_sink(store, "implicit")
        processes.append(sink)
        gate, gate_port = _start_smtpgate(tmp, store, ca, "implicit", sink_port)
        processes.append(gate)
        hap, hap_port = _start_haproxy(tmp, store, ca, sink_port)
        processes.append(hap)
        cases = [
            Case("direct implicit, 1/conn", sink_port, sink.pid, 1, single, True),
            Case("smtpgate implicit, 1/conn", gate_port, gate.pid, 1, single, True),
            Case("haproxy implicit, 1/conn", hap_port, hap.pid, 1, single, True),
        ]
        if BASELINE_BINARY:
            base, base_port = _start_smtpgate(
                tmp, store, ca, "implicit", sink_port, BASELINE_BINARY, "baseline"
            )
            processes.append(base)
            cases.append(Case("baseline implicit, 1/conn", base_port, base.pid, 1, single, True))
        results += _run_cases(cases, rounds, client_ctx)
    finally:
        for process in processes:
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return _report(results)


def _report(results: list[Result]) -> dict[str, object]:
    by_name = {r.name: r for r in results}
    print(
        f"\nproxy benchmark: {MESSAGE_SIZE // 1024} KB messages, {CONCURRENCY} concurrent "
        "connections, TLS on both legs\n"
    )
    print(f"{'run':28} {'msgs':>5} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/msg':>11}")
    for r in results:
        cpu = f"{r.cpu_ms:.2f}" if r.cpu_ms is not None else "-"
        print(
            f"{r.name:28} {r.messages:5d} {r.rate:8.1f} {r.pct(0.5):8.2f} {r.pct(0.99):8.2f} "
            f"{cpu:>11}"
        )
    ratios: dict[str, object] = {}
    print("\nratios (same run):")
    for case, base in (
        ("smtpgate starttls, 1/conn", "direct starttls, 1/conn"),
        ("smtpgate starttls, 10/conn", "direct starttls, 10/conn"),
        ("smtpgate implicit, 1/conn", "direct implicit, 1/conn"),
        ("haproxy implicit, 1/conn", "direct implicit, 1/conn"),
    ):
        r, b = by_name.get(case), by_name.get(base)
        if r is None or b is None or r.cpu_ms is None or b.cpu_ms is None:
            continue
        entry = {
            "throughput": r.rate / b.rate,
            "p50": r.pct(0.5) / b.pct(0.5),
            "p99": r.pct(0.99) / b.pct(0.99),
            "cpu_vs_receiving_server": r.cpu_ms / b.cpu_ms,
        }
        ratios[case] = entry
        print(
            f"  {case:28} throughput x{entry['throughput']:.2f}, p50 x{entry['p50']:.2f}, "
            f"p99 x{entry['p99']:.2f}, CPU/msg x{entry['cpu_vs_receiving_server']:.2f} "
            f"of the receiving server's"
        )
    for shape in ("starttls, 1/conn", "starttls, 10/conn", "implicit, 1/conn"):
        now, before = by_name.get(f"smtpgate {shape}"), by_name.get(f"baseline {shape}")
        if now and before and now.cpu_ms and before.cpu_ms:
            ratios[f"smtpgate_vs_baseline {shape}"] = now.cpu_ms / before.cpu_ms
            print(
                f"  smtpgate CPU/msg vs SMTPGATE_BASELINE, {shape}: "
                f"x{now.cpu_ms / before.cpu_ms:.3f}"
            )
    gate, hap = by_name.get("smtpgate implicit, 1/conn"), by_name.get("haproxy implicit, 1/conn")
    if gate and hap and gate.cpu_ms and hap.cpu_ms:
        ratios["smtpgate_vs_haproxy_cpu"] = gate.cpu_ms / hap.cpu_ms
        print(
            f"  smtpgate CPU/msg vs HAProxy (implicit TLS both legs): "
            f"x{gate.cpu_ms / hap.cpu_ms:.2f}"
        )
    return {
        "results": {
            r.name: {
                "msg_per_s": r.rate,
                "p50_ms": r.pct(0.5),
                "p99_ms": r.pct(0.99),
                "cpu_ms_per_msg": r.cpu_ms,
            }
            for r in results
        },
        "ratios": ratios,
    }


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
