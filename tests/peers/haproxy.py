"""HAProxy in TCP mode in front of a port, sending PROXY protocol headers.

``HAProxy`` writes a minimal configuration (one frontend on a free loopback
port, one backend server with ``send-proxy`` or ``send-proxy-v2``), runs
``haproxy -f <cfg> -db`` in the foreground as a child process and stops it by
PID with SIGTERM (SIGKILL after a bound). Readiness: the frontend accepts a
connection. HAProxy passes that probe on to its target, as a connection that
closes at once (its client may be gone before the target reads its address):
tests that count connections or records at the target allow for it.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from . import ReservedPort, accepts_connections, require_binary, tail

__all__ = ["HAProxy"]

CONFIG = """\
global
    maxconn 256

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend smtp_in
    bind 127.0.0.1:{port}
    default_backend smtp_out

backend smtp_out
{servers}
"""

#: Several backends: round robin, a TCP health check every 200 ms (a connect
#: closed at once: smtpgate closes it without a record), one failure marks a
#: server down; a connection refused is retried and then sent to another server.
BALANCED = """\
    balance roundrobin
    option redispatch
    retries 3
"""


class HAProxy:
    def __init__(
        self,
        workdir: Path,
        target_port: int,
        *,
        version: int = 1,
        more_targets: Sequence[int] = (),
    ) -> None:
        """``more_targets``: further backend ports, balanced with health checks."""
        if version not in (1, 2):
            raise ValueError("PROXY protocol version is 1 or 2")
        self.binary = require_binary("haproxy", "haproxy")
        self.workdir = Path(workdir)
        self.target_port = target_port
        self.more_targets = tuple(more_targets)
        self.version = version
        #: Held until HAProxy listens (see :class:`ReservedPort`).
        self._reserved = contextlib.ExitStack()
        self.port = self._reserved.enter_context(ReservedPort()).port
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_file = self.workdir / f"haproxy-{self.port}.cfg"
        self.log_file = self.workdir / f"haproxy-{self.port}.log"

    def start(self, timeout: float = 10) -> HAProxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        proxy = "send-proxy" if self.version == 1 else "send-proxy-v2"
        if self.more_targets:
            targets = (self.target_port, *self.more_targets)
            servers = BALANCED + "\n".join(
                f"    server s{i} 127.0.0.1:{port} {proxy} check inter 200 fall 1 rise 2"
                for i, port in enumerate(targets)
            )
        else:
            servers = f"    server target 127.0.0.1:{self.target_port} {proxy}"
        self.config_file.write_text(CONFIG.format(port=self.port, servers=servers))
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_file)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if check.returncode != 0:
            raise AssertionError(f"haproxy -c rejected {self.config_file}:\n{check.stderr}")
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-f", str(self.config_file), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if accepts_connections(self.port):
                self._reserved.close()
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"haproxy did not listen on 127.0.0.1:{self.port}\n{tail(self.log())}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        self._reserved.close()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
