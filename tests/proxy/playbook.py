"""Scripted conversations with the sans-IO proxy session: no sockets, no loop.

A script is a list of lines; each names a side and what crosses it, in the
order the session must produce or receive it:

- ``C: line``  the client sends (consecutive ``C:`` lines are one packet: a
  pipelined batch);
- ``S: line``  the session writes to the client (consecutive lines: exactly
  one write);
- ``U: line``  the session writes to the upstream (consecutive lines: exactly
  one write, body chunks and dot included);
- ``R: line``  the upstream replies (consecutive lines: one packet);
- ``> open MODE`` / ``> open MODE in clear``  the session asks for an upstream
  leg of that TLS mode (``required``, ``opportunistic``, ``none``), with or
  without STARTTLS; ``> open MODE to HOST`` also names the next hop's host;
- ``> resolve DOMAIN``  the session asks for the next hops of DOMAIN
  (``upstream = "mx"``), answered by ``< route HOST@PREF HOST@PREF ...`` (MX
  hosts in the order to try; ``HOST`` alone: an implicit MX) or
  ``< no route null-mx|dns-temporary|no-domain|no-mail-server REASON``;
- ``> starttls client|upstream``, ``> release``, ``> abort``, ``> close``:
  the other commands;
- ``< connected``, ``< connected tls`` (implicit TLS), ``< reused`` (a parked
  leg), ``< connect failed REASON``, ``< connect failed tls REASON``,
  ``< tls client|upstream``, ``< tls upstream failed-check REASON``,
  ``< tls failed client|upstream REASON``, ``< lost client|upstream``,
  ``< timeout client|upstream``: the events the driver would feed.

After each :meth:`Playbook.play` every command the session produced must
have been named by the script (log records are kept aside in
:attr:`Playbook.logs`). Lines may be indented; ``S:``/``U:``/``C:``/``R:``
lines get CRLF appended (``C-``, ``U-``: no CRLF, a line cut by a read), and a
line that is only ``C:`` or ``U:`` is an empty line (inside a body).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from smtpgate.config import toml_writer
from smtpgate.config.loader import parse_config
from smtpgate.policy.decisions import UpstreamTLS
from smtpgate.proxy.commands import (
    AbortUpstream,
    CloseClient,
    Command,
    Log,
    OpenUpstream,
    ReleaseUpstream,
    ResolveNextHops,
    SendClient,
    SendUpstream,
    StartTLS,
)
from smtpgate.proxy.events import (
    ClientData,
    ConnectionLost,
    NextHopsResolved,
    ProxyEvent,
    Side,
    TimedOut,
    TLSDone,
    TLSFailed,
    UpstreamConnected,
    UpstreamConnectFailed,
    UpstreamData,
)
from smtpgate.proxy.gateway import compile_runtimes
from smtpgate.proxy.interception import Interception
from smtpgate.proxy.runtime import PolicyRuntime
from smtpgate.proxy.session import Session
from smtpgate.proxy.upstream import Opened, TLSFacts, UpstreamLeg, UpstreamTarget
from smtpgate.routing.nexthops import (
    REPLY_DNS_TEMPORARY,
    REPLY_NO_MAIL_SERVER,
    REPLY_NO_SUCH_DOMAIN,
    REPLY_NULL_MX,
    NextHop,
    NoRoute,
    Route,
    Via,
    mx_key,
)
from smtpgate.tls.contexts import TLSContextCache
from smtpgate.tls.result import OK, VerificationResult
from tests.peers.gate_config import gate_config
from tests.proxy.helpers import GENERAL

DATE = "Sun, 29 Nov 2026 12:00:00 -0000"
CLIENT_ADDR = "192.0.2.7:40000"
UPSTREAM_TLS = TLSFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", OK)
CLIENT_TLS = TLSFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256")
#: What ``< no route WORD`` answers.
NO_ROUTE_REPLIES = {
    "null-mx": REPLY_NULL_MX,
    "dns-temporary": REPLY_DNS_TEMPORARY,
    "no-domain": REPLY_NO_SUCH_DOMAIN,
    "no-mail-server": REPLY_NO_MAIL_SERVER,
}
#: What a typical receiving server offers (a parked leg's, so no STARTTLS left to do).
UPSTREAM_KEYWORDS = ("PIPELINING", "8BITMIME", "SIZE 10240000", "DSN")


def runtime(state_dir: Path, **kwargs: Any) -> PolicyRuntime:
    """The policy ``p`` of a configuration built like the end-to-end tests' one."""
    data = gate_config(
        2526,
        gateway={"state_dir": str(state_dir)},
        policy={"listen": "127.0.0.1:2525", **kwargs.pop("policy", {})},
        general={**GENERAL, "received_header": False, **kwargs.pop("general", {})},
        **kwargs,
    )
    config = parse_config(toml_writer.dumps(data), state_dir)
    return compile_runtimes(config, TLSContextCache())["p"]


