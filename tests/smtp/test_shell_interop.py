"""The project's own test peers against real ones over real sockets on 127.0.0.1.

- Python's smtplib and swaks deliver to the scripted upstream (plain, STARTTLS,
  implicit TLS): what the e2e tests and the benchmark rely on holds with real clients.
- send_message (the sending peer, on the SMTP core's client role) delivers to an
  aiosmtpd server that insists on STARTTLS.
- STARTTLS injection over a real socket: ``STARTTLS\\r\\nRSET\\r\\n`` in one packet.
"""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from smtpgate.reserved_port import ReservedPort
from tests.peers.certs import TestPKI
from tests.peers.mailsender import SendError, send_message
from tests.peers.scripted_upstream import ScriptedUpstream

pytestmark = pytest.mark.timeout(60)

SWAKS = "/usr/bin/swaks"
BODY = (
    b"Subject: interop\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"\r\n"
    b"last line\r\n"
)


def _upstream(**tls: Any) -> ScriptedUpstream:
    return ScriptedUpstream(
        hostname="sink.test",
        greeting=b"220 sink.test ESMTP\r\n",
        ehlo_keywords=("PIPELINING", "SIZE 10485760", "8BITMIME"),
        **tls,
    )


@pytest.fixture
async def sink(pki: TestPKI) -> AsyncIterator[ScriptedUpstream]:
    async with _upstream(starttls_context=pki.server_context()) as sink:
        yield sink


@pytest.fixture
async def tls_sink(pki: TestPKI) -> AsyncIterator[ScriptedUpstream]:
    async with _upstream(implicit_tls_context=pki.server_context()) as sink:
        yield sink


# -- smtplib -> the scripted upstream ------------------------------------------------------


def _smtplib_send(port: int, mode: str, context: ssl.SSLContext | None) -> dict[str, Any]:
    cls = smtplib.SMTP_SSL if mode == "implicit" else smtplib.SMTP
    kwargs: dict[str, Any] = {"context": context} if mode == "implicit" else {}
    with cls("127.0.0.1", port, timeout=20, **kwargs) as smtp:
        smtp.ehlo("client.test")
        if mode == "starttls":
            assert smtp.has_extn("starttls")
            smtp.starttls(context=context)
            smtp.ehlo("client.test")
            assert not smtp.has_extn("starttls")
        assert smtp.has_extn("pipelining") and smtp.has_extn("size")
        refused = smtp.sendmail("alice@example.com", ["bob@example.org", "carol@example.org"], BODY)
        return refused


@pytest.mark.parametrize("mode", ["plain", "starttls", "implicit"])
async def test_smtplib_delivers_to_scripted_upstream(
    mode: str, sink: ScriptedUpstream, tls_sink: ScriptedUpstream, pki: TestPKI
) -> None:
    target = tls_sink if mode == "implicit" else sink
    refused = await asyncio.to_thread(_smtplib_send, target.port, mode, pki.client_context())
    assert refused == {}
    (message,) = await target.wait_for(1)
    assert message.sender == "alice@example.com"
    assert message.recipients == ["bob@example.org", "carol@example.org"]
    assert message.content == BODY
    if mode == "plain":
        assert (message.tls_version, message.cipher) == ("none", "none")
    else:
        assert message.tls_version in ("TLSv1.2", "TLSv1.3") and message.cipher != "none"


# -- swaks -> the scripted upstream --------------------------------------------------------


async def _swaks(*args: str) -> tuple[int, str]:
    assert shutil.which(SWAKS), f"{SWAKS} is required for this test (apt-get install swaks)"
    proc = await asyncio.create_subprocess_exec(
        SWAKS,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("mode", "flag"), [("plain", None), ("starttls", "--tls"), ("implicit", "--tlsc")]
)
async def test_swaks_delivers_to_scripted_upstream(
    mode: str, flag: str | None, sink: ScriptedUpstream, tls_sink: ScriptedUpstream
) -> None:
    target = tls_sink if mode == "implicit" else sink
    args = [
        "--server", "127.0.0.1", "--port", str(target.port),
        "--helo", "swaks.test",
        "--from", "sender@example.com",
        "--to", "rcpt1@example.org,rcpt2@example.org",
        "--header", "Subject: swaks interop",
        "--body", "hello from swaks\n.dotted line\nend",
        "--pipeline",
        "--timeout", "20",
    ]  # fmt: skip
    if flag:
        args.append(flag)
    code, transcript = await _swaks(*args)
    assert code == 0, transcript
    (message,) = await target.wait_for(1)
    assert message.sender == "sender@example.com"
    assert message.recipients == ["rcpt1@example.org", "rcpt2@example.org"]
    assert b"Subject: swaks interop\r\n" in message.content
    assert b"\r\n\r\nhello from swaks\r\n.dotted line\r\nend\r\n" in message.content
    assert message.content.count(b"\r\n") == message.content.count(b"\n")
    if mode == "plain":
        assert message.tls_version == "none"
        assert "STARTTLS" in transcript  # offered, not used
    else:
        assert message.tls_version in ("TLSv1.2", "TLSv1.3")
        assert "TLS started" in transcript


