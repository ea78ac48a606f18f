"""NSD, Debian's authoritative DNS server, serving zones a test writes on a loopback port.

:class:`AuthoritativeDNS` writes ``nsd.conf`` and one zone file per zone into
a test directory and runs ``nsd -d`` (in the foreground, no daemon, no
control socket, no database file, no user switch) on ``127.0.0.1:<port>``,
UDP and TCP. It is ready when it answers the SOA of every zone. Zone texts
are records relative to the zone (``zone(...)`` adds the SOA and NS); a
test changes them with :meth:`AuthoritativeDNS.reload`, which restarts NSD on
the same port.

:class:`SilentDNS` is a "DNS server" that never answers: a UDP socket that
reads and drops, for timeouts.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from . import ReservedPort, require_binary, tail, wait_until

__all__ = ["AuthoritativeDNS", "SilentDNS", "zone"]

NSD = "/usr/sbin/nsd"


def zone(origin: str, *records: str, ttl: int = 300) -> str:
    """A zone file for ``origin`` with ``records`` (one per line, relative names)."""
    return "\n".join(
        [
            f"$ORIGIN {origin}.",
            f"$TTL {ttl}",
            "@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60",
            "@ IN NS ns.test.",
            *records,
            "",
        ]
    )


class AuthoritativeDNS:
    """``with AuthoritativeDNS(dir, {"a.test": zone("a.test", "@ MX 10 mx1")}) as dns:``;
    ``dns.address`` is ``127.0.0.1:<port>`` for ``[gateway] resolvers``."""

    def __init__(self, workdir: Path, zones: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.zones = dict(zones)
        self.host = "127.0.0.1"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> AuthoritativeDNS:
        require_binary(NSD, "nsd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # NSD binds UDP and TCP; the TCP port is held until it listens, and a UDP
        # port taken meanwhile by someone else shows as a start failure, retried.
        for _attempt in range(5):
            with ReservedPort(self.host) as reserved:
                self.port = reserved.port
                if _udp_free(self.host, self.port):
                    self._start()
                    reserved.release()
                    if self._ready():
                        return self
                    self._stop()
        raise AssertionError(f"nsd did not start:\n{self.log()}")

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def reload(self, zones: Mapping[str, str]) -> None:
        """Serve ``zones`` instead (NSD restarted on the same port)."""
        self._stop()
        self.zones = dict(zones)
        self._start()
        if not self._ready():
            raise AssertionError(f"nsd did not start again:\n{self.log()}")

    def log(self) -> str:
        path = self.workdir / "nsd.log"
        return tail(path.read_text()) if path.exists() else "(no nsd log)"

    def _start(self) -> None:
        workdir = self.workdir
        zones = []
        for name, text in self.zones.items():
            (workdir / f"{name}.zone").write_text(text)
            zones += ["zone:", f'    name: "{name}"', f'    zonefile: "{name}.zone"']
        conf = [
            "server:",
            f"    ip-address: {self.host}@{self.port}",
            f"    port: {self.port}",
            f'    zonesdir: "{workdir}"',
            '    username: ""',
            '    database: ""',
            f'    pidfile: "{workdir}/nsd.pid"',
            f'    logfile: "{workdir}/nsd.log"',
            f'    xfrdfile: "{workdir}/xfrd.state"',
            f'    zonelistfile: "{workdir}/zone.list"',
            "    server-count: 1",
            "    verbosity: 1",
            "remote-control:",
            "    control-enable: no",
            *zones,
            "",
        ]
        (workdir / "nsd.conf").write_text("\n".join(conf))
        self._process = subprocess.Popen(
            [NSD, "-d", "-c", str(workdir / "nsd.conf")],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "nsd.stderr").open("wb"),
        )

    def _ready(self) -> bool:
        def answers() -> bool | None:
            process = self._process
            if process is None or process.poll() is not None:
                return False  # exited: not going to answer
            return all(self._answers_soa(name) for name in self.zones) or None

        try:
            return bool(wait_until(answers, self.log, timeout=10))
        except AssertionError:
            return False

    def _answers_soa(self, name: str) -> bool:
        query = dns.message.make_query(f"{name}.", "SOA")
        try:
            response = dns.query.udp(query, self.host, port=self.port, timeout=0.5)
        except (OSError, dns.exception.Timeout):
            return False
        return response.rcode() == dns.rcode.NOERROR and bool(response.answer)

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class SilentDNS:
    """A UDP port that takes queries and never answers (and refuses TCP)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> SilentDNS:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def _udp_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
