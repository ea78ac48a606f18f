"""CPU per message of this build against another, finely interleaved (docs/performance.md).

``python -m bench.compare /path/to/other/.venv/bin/smtpgate [--rounds 12] [--shape 1x200 10x600]``
starts the receiving server and both builds as the benchmark does
(``bench/relays.py``: the same configuration and certificates, STARTTLS on both
legs, the upstream certificate verified, JSON log on), then in each round sends
each build the same load from 20 clients, in alternating order, and reads each
build's CPU in nanoseconds (``/proc/PID/task/*/schedstat`` of its process tree).
It prints, per shape (messages per connection x messages per round), the median of
the per-round ratios (this build over the other) and the rounds' spread: on a
shared machine one round's ratio moves by 20 % either way, the median of a dozen
much less.

``--syscalls`` also counts each build's system calls per message for one round of
each shape (``strace -c -f``, which slows what it traces: counts only, no CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .load import run_load
from .procs import tree
from .relays import Relay, certificates, start_sink, start_smtpgate

CONCURRENCY = 20


def tree_cpu_ns(root: int) -> int:
    """CPU the process tree's threads have run, nanoseconds (schedstat's first field)."""
    total = 0
    for pid in tree(root):
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def _shape(text: str) -> tuple[int, int]:
    per, _, total = text.partition("x")
    return int(per), int(total)


def _syscalls(pid: int, out: Path) -> subprocess.Popen[bytes]:
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("--syscalls needs strace")
    return subprocess.Popen([strace, "-c", "-f", "-q", "-o", str(out), "-p", str(pid)])


def _per_message(report: Path, messages: int) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in report.read_text().splitlines():
        parts = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1].isidentifier():
            counts[parts[-1]] = int(parts[3]) / messages
    return counts


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("baseline", help="the other build's smtpgate executable")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--shape", nargs="+", default=["1x200", "10x600"])
    parser.add_argument("--syscalls", action="store_true")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-compare-"))
    stops: list[Callable[[], None]] = []
    try:
        store, ca = certificates(tmp)
        sink = start_sink(store, "starttls")
        stops.append(sink.stop)
        new = start_smtpgate(tmp, ca, sink, label="this")
        stops.append(new.stop)
        base = start_smtpgate(tmp, ca, sink, binary=args.baseline, label="baseline")
        stops.append(base.stop)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:

            def load(relay: Relay, per: int, total: int) -> None:
                result = runner.run(
                    run_load(
                        relay.port,
                        per_connection=per,
                        total=total,
                        concurrency=CONCURRENCY,
                        implicit=False,
                        ca=str(ca),
                        resuming=False,
                        message_size=10 * 1024,
                    )
                )
                if result.failures:
                    raise RuntimeError(f"{relay.name}: {result.failures[:3]}")

            for relay in (new, base):  # warm-up: imports, caches, the upstream pool
                load(relay, 1, CONCURRENCY * 2)
            for per, total in map(_shape, args.shape):
                ratios: list[float] = []
                ms: dict[str, list[float]] = {new.name: [], base.name: []}
                for i in range(args.rounds):
                    for relay in (new, base) if i % 2 == 0 else (base, new):
                        before = tree_cpu_ns(relay.pid)
                        load(relay, per, total)
                        ms[relay.name].append((tree_cpu_ns(relay.pid) - before) / total / 1e6)
                    ratios.append(ms[new.name][-1] / ms[base.name][-1])
                ratios.sort()
                quarter = len(ratios) // 4
                print(
                    f"{per}/conn, {total} messages a round, {args.rounds} rounds: "
                    f"x{statistics.median(ratios):.3f} (middle half "
                    f"x{ratios[quarter]:.2f}-{ratios[-quarter - 1]:.2f}); CPU ms/msg "
                    f"{statistics.median(ms[new.name]):.3f} against "
                    f"{statistics.median(ms[base.name]):.3f}",
                    flush=True,
                )
                if args.syscalls:
                    for relay in (new, base):
                        report = tmp / f"strace-{relay.name}-{per}.txt"
                        tracer = _syscalls(relay.pid, report)
                        time.sleep(1.0)  # attached to every thread
                        load(relay, per, total)
                        time.sleep(0.3)
                        tracer.send_signal(signal.SIGINT)
                        tracer.wait()
                        counts = _per_message(report, total)
                        listed = ", ".join(
                            f"{name} {n:.2f}"
                            for name, n in sorted(counts.items(), key=lambda kv: -kv[1])
                            if n >= 0.5
                        )
                        print(f"  {relay.name} system calls per message: {listed}", flush=True)
    finally:
        for stop in reversed(stops):
            stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
