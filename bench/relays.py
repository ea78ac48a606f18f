"""The relays compared, each started in a temporary directory with the same certificates.

- the receiving server (``bench/sink.py``), once with STARTTLS and once with
  implicit TLS;
- smtpgate: STARTTLS client leg, STARTTLS upstream leg with its certificate
  verified against the benchmark CA, JSON log on;
- Postfix as a TLS relay: ``smtpd_tls_security_level = may`` in,
  ``smtp_tls_security_level = encrypt`` out, the connection cache on for the
  receiving server, TLS session caches on both sides (Debian's defaults for a
  relay), the rest as it ships (so ``in_flow_delay`` paces its intake, as in
  production). It queues: a message counts once Postfix's log says ``status=sent``.
- HAProxy in TCP mode terminating and re-originating TLS (implicit TLS on both
  legs: HAProxy cannot speak STARTTLS), one log line per connection; no SMTP
  work at all, the floor for an in-line TLS relay written in C.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smtpgate.reserved_port import ReservedPort
from smtpgate.tls.certificates import CertificateStore
from tests.peers.certs import LeafFiles
from tests.peers.postfix import PostfixInstance

from .procs import Process

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Relay:
    """Something the load generator sends through (or the receiving server itself)."""

    name: str
    port: int
    #: The root of the process tree whose CPU and memory are measured.
    pid: int
    implicit: bool
    stop: Callable[[], None]
    #: Messages that reached the receiving server so far, for a relay that queues
    #: (None: a message is delivered when the client has its 250).
    delivered: Callable[[], int] | None = None


def wait_port(port: int, timeout: float = 15.0, process: Process | None = None) -> None:
    """Until something listens on ``port``; ``process``: the one that should, whose
    exit (a configuration it refuses, a dependency missing) is reported with its words."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.proc.poll() is not None:
            _, err = process.proc.communicate()
            raise RuntimeError(f"exited {process.proc.returncode} before listening: {err}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def certificates(tmp: Path) -> tuple[CertificateStore, Path]:
    """The certificates every relay of a run uses (generated under ``tmp/state``, the
    smtpgate configurations' state_dir), and the CA file the load generator trusts.

    ECDSA P-256, as issue 12 measures: the proxy's generated server certificate
    and leaves (``server_cert_path``, ``leaf_for``) are ECDSA, under its RSA CA;
    smtpgate also holds the RSA ones, but the load generator, like any client
    that offers ECDSA signatures, is presented the ECDSA one, as by HAProxy,
    Postfix and the receiving server, which get only that."""
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
    return store, ca


def start_sink(store: CertificateStore, mode: str) -> Relay:
    cert, key = store.leaf_for("127.0.0.1")
    sink = Process(
        [sys.executable, "-m", "bench.sink", str(cert), str(key), mode],
        ready="ready",
        cwd=REPO,
    )
    port = int(sink.ready_line.split()[1])  # "ready PORT": the port it bound
    return Relay(f"direct {mode}", port, sink.pid, mode == "implicit", sink.stop)


SMTPGATE_CONFIG = """\
[gateway]
hostname = "proxy.bench.test"
state_dir = "{state}"
{limits}[logging]
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


#: Every load comes from one address, 10,000 idle sessions at most (bench/idle.py):
#: the per-client and total connection limits must not be what the benchmark measures.
BENCH_LIMITS = "max_connections = 20000\nmax_connections_per_client = 20000\n"


def start_smtpgate(
    tmp: Path,
    ca: Path,
    sink: Relay,
    *,
    binary: str = str(Path(sys.executable).with_name("smtpgate")),
    label: str = "smtpgate",
) -> Relay:
    mode = "implicit" if sink.implicit else "starttls"
    reserved = ReservedPort(HOST)  # held until smtpgate listens on it
    listen = reserved.port
    config = tmp / f"{label}-{mode}.toml"
    for limits in (BENCH_LIMITS, ""):
        config.write_text(
            SMTPGATE_CONFIG.format(
                state=tmp / "state",  # the CA the load generator trusts, shared
                log=tmp / f"{label}-{mode}.log",
                listen=listen,
                implicit=str(sink.implicit).lower(),
                upstream=sink.port,
                ca=ca,
                limits=limits,
            )
        )
        check = subprocess.run(
            [binary, "check", "--config", str(config)], capture_output=True, check=False
        )
        if check.returncode == 0 or b"max_connections" not in check.stdout + check.stderr:
            break  # a baseline build older than the limits: without them
    with reserved:
        gate = Process([binary, "serve", "--config", str(config)])
        wait_port(listen, process=gate)
    return Relay(label, listen, gate.pid, sink.implicit, gate.stop)


HAPROXY_CONFIG = """\
global
    maxconn 5000
defaults
    mode tcp
    # One log line per connection, as smtpgate writes its records: like for like.
    log stdout format raw local0
    option tcplog
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend smtps
    bind 127.0.0.1:{listen} ssl crt {pem}
    default_backend upstream
backend upstream
    server sink 127.0.0.1:{upstream} ssl verify required ca-file {ca} sni str(127.0.0.1)
"""


def start_haproxy(tmp: Path, store: CertificateStore, ca: Path, sink: Relay) -> Relay:
    assert sink.implicit, "HAProxy relays implicit TLS only"
    pem = tmp / "haproxy.pem"
    pem.write_bytes(
        Path(store.server_cert_path).read_bytes() + Path(store.server_key_path).read_bytes()
    )
    with ReservedPort(HOST) as reserved:  # held until HAProxy listens on it
        port = reserved.port
        config = tmp / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(listen=port, pem=pem, upstream=sink.port, ca=ca))
        hap = Process(
            [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(config)],
            output=tmp / "haproxy.log",
        )
        wait_port(port)
    return Relay("haproxy", port, hap.pid, True, hap.stop)


def start_postfix(tmp: Path, store: CertificateStore, sink: Relay) -> Relay:
    assert not sink.implicit, "Postfix relays to a STARTTLS server here"
    leaf = LeafFiles(
        Path(store.server_cert_path), Path(store.server_key_path), ("proxy.bench.test",)
    )
    destination = f"[127.0.0.1]:{sink.port}"
    postfix = PostfixInstance(
        "bench",
        tmp / "postfix",
        relayhost=destination,
        smtp_tls_security_level="encrypt",
        smtpd_cert=leaf,
        smtpd_tls_security_level="may",
        main_cf={
            "smtp_connection_cache_destinations": destination,
            "smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache",
            "smtp_tls_session_cache_database": "btree:${data_directory}/smtp_scache",
            "message_size_limit": "52428800",
            # Benchmark sizes, not test sizes: enough processes for concurrency 200.
            "default_process_limit": "250",
            "smtpd_timeout": "120s",
            "smtp_data_xfer_timeout": "120s",
        },
    ).start()
    log = postfix.log_file
    counted = {"offset": 0, "sent": 0}

    def delivered() -> int:
        with open(log, "rb") as f:
            f.seek(counted["offset"])
            chunk = f.read()
        complete = chunk.rfind(b"\n") + 1  # a line being written is read next time
        counted["offset"] += complete
        counted["sent"] += chunk[:complete].count(b" status=sent ")
        return counted["sent"]

    assert postfix.master_pid is not None
    return Relay("postfix", postfix.port, postfix.master_pid, False, postfix.stop, delivered)
