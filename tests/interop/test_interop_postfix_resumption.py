"""smtpgate resumes its TLS session with a receiving Postfix (issue 12 item 2).

Postfix's smtpd issues session tickets (keys from its ``tlsmgr``). smtpgate keeps
the session of its upstream connection and offers it on the next one: the
receiving Postfix closes the parked connection after ``smtpd_timeout``, the
next message needs a new connection, and its handshake resumes.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from tests.peers.certs import LeafFiles, TestPKI
from tests.peers.gate_config import gate_config, rule
from tests.peers.postfix import PostfixInstance
from tests.peers.smtpgate_proc import SmtpgateProcess

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

#: The receiving Postfix hangs up an idle connection after this long.
IDLE_CLOSE_SECONDS = 1


def _send(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.starttls()
        smtp.sendmail(
            "a@sender.example", [f"b{n}@receiver.test"], f"Subject: {n}\r\n\r\nbody {n}\r\n"
        )


@pytest.mark.parametrize("encryption", ["required", "preferred"])
def test_second_upstream_connection_to_postfix_resumes(
    start_postfix: Callable[..., PostfixInstance],
    start_gate: Callable[..., SmtpgateProcess],
    upstream_cert: LeafFiles,
    gate_cert: LeafFiles,
    pki: TestPKI,
    encryption: str,
) -> None:
    rcv = start_postfix(
        "rcv",
        smtpd_cert=upstream_cert,
        virtual_domains=("receiver.test",),
        main_cf={"smtpd_timeout": f"{IDLE_CLOSE_SECONDS}s"},
    )
    gate = start_gate(
        gate_config(
            rcv.port,
            server_cert=gate_cert,
            profile={"ca_file": str(pki.ca_file), "validate_certificates": True},
            rules=[rule(recipient_encryption=encryption)],
            # The sessions kept for resumption are a worker's own (docs/tls.md), and
            # which worker takes a connection is the kernel's choice: one process, so
            # both messages are this one's.
            gateway={"workers": 1},
        )
    )
    _send(gate.port(), 1)
    # Postfix hangs up the parked leg once it has been idle smtpd_timeout long (on a
    # busy machine a fixed sleep could end before it did).
    rcv.wait_log(r"disconnect from \S+ ehlo=2 starttls=1 mail=1 rcpt=1 data=1 ")
    _send(gate.port(), 2)
    connected = gate.wait_record("upstream_connected", count=2)
    assert [
        (r["upstream_tls"], r["upstream_verify"], r["upstream_tls_resumed"]) for r in connected
    ] == [("TLSv1.3", "ok", False), ("TLSv1.3", "ok", True)], connected
    assert [t["outcome"] for t in gate.transactions(count=2)] == ["delivered", "delivered"]
