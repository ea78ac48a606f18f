"""Out of file descriptors (issue 11 item 3): a real ``smtpgate serve`` whose
open-files limit is lowered from outside (``prlimit``) while it runs, flooded
with connections from one address. Clients past what the limit allows get
``421 4.7.0`` (a closed connection where nothing can be said yet, or where the
event loop ran out of descriptors first and closed it); the
refusals are logged; once the flood is gone smtpgate serves again by itself,
on a STARTTLS listener (the event loop's accept) and on an implicit-TLS one
that looks first (smtpgate's own accept)."""

from __future__ import annotations

import resource
import smtplib
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.peers import wait_until
from tests.peers.certs import client_context
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream

#: The lowered limit: serve needs about 20 descriptors of its own.
LIMIT = 150
FLOOD = 400
TOO_MANY = b"421 4.7.0 Too many connections, try again later\r\n"


def open_descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def flood(port: int) -> tuple[list[socket.socket], list[bytes]]:
    """``FLOOD`` connections at once; what each got first (b"": closed)."""
    socks = []
    for _ in range(FLOOD):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(sock)
    firsts = []
    for sock in socks:
        sock.settimeout(3)  # look-first listeners wait 2 s for a ClientHello, then greet
        try:
            firsts.append(sock.recv(200))
        except TimeoutError:
            firsts.append(b"(nothing)")
        except OSError:
            firsts.append(b"")
    return socks, firsts


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["starttls", "implicit-looks-first"])
def test_out_of_descriptors_is_logged_and_smtpgate_recovers(
    tmp_path: Path, upstream: AiosmtpdUpstream, implicit_tls: bool
) -> None:
    config: dict[str, Any] = {
        "gateway": {"max_connections": 10_000, "max_connections_per_client": 10_000},
        "policies": [
            {
                "name": "p",
                "upstream": f"127.0.0.1:{upstream.port}",
                "implicit_tls": implicit_tls,
                "proxy_action": "A",
            }
        ],
        # A profile that lets cleartext clients in on the implicit-TLS port: smtpgate
        # accepts there itself and looks at the first bytes.
        "tls_profiles": [{"name": "T", "tls_compliant_only": False}],
        "proxy_actions": [{"name": "A", "starttls": {"tls_profile": "T"}}],
    }
    with SmtpgateProcess(tmp_path, config) as gate:
        # The processes that accept: with workers, each has its own limit and count.
        pids = gate.serving_pids()
        for pid in pids:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
        socks, firsts = flood(gate.port())
        try:
            greeted = [f for f in firsts if f.startswith(b"220 ")]
            # A listener that looks first has not read a byte yet: it closes without a word.
            refused = [f for f in firsts if f == (b"" if implicit_tls else TOO_MANY)]
            assert greeted, "nobody was served"
            assert refused, f"nobody refused: {sorted(set(firsts))}"
            assert len(greeted) + firsts.count(TOO_MANY) + firsts.count(b"") == FLOOD
            assert all(open_descriptors(pid) <= LIMIT for pid in pids)
            (record,) = gate.wait_record(
                "connection_refused", lambda r: r["reason"] == "open_files_limit"
            )[:1]
            assert record["policy"] == "p"
        finally:
            for sock in socks:
                sock.close()
        wait_until(
            lambda: all(open_descriptors(pid) < 40 for pid in pids) or None,
            lambda: f"{[open_descriptors(pid) for pid in pids]} descriptors still open",
            timeout=10,
        )
        # Served again, a whole message.
        send_one(gate.port(), implicit_tls)
        wait_until(lambda: len(upstream.messages) == 1 or None, lambda: "not relayed", timeout=10)


def send_one(port: int, implicit_tls: bool) -> None:
    context = client_context(verify=False)
    if implicit_tls:
        with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=context) as client:
            client.sendmail("a@sender.example", ["b@rcpt.example"], b"Subject: back\r\n\r\nhi\r\n")
    else:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=context)
            client.sendmail("a@sender.example", ["b@rcpt.example"], b"Subject: back\r\n\r\nhi\r\n")
