"""``smtpgate demo``: the product on one machine, in under a minute.

Starts a local receiving server (with STARTTLS, certificate signed by the
proxy's own CA), the proxy with three example rules in front of it and its
web console, sends sample mail through each rule with Python's smtplib (a
real SMTP client), and prints what the log recorded. Then it keeps the proxy
and the console running until Ctrl-C, printing the console's address and
its one-time password, and each new transaction as the log records it
(``--exit`` stops after the samples instead, as the tests want). Everything
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import io
import json
import smtplib
import ssl
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from smtpgate.config.loader import load_config
from smtpgate.console.server import Console
from smtpgate.logs import EventLog, render_text
from smtpgate.proxy.gateway import Gateway
from smtpgate.proxy.stream import Stream
from smtpgate.reserved_port import ReservedPort
from smtpgate.smtp import (
    NEED_DATA,
    PAUSED,
    BodyEnd,
    BodyInvalid,
    ConnectionClosed,
    DataRequested,
    Hello,
    MailFrom,
    RcptTo,
    Reset,
    ServerConnection,
    ServerLimits,
    StartTLSRequested,
)
from smtpgate.tls import describe_tls
from smtpgate.tls.certificates import CertificateStore
from smtpgate.traffic.store import TrafficStore, open_store

HOST = "127.0.0.1"
IDLE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    sender: str
    recipients: list[str]
    tls: str  # "TLSv1.3 TLS_AES_256_GCM_SHA384", or "clear"


class ReceivingServer:
    """The demo's upstream: accepts every message (STARTTLS offered) and keeps its envelope.

    Built on the same SMTP core as the proxy; one task per connection feeds each read
    to the core and writes the queued replies in one call. Bodies are not kept.
    """

    def __init__(self, hostname: str, starttls_context: ssl.SSLContext) -> None:
        self.hostname = hostname
        self.starttls_context = starttls_context
        self.limits = ServerLimits()
        self.messages: list[ReceivedMessage] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._streams: set[Stream] = set()

    async def start(self) -> int:
        """Listen on a port the kernel picks; returns it."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Stream(self._session), HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = []
        for stream in list(self._streams):
            stream.abort()
            if stream.task is not None:
                stream.task.cancel()
                tasks.append(stream.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _session(self, stream: Stream) -> None:
        self._streams.add(stream)
        conn = ServerConnection(self.hostname, self.limits)
        sender, recipients = "", list[str]()
        conn.greet()
        stream.write(conn.data_to_send())
        try:
            while data := await stream.read(timeout=IDLE_SECONDS):
                conn.receive_data(data)
                closing = switch = False
                while (event := conn.next_event()) is not NEED_DATA:
                    if event is PAUSED:
                        switch = True
                        break
                    if isinstance(event, BodyEnd):
                        version, cipher = describe_tls(stream.ssl_object)
                        tls = f"{version} {cipher}" if version != "none" else "clear"
                        self.messages.append(ReceivedMessage(sender, recipients, tls))
                        conn.reply(250, "2.0.0 Ok: queued")
                        recipients = []
                    elif isinstance(event, RcptTo):
                        recipients.append(str(event.recipient))
                        conn.reply(250, "2.1.5 Ok")
                    elif isinstance(event, MailFrom):
                        sender, recipients = str(event.sender), []
                        conn.reply(250, "2.1.0 Ok")
                    elif isinstance(event, DataRequested):
                        conn.accept_data()
                    elif isinstance(event, Hello):
                        recipients = []
                        if event.esmtp:
                            starttls = [] if conn.tls else ["STARTTLS"]
                            conn.reply_ehlo(["PIPELINING", "8BITMIME", *starttls])
                        else:
                            conn.reply(250, self.hostname)
                    elif isinstance(event, StartTLSRequested):
                        conn.accept_starttls()
                    elif isinstance(event, BodyInvalid | Reset):
                        recipients = []
                    elif isinstance(event, ConnectionClosed):
                        closing = True
                stream.write(conn.data_to_send())
                if closing:
                    return
                if switch:
                    await stream.start_tls(self.starttls_context, server_side=True)
                    conn.tls_established()
                await stream.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return
        finally:
            stream.close()
            self._streams.discard(stream)


CONFIG = """\
[gateway]
hostname = "mx.demo.test"
state_dir = "state"

[logging]
format = "json"

# The web console: log in as admin with the password the demo prints.
[console]
enabled = true
listen = "127.0.0.1:{console}"

[[policies]]
name = "inbound"
listen = "127.0.0.1:{listen}"
upstream = "localhost:{upstream}"
proxy_action = "Inbound.Demo"

[[tls_profiles]]
name = "Demo.Strict"
min_version = "1.2"
pfs = "required"
validate_certificates = true
ca_file = "state/tls/ca.pem"

[[proxy_actions]]
name = "Inbound.Demo"
[proxy_actions.starttls]
tls_profile = "Demo.Strict"

# 1. Mail from our partner must be encrypted on both legs.
[[proxy_actions.starttls.rules]]
sender = "partner.example"
sender_encryption = "required"
recipient_encryption = "required"

# 2. The old ticketing system cannot do TLS: deliver to it in clear.
[[proxy_actions.starttls.rules]]
recipient = "*.legacy.example"
recipient_encryption = "none"

# Everything else: the default (sender optional, recipient preferred).
"""


CONFIG_HEADING = "The proxy's configuration, a complete file (`smtpgate check` accepts it):"
CONFIG_FILE_LABEL = "configuration file:"
CONSOLE_LABEL = "The web console:"
RUNNING_LABEL = "Running until Ctrl-C"
#: The log records the demo shows: decisions and transactions.
SHOWN_EVENTS = ("transaction", "rcpt_rejected", "mail_rejected")


@dataclass(frozen=True)
class Sample:
    title: str
    sender: str
    recipient: str
    starttls: bool


SAMPLES = (
    Sample(
        "partner mail sent in clear: refused, must use TLS",
        "alice@partner.example",
        "bob@corp.example",
        starttls=False,
    ),
    Sample(
        "the same mail over STARTTLS: re-encrypted to the upstream",
        "alice@partner.example",
        "bob@corp.example",
        starttls=True,
    ),
    Sample(
        "mail for the legacy system: delivered in clear",
        "alerts@monitoring.example",
        "tickets@helpdesk.legacy.example",
        starttls=False,
    ),
    Sample(
        "anyone else, in clear: upstream TLS used since it is offered",
        "newsletter@vendor.example",
        "carol@corp.example",
        starttls=False,
    ),
)


def _send(port: int, sample: Sample) -> str:
    body = (
        f"From: {sample.sender}\r\nTo: {sample.recipient}\r\n"
        f"Subject: smtpgate demo: {sample.title}\r\n\r\nHello from the demo.\r\n"
    )
    with smtplib.SMTP(HOST, port, timeout=10) as client:
        client.ehlo("client.demo.test")
        if sample.starttls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the demo client does not check the proxy
            client.starttls(context=context)
            client.ehlo("client.demo.test")
        try:
            client.sendmail(sample.sender, [sample.recipient], body.encode())
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[sample.recipient]
            return f"{code} {text.decode()}"
        except smtplib.SMTPException as exc:
            return f"error: {exc}"
    return "250 accepted"


async def run_demo(keep_state: Path | None = None, *, stay: bool = True) -> int:
    """The demo; with ``stay`` the proxy and the console run on until Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="smtpgate-demo-") as tmp:
        base = keep_state or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        return await _run(base, keep_state is not None, stay=stay)


async def _run(base: Path, kept: bool, *, stay: bool) -> int:
    config_path = base / "smtpgate.toml"
    # The proxy CA must exist before the profile that trusts it is loaded.
    store = CertificateStore.load(
        base / "state",
        server_cert=None,
        server_key=None,
        ca_cert=None,
        ca_key=None,
        sni=[],
        hostname="mx.demo.test",
    )
    cert, key = store.leaf_for("localhost")
    sink_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sink_tls.load_cert_chain(cert, key)
    sink = ReceivingServer("upstream.demo.test", sink_tls)
    upstream_port = await sink.start()
    log_buffer = io.StringIO()
    log = EventLog(log_buffer, fmt="json")
    first_admin: list[tuple[str, str]] = []
    # Both ports are held until the proxy and the console listen on them.
    with ReservedPort(HOST) as reserved, ReservedPort(HOST) as console_port:
        listen = reserved.port
        config_path.write_text(
            CONFIG.format(listen=listen, upstream=upstream_port, console=console_port.port)
        )
        config = load_config(config_path)
        gateway = Gateway(config, log, reload_config=lambda: load_config(config_path))
        # The Traffic and Coverage pages read what the store writes: every sample too.
        traffic = open_store(config, log)
        assert isinstance(traffic, TrafficStore)  # the demo's console is enabled
        traffic.start()
        await gateway.start()
        console = Console(gateway, config_path, log, traffic=traffic.database)
        await console.start(lambda name, password: first_admin.append((name, password)))
    gateway.install_signal_handlers()  # SIGINT (Ctrl-C) and SIGTERM stop, SIGHUP reloads
    try:
        delivered = await _samples(config_path, kept, listen, upstream_port, log_buffer, sink)
        if stay:
            _announce_console(console.port, first_admin, listen, base)
            log.observe(_show_live)
            await gateway.serve_until_stopped()
    finally:
        await gateway.stop()
        await console.stop()
        await traffic.stop()
        await sink.stop()
    return 0 if delivered else 1


async def _samples(
    config_path: Path,
    kept: bool,
    listen: int,
    upstream_port: int,
    log_buffer: io.StringIO,
    sink: ReceivingServer,
) -> bool:
    """Send the sample mail, print what happened; True if the upstream got what it should."""
    print(f"smtpgate demo: proxy on {HOST}:{listen} -> upstream on {HOST}:{upstream_port}")
    print(f"\n{CONFIG_HEADING}\n")
    print(textwrap.indent(config_path.read_text().strip(), "    "))
    if not kept:
        print(
            f"\n{CONFIG_FILE_LABEL} {config_path} (deleted when the demo ends; "
            "`smtpgate demo --keep-state DIR` keeps it and the demo's state in DIR)\n"
        )
    else:
        print(
            f"\n{CONFIG_FILE_LABEL} {config_path} (kept; "
            f"try `smtpgate check --config {config_path}`)\n"
        )
    for number, sample in enumerate(SAMPLES, 1):
        reply = await asyncio.to_thread(_send, listen, sample)
        print(f"{number}. {sample.title}")
        print(
            f"   {sample.sender} -> {sample.recipient}"
            f" ({'STARTTLS' if sample.starttls else 'in clear'}): {reply}"
        )
    print("\nWhat the log recorded (one line per decision and per transaction):\n")
    for line in log_buffer.getvalue().splitlines():
        record = json.loads(line)
        if record["event"] in SHOWN_EVENTS:
            print("  " + render_text(record))
    print(f"\nThe upstream received {len(sink.messages)} message(s):")
    for message in sink.messages:
        print(f"  {message.sender} -> {', '.join(message.recipients)} (in {message.tls})")
    expected = sum(1 for s in SAMPLES if s.starttls or s.sender != "alice@partner.example")
    return len(sink.messages) == expected


def _announce_console(
    port: int, first_admin: list[tuple[str, str]], listen: int, base: Path
) -> None:
    print(f"\n{CONSOLE_LABEL} https://{HOST}:{port}/")
    for name, password in first_admin:
        print(f"  log in as {name} with the password {password} (shown only this once)")
    if not first_admin:
        print(
            "  log in with the password printed when this state was made "
            f"(or set one: `smtpgate admin passwd admin --config {base / 'smtpgate.toml'}`)"
        )
    print(
        "  The browser will warn about the certificate: the demo's own CA issued it\n"
        f"  ({base / 'state' / 'tls' / 'ca.pem'}); accept it for this address.\n"
        f"  Send more mail to {HOST}:{listen} (e.g. `swaks --server {HOST}:{listen} "
        "--to bob@corp.example`)\n  and watch it below, and on the Traffic and Coverage pages."
    )
    print(f"\n{RUNNING_LABEL}; new transactions:\n", flush=True)


def _show_live(record: dict[str, object]) -> None:
    if record["event"] in SHOWN_EVENTS:
        print("  " + render_text(record), flush=True)