def route(*hosts: str, port: int = 25) -> Route:
    """MX hosts ``name@preference`` in the order to try (one address each, from
    192.0.2.0/24); a bare ``name`` is the implicit MX of a domain without MX records."""
    hops: list[NextHop] = []
    for i, text in enumerate(hosts, start=1):
        name, _, preference = text.partition("@")
        via = Via.MX if preference else Via.IMPLICIT_MX
        hops.append(NextHop(name, port, f"192.0.2.{i}", int(preference or 0), via))
    return Route(tuple(hops), mx_key([(h.preference or 0, h.host) for h in hops]))


def parked_leg(
    target: UpstreamTarget, keywords: tuple[str, ...] = UPSTREAM_KEYWORDS
) -> UpstreamLeg:
    """A leg another session opened and left at rest, as the pool hands it out."""
    leg = UpstreamLeg(target)
    leg.receive_data(b"220 upstream.test ESMTP\r\n")
    greeting = leg.next_reply()
    assert greeting is not None and leg.opening_reply(greeting) is Opened.CONTINUE
    leg.data_to_send()  # the EHLO
    lines = ("upstream.test", *keywords)
    leg.receive_data(
        b"".join(
            b"250" + (b" " if i == len(lines) - 1 else b"-") + line.encode() + b"\r\n"
            for i, line in enumerate(lines)
        )
    )
    ehlo = leg.next_reply()
    assert ehlo is not None and leg.opening_reply(ehlo) is Opened.READY and leg.at_rest
    leg.reused = True
    return leg