async def test_swaks_sees_refused_starttls(pki: TestPKI) -> None:
    sink = _upstream(starttls_reply=b"454 4.7.0 TLS not available\r\n")
    port = await sink.start()
    try:
        code, transcript = await _swaks(
            "--server", "127.0.0.1", "--port", str(port), "--to", "x@example.org",
            "--tls", "--timeout", "20",
        )  # fmt: skip
    finally:
        await sink.stop()
    assert code != 0
    assert "454 4.7.0 TLS not available" in transcript
    assert sink.messages == []


# -- send_message -> aiosmtpd ----------------------------------------------------------------


class _Collect:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append((envelope, session.ssl is not None))
        return "250 2.0.0 Message accepted for delivery"


async def test_send_message_delivers_to_aiosmtpd_over_starttls(pki: TestPKI) -> None:
    handler = _Collect()
    reserved = ReservedPort()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=reserved.port,
        tls_context=pki.server_context(),
        require_starttls=True,
        ready_timeout=10,
    )
    with reserved:  # held until aiosmtpd listens
        await asyncio.to_thread(controller.start)
    try:
        body = BODY + b"x" * 990 + b"\r\n" + b".\r\n" * 3
        result = await send_message(
            "127.0.0.1",
            controller.port,
            sender="alice@example.com",
            recipients=["bob@example.org", "carol@example.org"],
            body=body,
            starttls=pki.client_context(),
            require_starttls=True,
            server_hostname="localhost",
            timeout=20,
        )
        # Without STARTTLS aiosmtpd refuses the transaction: send_message must not go on in clear.
        with pytest.raises(SendError):
            await send_message(
                "127.0.0.1",
                controller.port,
                sender="a@example.com",
                recipients=["b@example.org"],
                body=b"x\r\n",
                starttls=None,
                require_starttls=True,
                timeout=20,
            )
    finally:
        await asyncio.to_thread(controller.stop)
    assert result.accepted, result
    assert result.ehlo is not None  # aiosmtpd does not offer PIPELINING: this was lockstep
    assert not any(line.upper().startswith(b"PIPELINING") for line in result.ehlo.lines)
    assert result.end is not None and result.end.lines == (b"2.0.0 Message accepted for delivery",)
    assert result.tls_version in ("TLSv1.2", "TLSv1.3") and result.cipher != "none"
    assert [r.code for r in result.rcpts] == [250, 250]
    ((envelope, over_tls),) = handler.envelopes
    assert over_tls
    assert envelope.mail_from == "alice@example.com"
    assert envelope.rcpt_tos == ["bob@example.org", "carol@example.org"]
    assert envelope.original_content == body  # byte-identical after stuffing and unstuffing


# -- STARTTLS injection over a real socket ---------------------------------------------------


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    lines = b""
    while True:
        line = await reader.readline()
        assert line, f"connection closed after {lines!r}"
        lines += line
        if line[3:4] != b"-":
            return lines


async def test_commands_pipelined_after_starttls_are_not_executed(
    sink: ScriptedUpstream, pki: TestPKI
) -> None:
    async with asyncio.timeout(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
        assert (await _read_reply(reader)).startswith(b"220 sink.test")
        writer.write(b"EHLO attacker.test\r\n")
        assert (await _read_reply(reader)).endswith(b"250 STARTTLS\r\n")
        writer.write(b"STARTTLS\r\nRSET\r\n")  # one packet
        await writer.drain()
        assert await _read_reply(reader) == b"220 2.0.0 Ready to start TLS\r\n"
        await writer.start_tls(pki.client_context(), server_hostname="localhost")
        writer.write(b"EHLO attacker.test\r\n")
        ehlo = await _read_reply(reader)
        assert ehlo.startswith(b"250-sink.test\r\n"), ehlo  # not the "250 2.0.0 Ok" of a RSET
        assert b"STARTTLS" not in ehlo
        writer.write(b"NOOP\r\nQUIT\r\n")
        assert await _read_reply(reader) == b"250 2.0.0 Ok\r\n"
        assert await _read_reply(reader) == b"221 2.0.0 Bye\r\n"
        assert await reader.read() == b""
        writer.close()
    assert sink.commands == [
        b"EHLO attacker.test",
        b"STARTTLS",
        b"EHLO attacker.test",
        b"NOOP",
        b"QUIT",
    ]
