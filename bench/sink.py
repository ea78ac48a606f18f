"""The benchmark's receiving server: the project's scripted test upstream
(:mod:`tests.peers.scripted_upstream`) in its own process, replies left as scripted
by default, messages counted and not kept.

``python -m bench.sink CERT KEY {starttls,implicit}``; listens on a port the kernel
picks and prints ``ready PORT`` once listening.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys

import uvloop

from tests.peers.scripted_upstream import ScriptedUpstream

#: What a production MTA offers; the proxy adapts what it sends to these.
KEYWORDS = ("PIPELINING", "SIZE 10485760", "8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES")


async def main(cert: str, key: str, mode: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    sink = ScriptedUpstream(
        hostname="sink.bench.test",
        greeting=b"220 sink.bench.test ESMTP\r\n",
        ehlo_keywords=KEYWORDS,
        starttls_context=context if mode == "starttls" else None,
        implicit_tls_context=context if mode == "implicit" else None,
        keep_messages=False,
    )
    port = await sink.start("127.0.0.1", 0)
    print(f"ready {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await sink.stop()


if __name__ == "__main__":
    cert, key, mode = sys.argv[1:4]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(cert, key, mode))
