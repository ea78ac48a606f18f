"""A bounded load of real SMTP sessions against ``smtpgate serve``, every message
marked, for the tests that signal or kill serve under load (test_signals_under_load,
test_workers): what each client saw per marker, and each marker's copies upstream."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smtpgate.smtp import UpstreamProtocolError
from tests.peers import wait_until
from tests.peers.mailsender import OutgoingMessage, SendError, open_session
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.proxy.helpers import LoopThread

MakeRaw = Callable[..., ScriptedUpstream]

CLIENTS = 12
SESSIONS = 10  # per client, at most
MESSAGES = 3  # per session
#: The outcome of a message whose connection smtpgate never served.
NOT_SERVED = "not served"


@dataclass
class Load:
    """What every client saw, per message marker."""

    replies: dict[str, str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def acknowledged(self) -> set[str]:
        return {marker for marker, reply in self.replies.items() if reply.startswith("250")}


async def session(port: int, markers: list[str], load: Load) -> bool:
    """One session of ``len(markers)`` messages, sent by the project's sending MTA
    (:mod:`tests.peers.mailsender`); False when smtpgate did not serve it (refused, or
    closed before the session could start: nothing was sent)."""
    try:
        opened = await open_session("127.0.0.1", port, timeout=30)
    except (OSError, SendError, UpstreamProtocolError):
        for marker in markers:
            load.replies[marker] = NOT_SERVED
        return False
    for marker in markers:
        load.replies[marker] = "no reply"  # until one comes
    try:
        for marker in markers:
            result = await opened.send(message(marker))
            answer = result.end or result.data or (result.rcpts or [result.mail])[-1]
            load.replies[marker] = str(answer)
        await opened.quit()
    except (OSError, TimeoutError, UpstreamProtocolError):
        pass  # cut: what each message got is recorded
    finally:
        opened.close()
    return True


def message(marker: str) -> OutgoingMessage:
    body = f"Subject: load\r\nMessage-Id: <{marker}@client.test>\r\n\r\n".encode()
    return OutgoingMessage(
        "load@sender.example", [f"{marker}@rcpt.example"], body + b"some body text\r\n" * 50
    )


async def client(port: int, number: int, load: Load) -> None:
    for s in range(SESSIONS):
        if load.stop.is_set():
            return
        markers = [f"c{number}s{s}m{m}" for m in range(MESSAGES)]
        if not await session(port, markers, load):
            return  # smtpgate no longer serves: a real MTA would queue and retry later


async def run_load(port: int, load: Load) -> None:
    await asyncio.gather(*(client(port, n, load) for n in range(CLIENTS)))


def upstream_copies(upstream: ScriptedUpstream) -> Counter[str]:
    found: Counter[str] = Counter()
    for message in upstream.messages:
        marker = message.wire.partition(b"Message-Id: <")[2].partition(b"@")[0]
        found[marker.decode()] += 1
    return found


async def make_load() -> Load:
    return Load()  # its Event belongs to the loop thread


def start_load(loop: LoopThread, gate: SmtpgateProcess, load: Load) -> Any:
    return asyncio.run_coroutine_threadsafe(run_load(gate.port(), load), loop.loop)


def wait_accepted(upstream: ScriptedUpstream, count: int) -> None:
    wait_until(
        lambda: upstream.accepted >= count,
        lambda: f"{upstream.accepted} of {count} messages upstream",
        timeout=30,
    )
