"""DATA codec throughput: DataDecoder (unstuffing) and DataEncoder (stuffing).

A 10 MB message of short lines (~70 characters, ~5% starting with a dot) and
one of long lines (~990 characters), each measured beside a naive baseline in
the same run: one ``bytes.replace`` over the whole message, which is neither
streaming nor checking anything (end of data, bare CR/LF, line length, size).
Best of 5; MB = 10**6 bytes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from smtpgate.smtp import DataDecoder, DataEncoder

SIZE = 10_000_000
PIECE = 64 * 1024
RUNS = 5
SHAPES = {"short lines (~70)": 70, "long lines (~990)": 990}


def make_body(line_length: int, size: int = SIZE, seed: int = 5321) -> bytes:
    """Canonical CRLF content: lines around ``line_length`` characters, ~5% starting with '.'."""
    rng = random.Random(seed)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,;:-"
    pool = [bytes(rng.choices(alphabet, k=line_length + 40)) for _ in range(64)]
    lines, total = [], 0
    while total < size:
        # At most 997 + CRLF: a stuffed dot makes it 1000 on the wire, RFC 5321's limit.
        jitter = min(line_length // 5, 997 - line_length)
        length = max(1, line_length + rng.randint(-jitter, jitter))
        line = pool[rng.randrange(64)][:length]
        if rng.random() < 0.05:
            line = b"." + line[1:]
        lines.append(line + b"\r\n")
        total += len(lines[-1])
    return b"".join(lines)[:size].rsplit(b"\r\n", 1)[0] + b"\r\n"


def stuff(body: bytes) -> bytes:
    wire = body.replace(b"\r\n.", b"\r\n..")
    return (b"." + wire if wire[:1] == b"." else wire) + b".\r\n"


def best(fn: Callable[..., object], *args: object, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def decode(wire: bytes) -> int:
    decoder = DataDecoder(max_size=2 * SIZE, max_line_length=1000, bare_newline="reject")
    size = 0
    view = memoryview(wire)
    for start in range(0, len(wire), PIECE):
        chunks, done, _ = decoder.feed(bytes(view[start : start + PIECE]))
        for chunk in chunks:
            size += len(chunk)
        if done:
            break
    assert done and decoder.violation is None
    return size


def encode(body: bytes) -> int:
    encoder = DataEncoder()
    size = 0
    view = memoryview(body)
    for start in range(0, len(body), PIECE):
        for part in encoder.encode(view[start : start + PIECE]):
            size += len(part)
    return size + len(encoder.end())


def run() -> dict[str, Any]:
    rows = []
    for shape, line_length in SHAPES.items():
        body = make_body(line_length)
        wire = stuff(body)
        # Correctness first: the codec must agree with the naive transforms.
        assert decode(wire) == len(body) and encode(body) == len(wire)
        # Bytes fed to the decoder are copied out of the view per piece, as a socket would
        # hand them over; the baselines get the whole message at once.
        timings = {
            "unstuff": (best(decode, wire), best(wire.replace, b"\r\n..", b"\r\n.")),
            "stuff": (best(encode, body), best(body.replace, b"\r\n.", b"\r\n..")),
        }
        for operation, (ours, baseline) in timings.items():
            rows.append(
                {
                    "message": shape,
                    "operation": operation,
                    "bytes": len(body),
                    "mb_s": len(body) / ours / 1e6,
                    "baseline_mb_s": len(body) / baseline / 1e6,
                    "ratio": baseline / ours,
                }
            )
    return {"piece_bytes": PIECE, "runs": RUNS, "rows": rows}


def report(result: dict[str, Any]) -> str:
    head = f"{'message':<20} {'operation':<9} {'codec MB/s':>11} {'replace MB/s':>13} {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for row in result["rows"]:
        lines.append(
            f"{row['message']:<20} {row['operation']:<9} {row['mb_s']:>11.0f} "
            f"{row['baseline_mb_s']:>13.0f} {row['ratio']:>6.2f}"
        )
    lines.append(
        f"codec: DataDecoder fed {result['piece_bytes'] // 1024} KB pieces / DataEncoder; "
        f"baseline: one bytes.replace over the whole message; best of {result['runs']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
