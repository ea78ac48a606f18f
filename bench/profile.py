"""The flame graph of ``smtpgate serve`` at 1 message per connection (docs/performance.md).

``python -m bench.profile [--seconds 12] [--out docs/profile-1-per-conn.svg]``
starts the receiving server and smtpgate as the benchmark does (``bench/relays.py``:
the same configuration and certificates), sends 10 KB messages, one per
connection, from 20 clients, and records ``smtpgate serve`` with py-spy (a pinned
dev dependency) meanwhile. py-spy reads another process's memory: as root, or
with ``kernel.yama.ptrace_scope = 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .load import run_load
from .relays import certificates, start_sink, start_smtpgate

#: Clients sending at once, as in the benchmark's "1/conn, 20 clients" shape.
CONCURRENCY = 20


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: `make venv` installs it (a dev dependency)")
    return found


async def _load_for(port: int, ca: str, seconds: float) -> int:
    """Send one message per connection until ``seconds`` have passed; the messages sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = await run_load(
            port,
            per_connection=1,
            total=CONCURRENCY * 5,
            concurrency=CONCURRENCY,
            implicit=False,
            ca=ca,
            resuming=False,
            message_size=10 * 1024,
        )
        if result.failures:
            raise RuntimeError(f"smtpgate: {result.failures[:3]}")
        sent += CONCURRENCY * 5
    return sent


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path("docs/profile-1-per-conn.svg"))
    args = parser.parse_args(argv)
    py_spy = _py_spy()
    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-profile-"))
    stops = []
    try:
        store, ca = certificates(tmp)
        sink = start_sink(store, "starttls")
        stops.append(sink.stop)
        gate = start_smtpgate(tmp, ca, sink)
        stops.append(gate.stop)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_load_for(gate.port, str(ca), 1.0))  # warm-up: imports, caches
            record = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(gate.pid),
                    "--rate",
                    str(args.rate),
                    "--nonblocking",
                    "--duration",
                    str(int(args.seconds)),
                    "--format",
                    "flamegraph",
                    "--output",
                    str(args.out),
                ]
            )
            sent = runner.run(_load_for(gate.port, str(ca), args.seconds + 1))
        if record.wait(60) != 0:
            raise SystemExit(f"py-spy failed ({record.returncode})")
        print(f"{args.out}: {sent} messages, 1 per connection, {CONCURRENCY} clients")
    finally:
        for stop in reversed(stops):
            stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
