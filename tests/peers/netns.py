"""A firewall of network namespaces for the transparent-mode tests.

Three namespaces the test creates, named for this process so that runs do not
meet: a *client*, a *firewall* (where smtpgate runs, with the nftables rules)
and a *server*, joined by two veth pairs::

    client 192.0.2.2     -- 192.0.2.1     firewall 198.51.100.1  -- 198.51.100.2  server
           2001:db8:1::2 -- 2001:db8:1::1          2001:db8:2::1 -- 2001:db8:2::2

The addresses are documentation ranges (RFC 5737, RFC 3849) that exist only
inside these namespaces; nothing reaches the machine's own network. The
client routes through the firewall, which forwards, so a connection from the
client to the server's address passes the firewall's prerouting hook, where
the rules divert it to smtpgate.

Processes run inside with ``ip netns exec`` (same PID, so they are stopped by
it); an event loop of the test runs inside through :class:`LoopInNamespace`,
a thread that entered the namespace (``setns(2)`` moves the calling thread
only). :meth:`Firewall.close` deletes the namespaces by name, which removes
their veths and rules.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from . import require_binary

__all__ = [
    "CLIENT_V4",
    "CLIENT_V6",
    "FIREWALL_V4",
    "FIREWALL_V6",
    "SERVER_V4",
    "SERVER_V6",
    "Firewall",
    "LoopInNamespace",
    "namespaces_forbidden",
]

T = TypeVar("T")

CLIENT_V4, FIREWALL_V4 = "192.0.2.2", "192.0.2.1"
UPLINK_V4, SERVER_V4 = "198.51.100.1", "198.51.100.2"
CLIENT_V6, FIREWALL_V6 = "2001:db8:1::2", "2001:db8:1::1"
UPLINK_V6, SERVER_V6 = "2001:db8:2::1", "2001:db8:2::2"

#: linux/sched.h
CLONE_NEWNET = 0x40000000

_serial = itertools.count(1)


def namespaces_forbidden() -> str | None:
    """Why this machine does not let the tests make network namespaces; None when it does."""
    if shutil.which("ip") is None:
        return None  # not the machine's doing: the tests fail on require_binary("ip")
    name = f"sgprobe{os.getpid()}"
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        return f"`ip netns add` is not allowed here: {made.stderr.strip()}"
    _ip("netns", "delete", name)
    return None


class Firewall:
    """The three namespaces, addressed and routed; ``with`` deletes them."""

    def __init__(self) -> None:
        tag = f"sg{os.getpid() % 100000}{next(_serial)}"
        self.client, self.firewall, self.server = (f"{tag}c", f"{tag}f", f"{tag}s")
        self._made: list[str] = []
        try:
            self._build(tag)
        except BaseException:
            self.close()
            raise

    def _build(self, tag: str) -> None:
        for name in (self.client, self.firewall, self.server):
            self._run_ip("netns", "add", name)
            self._made.append(name)
            self._run_ip("-n", name, "link", "set", "lo", "up")
        # Created in the firewall namespace: nothing appears in the machine's own.
        inside, uplink = f"{tag}i", f"{tag}u"
        for firewall_end, peer, peer_ns in (
            (inside, "eth0", self.client),
            (uplink, "eth0", self.server),
        ):
            self._run_ip(
                "-n", self.firewall, "link", "add", firewall_end, "type", "veth",
                "peer", "name", peer, "netns", peer_ns,
            )  # fmt: skip
        for ns, dev, v4, v6 in (
            (self.client, "eth0", CLIENT_V4, CLIENT_V6),
            (self.firewall, inside, FIREWALL_V4, FIREWALL_V6),
            (self.firewall, uplink, UPLINK_V4, UPLINK_V6),
            (self.server, "eth0", SERVER_V4, SERVER_V6),
        ):
            self._run_ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            # nodad: usable at once, not after duplicate address detection.
            self._run_ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            self._run_ip("-n", ns, "link", "set", dev, "up")
        for ns, v4, v6 in (
            (self.client, FIREWALL_V4, FIREWALL_V6),
            (self.server, UPLINK_V4, UPLINK_V6),
        ):
            self._run_ip("-n", ns, "route", "add", "default", "via", v4)
            self._run_ip("-n", ns, "-6", "route", "add", "default", "via", v6)
        # /proc/sys/net is the namespace's own for a process inside it.
        for key in ("ipv4/ip_forward", "ipv6/conf/all/forwarding"):
            self.run(self.firewall, ["sh", "-c", f"echo 1 > /proc/sys/net/{key}"])

    def nft(self, ruleset: str) -> None:
        """Load ``ruleset`` (nft syntax) into the firewall namespace."""
        nft = require_binary("nft", "nftables")
        proc = subprocess.run(
            ["ip", "netns", "exec", self.firewall, nft, "-f", "-"],
            input=ruleset,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"nft refused the ruleset:\n{ruleset}\n{proc.stderr}")

    def route_marked_locally(self, mark: int, table: int) -> None:
        """Packets with ``mark`` (set by a TPROXY rule) are delivered to this host."""
        for family in ("-4", "-6"):
            self._run_ip(
                "-n",
                self.firewall,
                family,
                "rule",
                "add",
                "fwmark",
                str(mark),
                "lookup",
                str(table),
            )
            everything = "0.0.0.0/0" if family == "-4" else "::/0"
            self._run_ip(
                "-n", self.firewall, family, "route", "add", "local", everything, "dev", "lo",
                "table", str(table),
            )  # fmt: skip

    @staticmethod
    def exec_in(ns: str) -> list[str]:
        """The command prefix that runs a program in ``ns`` (same PID)."""
        return ["ip", "netns", "exec", ns]

    def run(self, ns: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.exec_in(ns), *args], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} in {ns}: exit {proc.returncode}\n{proc.stderr}")
        return proc

    def _run_ip(self, *args: str) -> None:
        proc = _ip(*args)
        if proc.returncode != 0:
            raise AssertionError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    def close(self) -> None:
        """Delete the namespaces (by name): their veths, addresses and rules go with them."""
        for name in reversed(self._made):
            _ip("netns", "delete", name)
        self._made.clear()

    def __enter__(self) -> Firewall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoopInNamespace:
    """An asyncio event loop on a thread that entered network namespace ``ns``:
    every socket it opens is one of that namespace."""

    def __init__(self, ns: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._entered = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(ns,), daemon=True)
        self._thread.start()
        self._entered.wait(10)
        if self._error is not None:
            raise AssertionError(f"cannot enter network namespace {ns}: {self._error}")

    def _run(self, ns: str) -> None:
        try:
            _enter(ns)
        except OSError as exc:
            self._error = exc
            self._entered.set()
            return
        self._entered.set()
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


def _enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns`` (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    finally:
        os.close(fd)


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
