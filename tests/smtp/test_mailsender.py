"""send_message/send_messages (the sending peer, on the SMTP core's client role) against
the scripted upstream over loopback: every reply reported, pipelining, TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvloop

from tests.peers.certs import TestPKI
from tests.peers.mailsender import (
    OutgoingMessage,
    SendError,
    SendResult,
    send_message,
    send_messages,
)
from tests.peers.scripted_upstream import ScriptedUpstream

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sink(pki: TestPKI) -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream(starttls_context=pki.server_context()) as sink:
        yield sink


async def send_one(port: int, body: bytes = b"x\r\n", **options: Any) -> SendResult:
    """One message from a@example.com to b@example.org; ``options`` go to send_message."""
    return await send_message(
        "127.0.0.1",
        port,
        sender="a@example.com",
        recipients=["b@example.org"],
        body=body,
        **options,
    )


def body(n: int) -> bytes:
    return b"Subject: message %d\r\n\r\n.dot\r\n..\r\n.\r\nline %d\r\n" % (n, n)


async def test_plain_delivery_pipelines_and_reports_every_reply(sink: ScriptedUpstream) -> None:
    result = await send_message(
        "127.0.0.1", sink.port, sender="", recipients=["a@example.org", "postmaster"], body=body(1)
    )
    assert result.accepted and result.greeting is not None and result.greeting.code == 220
    assert result.ehlo is not None and b"PIPELINING" in result.ehlo.lines
    assert (result.mail.code, [r.code for r in result.rcpts]) == (250, [250, 250])
    assert result.data is not None and result.data.code == 354
    assert (result.tls_version, result.cipher) == ("none", "none")
    (message,) = sink.messages
    assert (message.sender, message.recipients, message.content) == (
        "",
        ["a@example.org", "postmaster"],
        body(1),
    )


async def test_ten_messages_on_one_connection(sink: ScriptedUpstream, pki: TestPKI) -> None:
    messages = [
        OutgoingMessage(f"s{n}@example.com", [f"r{n}@example.org"], body(n)) for n in range(10)
    ]
    results = await send_messages(
        "127.0.0.1",
        sink.port,
        messages=messages,
        starttls=pki.client_context(),
        require_starttls=True,
    )
    assert [r.accepted for r in results] == [True] * 10
    assert sink.connections == 1
    assert [m.content for m in sink.messages] == [body(n) for n in range(10)]
    assert [m.recipients for m in sink.messages] == [[f"r{n}@example.org"] for n in range(10)]
    assert {m.tls_version for m in sink.messages} == {results[0].tls_version}
    assert results[0].tls_version in ("TLSv1.2", "TLSv1.3")


async def test_refused_recipients_and_a_failed_transaction_then_the_next_one(pki: TestPKI) -> None:
    async with ScriptedUpstream(rcpt_replies={"<no": b"550 5.1.1 No such user\r\n"}) as sink:
        results = await send_messages(
            "127.0.0.1",
            sink.port,
            messages=[
                OutgoingMessage("a@example.com", ["no1@example.org", "yes@example.org"], body(1)),
                OutgoingMessage("a@example.com", ["no2@example.org"], body(2)),
                OutgoingMessage("a@example.com", ["yes2@example.org"], body(3)),
            ],
        )
    assert [r.code for r in results[0].rcpts] == [550, 250] and results[0].accepted
    assert results[0].rcpts[0].lines == (b"5.1.1 No such user",)
    # Pipelined DATA after no valid recipient: refused, no body goes out, RSET follows.
    assert results[1].data is not None and results[1].data.code == 503 and results[1].end is None
    assert results[2].accepted
    assert [(m.recipients, m.content) for m in sink.messages] == [
        (["yes@example.org"], body(1)),
        (["yes2@example.org"], body(3)),
    ]


@pytest.mark.parametrize(
    ("option", "code"), [("data_reply", 451), ("dot_reply", 554), ("dot_reply", 250)]
)
async def test_chosen_answers_to_data_and_end_of_data(option: str, code: int) -> None:
    text = "4.0.0 chosen" if code < 500 else "5.0.0 chosen"
    async with ScriptedUpstream(**{option: f"{code} {text}\r\n".encode()}) as sink:
        result = await send_one(
            sink.port,
        )
    answered = result.data if option == "data_reply" else result.end
    assert answered is not None and str(answered) == f"{code} {text}"
    assert result.accepted == (code == 250)
    assert len(sink.messages) == (1 if code == 250 else 0)


async def test_refused_or_missing_starttls(pki: TestPKI) -> None:
    async with (
        ScriptedUpstream(starttls_reply=b"454 4.7.0 TLS not available\r\n") as refusing,
        ScriptedUpstream() as plain,
    ):
        for sink, why in ((refusing, "STARTTLS refused: 454"), (plain, "STARTTLS not offered")):
            with pytest.raises(SendError, match=why):
                await send_one(sink.port, starttls=pki.client_context(), require_starttls=True)
        # Opportunistic: refused STARTTLS means delivery in clear.
        result = await send_one(
            refusing.port,
            starttls=pki.client_context(),
        )
    assert result.accepted and result.tls_version == "none"
    assert refusing.messages[0].tls_version == "none" and plain.messages == []


async def test_bare_newlines_are_sent_as_crlf() -> None:
    async with ScriptedUpstream() as sink:
        bare = await send_message(
            "127.0.0.1",
            sink.port,
            sender="a@x.example",
            recipients=["c@x.example"],
            body=b"one\ntwo\n.\n",
        )
    assert bare.accepted
    (message,) = sink.messages
    assert message.wire == b"one\r\ntwo\r\n..\r\n"  # canonicalised and dot-stuffed


def test_under_uvloop_with_starttls_and_implicit_tls(pki: TestPKI) -> None:
    async def scenario() -> tuple[str, str, list[bytes]]:
        async with (
            ScriptedUpstream(starttls_context=pki.server_context()) as explicit,
            ScriptedUpstream(implicit_tls_context=pki.server_context()) as implicit,
        ):
            big = b"".join(b".%05d " % i + b"q" * 60 + b"\r\n" for i in range(30_000))  # ~2 MB
            one = await send_one(
                explicit.port,
                big,
                starttls=pki.client_context(),
                require_starttls=True,
                server_hostname="localhost",
            )
            two = await send_one(
                implicit.port,
                body(2),
                implicit_tls=pki.client_context(),
            )
            assert one.accepted and two.accepted
            return (
                one.tls_version,
                two.tls_version,
                [
                    explicit.messages[0].content,
                    implicit.messages[0].content,
                    big,
                ],
            )

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        v1, v2, (got_big, got_small, big) = runner.run(asyncio.wait_for(scenario(), 30))
    assert v1 in ("TLSv1.2", "TLSv1.3") and v2 in ("TLSv1.2", "TLSv1.3")
    assert got_big == big and got_small == body(2)
