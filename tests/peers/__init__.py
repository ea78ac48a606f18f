"""Real SMTP peers for the interop tests.

Each module starts (or runs) one real program on a loopback port under a
test's temporary directory and stops it by its PID:

- :mod:`tests.peers.postfix`: a private Postfix instance (sender or receiver role)
- :mod:`tests.peers.swaks`: the swaks SMTP test client
- :mod:`tests.peers.openssl`: ``openssl s_client -starttls smtp``
- :mod:`tests.peers.haproxy`: HAProxy in TCP mode sending PROXY headers
- :mod:`tests.peers.upstream`: aiosmtpd receivers (with or without STARTTLS)
- :mod:`tests.peers.scripted_upstream`: the project's own receiving server with
  scripted replies and byte-exact records (e2e tests, benchmark)
- :mod:`tests.peers.mailsender`: the project's sending peer on the SMTP core
  (the benchmark's load generator)
- :mod:`tests.peers.gate_config`: the one configuration builder of the tests
- :mod:`tests.peers.certs`: a test CA and certificates via trustme
- :mod:`tests.peers.smtpgate_proc`: the proxy itself as a subprocess
- :mod:`tests.peers.relay`: smtpgate in front of an aiosmtpd upstream, the common setup
- :mod:`tests.peers.ocsp`: an OCSP responder and the test CA it signs for
- :mod:`tests.peers.mitm`: a man in the middle between smtpgate and its upstream
  (strips STARTTLS, answers it 454, breaks the handshake, injects replies), recording
  what smtpgate sent on the wire
- :mod:`tests.peers.smuggling`: the SMTP smuggling variants (CR, LF, NUL around the
  dot) and how a lenient receiver would read relayed bytes

Nothing here talks to anything but 127.0.0.0/8, and nothing touches the
system-wide mail setup (``/etc/postfix`` and ``/var/spool/postfix`` are only read).
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from smtpgate.reserved_port import ReservedPort

T = TypeVar("T")

__all__ = [
    "PeerMissing",
    "ReservedPort",
    "accepts_connections",
    "require_binary",
    "tail",
    "wait_until",
]


class PeerMissing(AssertionError):
    """A peer program is not installed: the test fails (it is never skipped)."""


def require_binary(path_or_name: str, package: str) -> str:
    """Return the executable's path or fail the test with a clear message.

    Interop tests must fail, not skip, in CI when a peer is missing.
    """
    found = shutil.which(path_or_name)
    if found is None and Path(path_or_name).is_file():
        found = path_or_name
    if found is None:
        raise PeerMissing(
            f"peer program {path_or_name!r} is not installed (Debian package {package!r}); "
            "run `make peers` (scripts/install-peers.sh) as root"
        )
    return found


def accepts_connections(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` (a held :class:`ReservedPort` does not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


def wait_until(
    probe: Callable[[], T | None],
    failure: Callable[[], str],
    *,
    timeout: float,
    interval: float = 0.05,
) -> T:
    """Ask ``probe`` until it returns something (not None, not empty, not False), and
    return that; after ``timeout`` seconds, fail with ``failure()`` (computed only then,
    so it can carry fresh diagnostics). The probe is asked once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout}s: {failure()}")
        time.sleep(interval)


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``, for failure messages."""
    return "\n".join(text.splitlines()[-lines:])


def complete_lines(path: Path) -> list[str]:
    """The newline-terminated lines of a file another process is still writing.

    A writer's buffer boundary can fall inside a line (rsyslog's omfile flushes 4 KiB
    at a time), so a read between two of its writes ends in part of a line: dropped
    here until its newline arrives."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return text[: text.rfind("\n") + 1].splitlines()