class Playbook:
    def __init__(
        self,
        rt: PolicyRuntime,
        *,
        client_tls: bool = False,
        client: str = CLIENT_ADDR,
        interception: Interception | None = None,
    ) -> None:
        self.rt = rt
        self.session = Session(
            rt,
            "s1",
            client,
            client_tls=CLIENT_TLS if client_tls else None,
            received_date=lambda: DATE,
            interception=interception,
        )
        self.outbox: deque[Command] = deque()
        self.logs: list[tuple[str, dict[str, Any]]] = []
        self.target: UpstreamTarget | None = None
        self.leg: UpstreamLeg | None = None
        #: The last leg the session released.
        self.released: UpstreamLeg | None = None
        self._take(self.session.start())

    # -- reading the results ----------------------------------------------------------------

    def records(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.logs if name == event]

    def record(self, event: str) -> dict[str, Any]:
        found = self.records(event)
        assert len(found) == 1, (event, self.logs)
        return found[0]

    # -- playing ------------------------------------------------------------------------------

    def play(self, script: str) -> Playbook:
        for kind, lines in _blocks(script):
            if kind == "C":
                self._feed(ClientData(b"".join(lines)))
            elif kind == "R":
                self._feed(UpstreamData(b"".join(lines)))
            elif kind == "S":
                command = self._next(SendClient, script_line=lines)
                assert isinstance(command, SendClient)
                assert command.data == b"".join(lines), (command.data, b"".join(lines))
            elif kind == "U":
                command = self._next(SendUpstream, script_line=lines)
                assert isinstance(command, SendUpstream)
                sent = b"".join(bytes(chunk) for chunk in command.data)
                assert sent == b"".join(lines), (sent, b"".join(lines))
            elif kind == ">":
                for line in lines:
                    self._expect(line.decode())
            else:
                for line in lines:
                    self._event(line.decode())
        assert not self.outbox, f"commands the script did not name: {list(self.outbox)}"
        return self

    def _expect(self, line: str) -> None:
        words = line.split()
        if words[0] == "open":
            command = self._next(OpenUpstream, script_line=line)
            assert isinstance(command, OpenUpstream)
            fresh = "fresh" in words  # a new connection, never a parked one
            if fresh:
                words.remove("fresh")
            assert command.fresh is fresh, (command, line)
            if "to" in words:
                at = words.index("to")
                assert command.target.host == words[at + 1], (command.target.hop, line)
                del words[at : at + 2]
            assert command.target.mode is UpstreamTLS(words[1]), (command, line)
            assert command.target.starttls is (words[2:] != ["in", "clear"]) or (
                command.target.mode is UpstreamTLS.NONE
            ), (command, line)
            self.target = command.target
        elif words[0] == "resolve":
            command = self._next(ResolveNextHops, script_line=line)
            assert isinstance(command, ResolveNextHops) and command.domain == words[1], command
        elif words[0] == "starttls":
            command = self._next(StartTLS, script_line=line)
            assert isinstance(command, StartTLS) and command.side is Side(words[1])
        elif words[0] == "release":
            command = self._next(ReleaseUpstream, script_line=line)
            assert isinstance(command, ReleaseUpstream)
            self.released = command.leg
        elif words[0] == "abort":
            self._next(AbortUpstream, script_line=line)
        elif words[0] == "close":
            self._next(CloseClient, script_line=line)
        else:
            raise ValueError(f"unknown command line {line!r}")

    def _event(self, line: str) -> None:
        words = line.split()
        event: ProxyEvent
        if words[0] == "connected":
            assert self.target is not None
            tls = words[1:] == ["tls"]
            self.leg = UpstreamLeg(self.target, UPSTREAM_TLS if tls else TLSFacts())
            event = UpstreamConnected(self.leg)
        elif words[0] == "reused":
            assert self.target is not None
            self.leg = parked_leg(self.target)
            event = UpstreamConnected(self.leg)
        elif words[:2] == ["connect", "failed"]:
            tls = words[2:3] == ["tls"]
            event = UpstreamConnectFailed(" ".join(words[3 if tls else 2 :]), tls=tls)
        elif words[0] == "tls" and words[1:2] == ["failed"]:
            event = TLSFailed(Side(words[2]), " ".join(words[3:]))
        elif words[0] == "tls":
            side = Side(words[1])
            facts = UPSTREAM_TLS if side is Side.UPSTREAM else CLIENT_TLS
            if words[2:3] == ["failed-check"]:
                reason = " ".join(words[3:])
                facts = TLSFacts(facts.version, facts.cipher, VerificationResult("failed", reason))
            event = TLSDone(side, facts)
        elif words[0] == "route":
            event = NextHopsResolved("", route(*words[1:]))
        elif words[:2] == ["no", "route"]:
            event = NextHopsResolved("", NoRoute(NO_ROUTE_REPLIES[words[2]], " ".join(words[3:])))
        elif words[0] == "lost":
            event = ConnectionLost(Side(words[1]), " ".join(words[2:]))
        elif words[0] == "timeout":
            event = TimedOut(Side(words[1]))
        else:
            raise ValueError(f"unknown event line {line!r}")
        self._feed(event)

    def _feed(self, event: ProxyEvent) -> None:
        self._take(self.session.handle(event))

    def _take(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Log):
                self.logs.append((command.event, command.fields))
            else:
                self.outbox.append(command)

    def _next(self, kind: type, script_line: object) -> Command:
        assert self.outbox, f"the session produced nothing for {script_line!r}"
        command = self.outbox.popleft()
        assert isinstance(command, kind), f"{command!r} where the script has {script_line!r}"
        return command


def _blocks(script: str) -> list[tuple[str, list[bytes]]]:
    """Runs of lines of the same kind; ``>`` and ``<`` lines are kept one per entry."""
    blocks: list[tuple[str, list[bytes]]] = []
    for raw in script.splitlines():
        raw = raw.lstrip()
        if not raw:
            continue
        if raw[0] in "<>":
            blocks.append((raw[0], [raw[1:].strip().encode()]))
            continue
        side, sep, text = raw[:1], raw[1:3], raw[3:]
        if raw.rstrip() in ("C:", "U:", "S:", "R:"):
            sep, text = ": ", ""
        if side not in ("C", "S", "U", "R") or sep not in (": ", "- "):
            raise ValueError(f"script line must start with C:, S:, U:, R:, > or <: {raw!r}")
        line = text.encode("utf-8") + (b"\r\n" if sep == ": " else b"")
        if blocks and blocks[-1][0] == side:
            blocks[-1][1].append(line)
        else:
            blocks.append((side, [line]))
    return blocks
