"""BDAT (RFC 3030) against Postfix as the receiving server, through smtpgate.

Postfix's smtpd offers CHUNKING (without BINARYMIME). A sending MTA writes
BDAT chunks to smtpgate over STARTTLS; smtpgate relays them as BDAT to a
Postfix that offers CHUNKING, and as DATA to one that does not
(``smtpd_discard_ehlo_keywords = chunking``). Either way the Maildir holds
exactly the bytes sent, after smtpgate's and Postfix's Received: lines; a
``BODY=BINARYMIME`` message is refused with ``554 5.6.3`` because Postfix
cannot take it, and never reaches Postfix.

Postfix as the *sender* cannot show BDAT: Postfix 3.7's smtp(8) client has no
BDAT support (``postconf -d`` has no chunking parameter; BDAT_README speaks of
the server only); it sends DATA to smtpgate, which now offers CHUNKING, as
test_interop_postfix.py shows. The BDAT sender here is a raw client.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest

from tests.peers.certs import LeafFiles, TestPKI
from tests.peers.gate_config import gate_config
from tests.peers.postfix import PostfixInstance
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.proxy.helpers import RawClient, insecure_client_context

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

StartGate = Callable[..., SmtpgateProcess]
StartPostfix = Callable[..., PostfixInstance]

CONTENT = (
    b"From: alice@sender.test\r\n"
    b"To: bob@receiver.test\r\n"
    b"Subject: chunked through smtpgate\r\n"
    b"Message-ID: <bdat-1@interop.test>\r\n"
    b"Date: Sun, 29 Nov 2026 21:00:00 +0000\r\n"
    b"\r\n"
    b".a line starting with a dot\r\n"
    b".\r\n"
    b"QUIT\r\n"
    + (b"0123456789" * 9 + b"\r\n") * 60  # lines split across chunks
    + b"last line\r\n"
)


def send_by_bdat(port: int, content: bytes, *, mail_params: str = "") -> list[str]:
    """EHLO, STARTTLS, EHLO, MAIL, RCPT, then ``content`` in three BDAT chunks, pipelined;
    returns every reply after RCPT as ``code text``."""
    client = RawClient(port)
    try:
        assert b"CHUNKING" in client.ehlo().lines
        client.starttls(insecure_client_context())
        client.ehlo()
        assert client.cmd(f"MAIL FROM:<alice@sender.test>{mail_params}").code == 250
        rcpt = client.cmd("RCPT TO:<bob@receiver.test>")
        if rcpt.code != 250:
            return [f"{rcpt.code} {rcpt.text}"]
        cuts = [0, 100, 5000, len(content)]
        pieces = [content[a:b] for a, b in itertools.pairwise(cuts)]
        client.send(
            b"".join(
                b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == len(pieces) - 1 else b"") + p
                for i, p in enumerate(pieces)
            )
        )
        return [f"{r.code} {r.text}" for r in (client.reply("BDAT") for _ in pieces)]
    finally:
        client.close()


def maildir_bytes(rcv: PostfixInstance) -> bytes:
    rcv.wait_delivered(1)
    [path] = list((rcv.maildir / "new").iterdir())
    return path.read_bytes()


@pytest.mark.parametrize(
    ("receiver_cf", "body_transfer"),
    [({}, "bdat"), ({"smtpd_discard_ehlo_keywords": "chunking"}, "bdat-to-data")],
    ids=["postfix-offers-chunking", "postfix-without-chunking"],
)
def test_bdat_to_postfix_arrives_byte_for_byte(
    start_postfix: StartPostfix,
    start_gate: StartGate,
    gate_cert: LeafFiles,
    upstream_cert: LeafFiles,
    pki: TestPKI,
    receiver_cf: dict[str, str],
    body_transfer: str,
) -> None:
    rcv = start_postfix(
        "rcv", smtpd_cert=upstream_cert, virtual_domains=("receiver.test",), main_cf=receiver_cf
    )
    profile = {"ca_file": str(pki.ca_file), "validate_certificates": True}
    gate = start_gate(gate_config(rcv.port, server_cert=gate_cert, profile=profile))
    replies = send_by_bdat(gate.port(), CONTENT)
    assert replies[:2] == ["250 2.0.0 Ok: 100 octets", "250 2.0.0 Ok: 4900 octets"]
    # Postfix's own verdict; "N bytes" is how its smtpd answers BDAT LAST, not DATA.
    verdict = re.fullmatch(r"250 2\.0\.0 Ok: (\d+ bytes )?queued as \w+", replies[2])
    assert verdict is not None
    assert (verdict.group(1) is not None) == (body_transfer == "bdat")
    stored = maildir_bytes(rcv)
    # The Maildir stores LF line ends; everything after smtpgate's Received: is ours.
    head, sep, ours = stored.partition(b"\nFrom: alice@sender.test\n")
    assert sep and b"Received: from client.test" in head
    assert sep[1:] + ours == CONTENT.replace(b"\r\n", b"\n")
    tx = gate.transactions(outcome="delivered")[0]
    assert tx["body_transfer"] == body_transfer
    assert tx["upstream_tls"] == rcv.tls_lines("from")[-1].version
    assert tx["size"] == len(CONTENT)


def test_binarymime_is_refused_towards_postfix(
    start_postfix: StartPostfix,
    start_gate: StartGate,
    gate_cert: LeafFiles,
    upstream_cert: LeafFiles,
) -> None:
    rcv = start_postfix("rcv", smtpd_cert=upstream_cert, virtual_domains=("receiver.test",))
    esmtp = {"keywords": ["8BITMIME", "PIPELINING", "CHUNKING", "BINARYMIME"]}
    gate = start_gate(
        gate_config(
            rcv.port,
            server_cert=gate_cert,
            profile={"validate_certificates": False},
            esmtp=esmtp,
        )
    )
    replies = send_by_bdat(gate.port(), b"\x00\x01binary", mail_params=" BODY=BINARYMIME")
    assert replies == [
        "554 5.6.3 BINARYMIME message cannot be relayed: the upstream server does not offer "
        "BINARYMIME and CHUNKING"
    ]
    assert rcv.delivered() == []
