"""A MailSink in its own process, as the benchmark's receiving server.

``python -m bench.sink PORT CERT KEY {starttls,implicit}``; prints ``ready`` when listening.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys

import uvloop

from smtpgate.proxy.mailsink import MailSink


async def main(port: int, cert: str, key: str, mode: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    sink = MailSink(
        "sink.bench.test",
        starttls_context=context if mode == "starttls" else None,
        implicit_tls_context=context if mode == "implicit" else None,
        keep_messages=False,
    )
    await sink.start("127.0.0.1", port)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await sink.stop()


if __name__ == "__main__":
    port, cert, key, mode = sys.argv[1:5]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(int(port), cert, key, mode))
