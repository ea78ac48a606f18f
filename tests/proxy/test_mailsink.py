"""MailSink (receiving shell) and send_message/send_messages (sending shell) over loopback."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
import uvloop

from smtpgate.proxy.mailsender import OutgoingMessage, SendError, send_message, send_messages
from smtpgate.proxy.mailsink import MailSink
from smtpgate.smtp import ServerLimits

pytestmark = pytest.mark.timeout(60)


class Certs:
    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.leaf = self.ca.issue_cert("localhost", "127.0.0.1")

    def server(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.leaf.configure_cert(context)
        return context

    def client(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def certs() -> Certs:
    return Certs()


@pytest.fixture
async def sink(certs: Certs) -> AsyncIterator[MailSink]:
    sink = MailSink("sink.test", starttls_context=certs.server())
    await sink.start()
    yield sink
    await sink.stop()


def body(n: int) -> bytes:
    return b"Subject: message %d\r\n\r\n.dot\r\n..\r\n.\r\nline %d\r\n" % (n, n)


async def test_plain_delivery_pipelines_and_reports_every_reply(sink: MailSink) -> None:
    result = await send_message(
        "127.0.0.1", sink.port, sender="", recipients=["a@example.org", "postmaster"], body=body(1)
    )
    assert result.accepted and result.greeting is not None and result.greeting.code == 220
    assert result.ehlo is not None and b"PIPELINING" in result.ehlo.lines
    assert (result.mail.code, [r.code for r in result.rcpts]) == (250, [250, 250])
    assert result.data is not None and result.data.code == 354
    assert (result.tls_version, result.cipher) == ("none", "none")
    (message,) = sink.messages
    assert (message.sender, message.recipients, message.data) == (
        "",
        ["a@example.org", "postmaster"],
        body(1),
    )


async def test_ten_messages_on_one_connection(sink: MailSink, certs: Certs) -> None:
    messages = [
        OutgoingMessage(f"s{n}@example.com", [f"r{n}@example.org"], body(n)) for n in range(10)
    ]
    results = await send_messages(
        "127.0.0.1", sink.port, messages=messages, starttls=certs.client(), require_starttls=True
    )
    assert [r.accepted for r in results] == [True] * 10
    assert sink.connections == 1
    assert [m.data for m in sink.messages] == [body(n) for n in range(10)]
    assert [m.recipients for m in sink.messages] == [[f"r{n}@example.org"] for n in range(10)]
    assert {m.tls_version for m in sink.messages} == {results[0].tls_version}
    assert results[0].tls_version in ("TLSv1.2", "TLSv1.3")


async def test_refused_recipients_and_a_failed_transaction_then_the_next_one(certs: Certs) -> None:
    sink = MailSink(
        rcpt_reply=lambda r: (550, "5.1.1 No such user") if r.startswith("no") else None
    )
    await sink.start()
    try:
        results = await send_messages(
            "127.0.0.1",
            sink.port,
            messages=[
                OutgoingMessage("a@example.com", ["no1@example.org", "yes@example.org"], body(1)),
                OutgoingMessage("a@example.com", ["no2@example.org"], body(2)),
                OutgoingMessage("a@example.com", ["yes2@example.org"], body(3)),
            ],
        )
    finally:
        await sink.stop()
    assert [r.code for r in results[0].rcpts] == [550, 250] and results[0].accepted
    assert results[0].rcpts[0].lines == (b"5.1.1 No such user",)
    # Pipelined DATA after no valid recipient: the core answers 554, no body goes out, RSET follows.
    assert results[1].data is not None and results[1].data.code == 554 and results[1].end is None
    assert results[2].accepted
    assert [(m.recipients, m.data) for m in sink.messages] == [
        (["yes@example.org"], body(1)),
        (["yes2@example.org"], body(3)),
    ]


@pytest.mark.parametrize(
    ("option", "code"), [("data_reply", 451), ("message_reply", 554), ("message_reply", 250)]
)
async def test_chosen_answers_to_data_and_end_of_data(option: str, code: int) -> None:
    sink = MailSink(**{option: (code, "4.0.0 chosen" if code < 500 else "5.0.0 chosen")})
    await sink.start()
    try:
        result = await send_message(
            "127.0.0.1",
            sink.port,
            sender="a@example.com",
            recipients=["b@example.org"],
            body=b"x\r\n",
        )
    finally:
        await sink.stop()
    answered = result.data if option == "data_reply" else result.end
    assert answered is not None and answered.code == code
    assert result.accepted == (code == 250)
    assert len(sink.messages) == (1 if code == 250 else 0)


async def test_refused_or_missing_starttls(certs: Certs) -> None:
    refusing = MailSink(starttls_context=certs.server(), refuse_starttls=True)
    plain = MailSink()
    for sink in (refusing, plain):
        await sink.start()
    try:
        for sink, why in ((refusing, "STARTTLS refused: 454"), (plain, "STARTTLS not offered")):
            with pytest.raises(SendError, match=why):
                await send_message(
                    "127.0.0.1",
                    sink.port,
                    sender="a@example.com",
                    recipients=["b@example.org"],
                    body=b"x\r\n",
                    starttls=certs.client(),
                    require_starttls=True,
                )
        # Opportunistic: refused STARTTLS means delivery in clear.
        result = await send_message(
            "127.0.0.1",
            refusing.port,
            sender="a@example.com",
            recipients=["b@example.org"],
            body=b"x\r\n",
            starttls=certs.client(),
        )
    finally:
        for sink in (refusing, plain):
            await sink.stop()
    assert result.accepted and result.tls_version == "none"
    assert refusing.messages[0].tls_version == "none" and plain.messages == []


async def test_message_size_limit_and_bare_newlines(tmp_path: Path) -> None:
    sink = MailSink(limits=ServerLimits(max_message_size=1000), spool_dir=tmp_path / "spool")
    await sink.start()
    try:
        big, bare = await asyncio.gather(
            send_message(
                "127.0.0.1",
                sink.port,
                sender="a@x.example",
                recipients=["b@x.example"],
                body=b"y" * 900 + b"\r\n" * 200,
            ),
            # send_message canonicalises bare LF; the sink stores CRLF.
            send_message(
                "127.0.0.1",
                sink.port,
                sender="a@x.example",
                recipients=["c@x.example"],
                body=b"one\ntwo\n.\n",
            ),
        )
    finally:
        await sink.stop()
    assert big.end is not None and (big.end.code, big.end.lines) == (
        552,
        (b"5.3.4 Message size exceeds fixed maximum message size",),
    )
    assert bare.accepted
    (message,) = sink.messages
    assert message.data == b"one\r\ntwo\r\n.\r\n"
    emls = sorted((tmp_path / "spool").glob("*.eml"))
    assert [p.read_bytes() for p in emls] == [message.data]
    meta = json.loads(emls[0].with_suffix(".json").read_text())
    assert meta == {
        "sender": "a@x.example",
        "recipients": ["c@x.example"],
        "tls_version": "none",
        "cipher": "none",
    }


async def test_errors_idle_timeout_and_stop_close_connections() -> None:
    sink = MailSink(limits=ServerLimits(max_errors=2), idle_timeout=0.3)
    await sink.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
        writer.write(b"FOO\r\nBAR\r\nNOOP\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.endswith(b"421 4.7.0 Too many errors, closing connection\r\n")
        assert b"250 " not in data
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
        assert (
            await asyncio.wait_for(reader.read(), 5) == b"220 sink.test ESMTP\r\n"
        )  # idle: closed
        writer.close()
        sink.idle_timeout = 30
        reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
        assert await reader.readline() == b"220 sink.test ESMTP\r\n"
    finally:
        await asyncio.wait_for(sink.stop(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", sink.port)


def test_under_uvloop_with_starttls_and_implicit_tls(certs: Certs) -> None:
    async def scenario() -> tuple[str, str, list[bytes]]:
        explicit = MailSink(starttls_context=certs.server())
        implicit = MailSink(implicit_tls_context=certs.server())
        await explicit.start()
        await implicit.start()
        try:
            big = b"".join(b".%05d " % i + b"q" * 60 + b"\r\n" for i in range(30_000))  # ~2 MB
            one = await send_message(
                "127.0.0.1",
                explicit.port,
                sender="a@example.com",
                recipients=["b@example.org"],
                body=big,
                starttls=certs.client(),
                require_starttls=True,
                server_hostname="localhost",
            )
            two = await send_message(
                "127.0.0.1",
                implicit.port,
                sender="a@example.com",
                recipients=["b@example.org"],
                body=body(2),
                implicit_tls=certs.client(),
            )
            assert one.accepted and two.accepted
            return (
                one.tls_version,
                two.tls_version,
                [
                    explicit.messages[0].data,
                    implicit.messages[0].data,
                    big,
                ],
            )
        finally:
            await explicit.stop()
            await implicit.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        v1, v2, (got_big, got_small, big) = runner.run(asyncio.wait_for(scenario(), 30))
    assert v1 in ("TLSv1.2", "TLSv1.3") and v2 in ("TLSv1.2", "TLSv1.3")
    assert got_big == big and got_small == body(2)
