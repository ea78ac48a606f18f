"""Relays side by side, TLS on both legs: smtpgate, Postfix, HAProxy and no relay at all.

Every figure is measured in one run, the contenders interleaved over rounds,
because absolute numbers on a shared 2-core machine mean little; what counts
are the ratios between contenders of the same run (issue 12's targets are
ratios to HAProxy and Postfix).

- ``direct``: the load generator talks to the receiving server itself (STARTTLS);
  its p99 is the latency yardstick.
- ``smtpgate``: STARTTLS client leg, STARTTLS upstream leg, the upstream
  certificate verified, JSON log on.
- ``postfix``: Postfix as a TLS relay (``bench/relays.py``); it queues, so its
  messages per second are end to end (the last message at the receiving server).
- ``haproxy``: TLS terminated and re-originated in TCP mode (implicit TLS both
  legs), no SMTP work.
- ``baseline``: another smtpgate build (``SMTPGATE_BASELINE=/path/to/.venv/bin/smtpgate``),
  to show what a change costs.

Shapes: 1 and 10 messages per connection at 20 and 200 concurrent clients,
20 clients resuming their TLS sessions, and a 10 MB message. CPU is each
relay's whole process tree (``bench/procs.py``), memory its peak PSS during the
run. "load %" is the share of the machine's CPU the load generator and the
receiving server used: near 100 % the run was saturated by them, not the relay.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .load import LoadResult, run_load
from .procs import PeakPss, tree_cpu_seconds
from .relays import Relay, certificates, start_haproxy, start_postfix, start_sink, start_smtpgate

CORES = os.cpu_count() or 1
ROUNDS = 3


@dataclass(frozen=True)
class Shape:
    label: str
    per_connection: int
    concurrency: int
    total: int
    resuming: bool = False
    size: int = 10 * 1024


SHAPES = (
    Shape("1/conn, 20 clients", 1, 20, 400),
    Shape("10/conn, 20 clients", 10, 20, 1000),
    Shape("1/conn, 200 clients", 1, 200, 1000),
    Shape("10/conn, 200 clients", 10, 200, 2000),
    Shape("1/conn, 20 resuming", 1, 20, 400, resuming=True),
    Shape("10 MB, 4 clients", 1, 4, 16, size=10_000_000),
)


@dataclass
class Row:
    relay: str
    shape: Shape
    messages: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    load_cpu: float = 0.0
    pss_kib: int = 0
    handshakes: int = 0
    resumed: int = 0

    @property
    def name(self) -> str:
        return f"{self.relay}, {self.shape.label}"

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.messages * 1000 if self.messages else 0.0

    @property
    def load_share(self) -> float:
        return self.load_cpu / (self.seconds * CORES) if self.seconds else 0.0


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wait_delivered(relay: Relay, target: int, timeout: float = 600) -> None:
    assert relay.delivered is not None
    deadline = time.monotonic() + timeout
    while relay.delivered() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{relay.name}: {relay.delivered()} of {target} delivered")
        time.sleep(0.02)


def _measure(runner: asyncio.Runner, relay: Relay, sink: Relay, shape: Shape, ca: str) -> Row:
    def load(per: int, total: int, concurrency: int) -> Coroutine[Any, Any, LoadResult]:
        return run_load(
            relay.port,
            per_connection=per,
            total=total,
            concurrency=concurrency,
            implicit=relay.implicit,
            ca=ca,
            resuming=shape.resuming,
            message_size=shape.size,
        )

    before = relay.delivered() if relay.delivered else 0
    # Warm-up: first connections pay for imports, caches, leaf issuing, process starts.
    runner.run(load(1, shape.concurrency, shape.concurrency))
    if relay.delivered:
        before += shape.concurrency
        _wait_delivered(relay, before)
    cpu0, sink0, self0 = tree_cpu_seconds(relay.pid), tree_cpu_seconds(sink.pid), _self_cpu()
    started = time.perf_counter()
    with PeakPss(relay.pid) as pss:
        result = runner.run(load(shape.per_connection, shape.total, shape.concurrency))
        if relay.delivered:
            _wait_delivered(relay, before + shape.total)
    seconds = time.perf_counter() - started
    if result.failures:
        raise RuntimeError(f"{relay.name}: {result.failures[:3]}")
    load_cpu = _self_cpu() - self0
    if sink is not relay:
        load_cpu += tree_cpu_seconds(sink.pid) - sink0
    return Row(
        relay.name,
        shape,
        messages=shape.total,
        seconds=seconds,
        latencies=result.latencies,
        cpu=tree_cpu_seconds(relay.pid) - cpu0,
        load_cpu=load_cpu,
        pss_kib=pss.peak,
        handshakes=result.handshakes,
        resumed=result.resumed,
    )


def _merge(into: Row, row: Row) -> None:
    into.messages += row.messages
    into.seconds += row.seconds
    into.latencies.extend(row.latencies)
    into.cpu += row.cpu
    into.load_cpu += row.load_cpu
    into.pss_kib = max(into.pss_kib, row.pss_kib)
    into.handshakes += row.handshakes
    into.resumed += row.resumed


def _scaled(shape: Shape, quick: bool) -> Shape:
    if not quick:
        return shape
    return Shape(
        shape.label,
        shape.per_connection,
        shape.concurrency,
        max(shape.concurrency * shape.per_connection, shape.total // 4),
        shape.resuming,
        shape.size,
    )


def run(quick: bool = False) -> dict[str, object]:
    import uvloop

    rounds = 1 if quick else ROUNDS
    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-bench-"))
    stops: list[object] = []
    rows: dict[str, Row] = {}
    try:
        store, ca = certificates(tmp)
        starttls_sink = start_sink(store, "starttls")
        stops.append(starttls_sink.stop)
        implicit_sink = start_sink(store, "implicit")
        stops.append(implicit_sink.stop)
        contenders: list[tuple[Relay, Relay]] = [(starttls_sink, starttls_sink)]
        gate = start_smtpgate(tmp, ca, starttls_sink)
        stops.append(gate.stop)
        contenders.append((gate, starttls_sink))
        baseline = os.environ.get("SMTPGATE_BASELINE", "")
        if baseline:
            base = start_smtpgate(tmp, ca, starttls_sink, binary=baseline, label="baseline")
            stops.append(base.stop)
            contenders.append((base, starttls_sink))
        postfix = start_postfix(tmp, store, starttls_sink)
        stops.append(postfix.stop)
        contenders.append((postfix, starttls_sink))
        hap = start_haproxy(tmp, store, ca, implicit_sink)
        stops.append(hap.stop)
        contenders.append((hap, implicit_sink))

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            for shape in (_scaled(s, quick) for s in SHAPES):
                for _ in range(rounds):
                    for relay, sink in contenders:
                        row = _measure(runner, relay, sink, shape, str(ca))
                        if row.name in rows:
                            _merge(rows[row.name], row)
                        else:
                            rows[row.name] = row
                print(f"  {shape.label}: done", file=sys.stderr, flush=True)
    finally:
        for stop in reversed(stops):
            stop()  # type: ignore[operator]
        shutil.rmtree(tmp, ignore_errors=True)
    return _report(list(rows.values()))


#: Issue 12's targets: (what, shape, smtpgate's figure over the other's, at most / at least).
TARGETS = (
    ("CPU/msg vs HAProxy", "1/conn, 20 clients", "haproxy", "cpu", 0.9),
    ("CPU/msg vs Postfix", "1/conn, 20 clients", "postfix", "cpu", 0.35),
    ("CPU/msg vs HAProxy", "10/conn, 20 clients", "haproxy", "cpu", 1.2),
    ("CPU/msg vs Postfix", "10/conn, 20 clients", "postfix", "cpu", 0.15),
    ("CPU/msg vs HAProxy, resuming clients", "1/conn, 20 resuming", "haproxy", "cpu", 0.7),
    ("throughput vs HAProxy", "10 MB, 4 clients", "haproxy", "rate", -0.7),
)


def _report(rows: list[Row]) -> dict[str, object]:
    by_name = {row.name: row for row in rows}
    print(f"\nrelays, 10 KB messages unless said, TLS on both legs, {CORES} cores\n")
    head = (
        f"{'run':44} {'msgs':>5} {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU ms/msg':>10} {'PSS MiB':>8} {'load %':>6} {'resumed':>8}"
    )
    print(head)
    for r in rows:
        resumed = f"{r.resumed}/{r.handshakes}" if r.shape.resuming else ""
        print(
            f"{r.name:44} {r.messages:5d} {r.rate:7.1f} {r.pct(0.5):7.2f} {r.pct(0.99):7.2f} "
            f"{r.cpu_ms:10.3f} {r.pss_kib / 1024:8.1f} {r.load_share * 100:6.0f} {resumed:>8}"
        )
    ratios: dict[str, object] = {}
    print("\nissue 12 targets (same run):")
    for what, sh, other, figure, bound in TARGETS:
        ours, theirs = by_name.get(f"smtpgate, {sh}"), by_name.get(f"{other}, {sh}")
        if ours is None or theirs is None:
            continue
        if figure == "cpu":
            ratio = ours.cpu_ms / theirs.cpu_ms
            met = ratio <= bound
            want = f"<= x{bound}"
        else:
            ratio = ours.rate / theirs.rate
            met = ratio >= -bound
            want = f">= x{-bound}"
        ratios[f"{what}, {sh}"] = ratio
        print(f"  {what}, {sh}: x{ratio:.2f} (target {want}) {'met' if met else 'MISSED'}")
    gate, direct = (
        by_name.get("smtpgate, 1/conn, 20 clients"),
        by_name.get("direct starttls, 1/conn, 20 clients"),
    )
    if gate and direct:
        extra = gate.pct(0.99) - direct.pct(0.99)
        ratios["p99 over direct ms, 1/conn, 20 clients"] = extra
        print(
            f"  p99 over direct, 1/conn, 20 clients: +{extra:.2f} ms (target <= 5 ms) "
            f"{'met' if extra <= 5 else 'MISSED'}"
        )
    for shape in SHAPES:
        now, before = (
            by_name.get(f"smtpgate, {shape.label}"),
            by_name.get(f"baseline, {shape.label}"),
        )
        if now and before and before.cpu_ms:
            ratios[f"smtpgate vs baseline, {shape.label}"] = now.cpu_ms / before.cpu_ms
            ratio = now.cpu_ms / before.cpu_ms
            print(f"  CPU/msg vs SMTPGATE_BASELINE, {shape.label}: x{ratio:.3f}")
    return {
        "results": {
            r.name: {
                "msg_per_s": r.rate,
                "p50_ms": r.pct(0.5),
                "p99_ms": r.pct(0.99),
                "cpu_ms_per_msg": r.cpu_ms,
                "pss_mib": r.pss_kib / 1024,
                "load_share": r.load_share,
            }
            for r in rows
        },
        "ratios": ratios,
    }


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
