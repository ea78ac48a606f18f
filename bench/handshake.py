"""CPU of one TLS handshake on each side, by certificate type and with resumption.

``python -m bench.handshake [--count 300]``: both ends in this process over memory
BIOs (no sockets, no event loop), each side's work timed with the thread's CPU
clock, so the figures hold on a busy machine too. The server side is what
smtpgate's client leg pays per connection; the client side, verifying the chain
and host name, what its upstream leg pays per new connection.

- ``ECDSA P-256`` / ``RSA 2048``: the certificate the server presents (the
  proxy's generated ones, signed by its RSA CA);
- ``resumed``: the client offers the session (TLS 1.3 ticket) of its previous
  handshake, as a resuming sender does and smtpgate's upstream leg now does.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
import time
from pathlib import Path

from .relays import certificates


def _pump(source: ssl.MemoryBIO, target: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        target.write(data)


def _step(obj: ssl.SSLObject) -> bool:
    """One ``do_handshake`` attempt; whether the handshake is complete."""
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[float, float, ssl.SSLObject]:
    """One handshake: (server CPU seconds, client CPU seconds, the client's object)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1", session=session)
    server_cpu = client_cpu = 0.0
    client_done = server_done = False
    while not (client_done and server_done):
        t0 = time.thread_time()
        client_done = _step(client) or client_done
        t1 = time.thread_time()
        _pump(c_out, s_in)
        server_done = _step(server) or server_done
        t2 = time.thread_time()
        _pump(s_out, c_in)
        client_cpu += t1 - t0
        server_cpu += t2 - t1
    # The TLS 1.3 ticket comes after the handshake: the client reads it with the first data.
    server.write(b"220 ready\r\n")
    _pump(s_out, c_in)
    client.read(64)
    return server_cpu, client_cpu, client


def run(count: int = 300) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="smtpgate-handshake-") as folder:
        store, ca = certificates(Path(folder))
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(cafile=ca)
        results: dict[str, dict[str, float]] = {}
        for label, pair in zip(("ECDSA P-256", "RSA 2048"), store.server_pairs, strict=True):
            server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_ctx.num_tickets = 1
            server_ctx.load_cert_chain(*pair)
            for resumed in (False, True):
                handshake(server_ctx, client_ctx, None)  # warm-up
                server_total = client_total = 0.0
                session = None
                reused = 0
                for _ in range(count):
                    server_cpu, client_cpu, obj = handshake(
                        server_ctx, client_ctx, session if resumed else None
                    )
                    server_total += server_cpu
                    client_total += client_cpu
                    reused += obj.session_reused
                    session = obj.session
                name = f"{label}{', resumed' if resumed else ''}"
                results[name] = {
                    "server_ms": server_total / count * 1000,
                    "client_ms": client_total / count * 1000,
                    "resumed_share": reused / count,
                }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handshake", description=__doc__)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args(argv)
    results = run(args.count)
    print(f"TLS 1.3 handshakes, {args.count} each, CPU ms per handshake")
    print(f"{'certificate':24} {'server':>8} {'client':>8} {'resumed':>8}")
    for name, r in results.items():
        print(
            f"{name:24} {r['server_ms']:8.3f} {r['client_ms']:8.3f} "
            f"{r['resumed_share'] * 100:7.0f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
