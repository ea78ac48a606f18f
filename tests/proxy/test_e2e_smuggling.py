"""SMTP smuggling end to end (issue 11 item 8): every fake end of data of the
published research (tests/peers/smuggling.py), in every combination of
``bare_newline`` and ``nul_bytes``, through a real gateway to the recording
upstream over STARTTLS, which shows the exact bytes relayed.

For each fake end the client gets the promised reply (``550 5.6.0 ...`` or
``250``) and its next, legitimate transaction in the same session is relayed.
At the end, the upstream's transcripts are read as a lenient receiver would
read them (NUL bytes dropped, a dot between any CR or LF ends the data): the
only ends of data in them are the real ones, one per message accepted, and no
smuggled command ever reached the upstream as a command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.peers.scripted_upstream import ScriptedUpstream
from tests.peers.smuggling import (
    FAKE_ENDS,
    SMUGGLED,
    canonical,
    carrier,
    content_refusal,
    expected_refusal,
    lenient_ends,
)
from tests.proxy.helpers import RawClient, rule, server_context

MakeRaw = Callable[..., ScriptedUpstream]

MODES = [
    ("reject", "reject"),
    ("reject", "strip"),
    ("normalize", "reject"),
    ("normalize", "strip"),
]


def second_mail(client: RawClient) -> None:
    """A legitimate follow-up transaction in the same session."""
    assert client.cmd("MAIL FROM:<good@sender.example>").code == 250
    assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
    assert client.cmd("DATA").code == 354
    assert client.cmd(b"Subject: second\r\n\r\nfine\r\n.").code == 250


@pytest.mark.parametrize(("bare_newline", "nul_bytes"), MODES)
def test_every_fake_end_is_refused_or_relayed_harmless(
    make_gate: Any,
    make_scripted_upstream: MakeRaw,
    upstream_cert: Any,
    bare_newline: str,
    nul_bytes: str,
) -> None:
    upstream = make_scripted_upstream(starttls_context=server_context(upstream_cert))
    gate = make_gate(
        upstream.port,
        rules=[rule(recipient_encryption="required")],
        general={"bare_newline": bare_newline, "nul_bytes": nul_bytes, "received_header": False},
    )
    delivered = 0
    for fake_end in FAKE_ENDS:
        data = carrier(fake_end)
        refusal = expected_refusal(data, bare_newline, nul_bytes)
        with RawClient(gate.port) as client:
            client.ehlo()
            assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
            assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
            assert client.cmd("DATA").code == 354
            client.send(data)
            answer = str(client.reply())
            assert answer == (refusal or "250 2.0.0 Ok queued"), fake_end
            second_mail(client)
            client.cmd("QUIT")
        if refusal is None:
            carried, good = upstream.messages[delivered : delivered + 2]
            assert canonical(carried.wire), fake_end
            assert lenient_ends(carried.wire) == [], fake_end
            assert SMUGGLED.replace(b"\r\n.", b"\r\n..") in carried.wire, fake_end
            assert carried.tls_version == "TLSv1.3"
            delivered += 2
        else:
            (good,) = upstream.messages[delivered : delivered + 1]
            delivered += 1
        assert good.mail_from == b"<good@sender.example>", fake_end

    assert upstream.accepted == delivered
    assert not any(b"evil" in c or b"victim" in c for c in upstream.commands)
    # The upstream's connections, byte for byte, as a lenient receiver reads them.
    real_ends = 0
    for transcript in upstream.transcripts:
        relayed = bytes(transcript)
        assert canonical(relayed)
        ends = lenient_ends(relayed)
        assert ends == [b"\n.\r"] * relayed.count(b"\r\n.\r\n")
        real_ends += len(ends)
    assert real_ends == delivered

    summaries = gate.wait_record("transaction", count=2 * len(FAKE_ENDS))
    refused = [r for r in summaries if r["outcome"] == "rejected"]
    assert all(r["reply"] == 550 and r["upstream_tls"] == "TLSv1.3" for r in refused)
    assert len(refused) == sum(
        expected_refusal(carrier(end), bare_newline, nul_bytes) is not None for end in FAKE_ENDS
    )


@pytest.mark.parametrize(("bare_newline", "nul_bytes"), MODES)
def test_every_fake_end_sent_by_bdat_and_converted_to_data_is_harmless(
    make_gate: Any,
    make_scripted_upstream: MakeRaw,
    upstream_cert: Any,
    bare_newline: str,
    nul_bytes: str,
) -> None:
    """The same content sent in BDAT chunks (cut right inside each fake end) to an
    upstream without CHUNKING: refused as by DATA, or converted with one end of data."""
    upstream = make_scripted_upstream(starttls_context=server_context(upstream_cert))
    gate = make_gate(
        upstream.port,
        rules=[rule(recipient_encryption="required")],
        general={"bare_newline": bare_newline, "nul_bytes": nul_bytes, "received_header": False},
    )
    delivered = 0
    with RawClient(gate.port) as client:
        client.ehlo()
        for fake_end in FAKE_ENDS:
            content = carrier(fake_end)[:-3]
            refusal = content_refusal(content, bare_newline, nul_bytes)
            cut = content.index(fake_end) + 1
            assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
            assert client.cmd("RCPT TO:<b@rcpt.example>").code == 250
            client.send(
                b"BDAT %d\r\n" % cut
                + content[:cut]
                + b"BDAT %d LAST\r\n" % (len(content) - cut)
                + content[cut:]
            )
            replies = [str(client.reply()), str(client.reply())]
            if refusal is None:
                assert replies == [f"250 2.0.0 Ok: {cut} octets", "250 2.0.0 Ok queued"]
                carried = upstream.messages[delivered]
                assert canonical(carried.wire) and lenient_ends(carried.wire) == [], fake_end
                assert SMUGGLED.replace(b"\r\n.", b"\r\n..") in carried.wire, fake_end
                delivered += 1
            else:
                # Refused at the chunk where the offending byte came; what the client
                # pipelined after it is out of sequence (RFC 3030 section 2).
                assert refusal in replies, (fake_end, replies)
                assert replies[-1] in (refusal, "503 5.5.1 Need MAIL command")
        client.cmd("QUIT")
    assert upstream.accepted == delivered
    assert not any(b"evil" in c or b"victim" in c for c in upstream.commands)
    real_ends = 0
    for transcript in upstream.transcripts:
        relayed = bytes(transcript)
        assert canonical(relayed)
        ends = lenient_ends(relayed)
        assert ends == [b"\n.\r"] * relayed.count(b"\r\n.\r\n")
        real_ends += len(ends)
    assert real_ends == delivered
    assert {r["body_transfer"] for r in gate.records("transaction")} <= {"bdat-to-data"}
