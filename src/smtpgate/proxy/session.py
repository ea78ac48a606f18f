"""One client connection, sans-IO: events in, commands out.

The driver (:mod:`smtpgate.proxy.driver`) turns I/O into
:mod:`~smtpgate.proxy.events` and hands each to :meth:`Session.handle`, which
returns the :mod:`~smtpgate.proxy.commands` to carry out, in order. Nothing
here awaits, reads a clock or touches a socket, so every conversation can be
played in a test (tests/proxy/test_session_*.py).

Where things stand, each in one place:

- the client leg's SMTP dialogue: :attr:`Session.server` (the SMTP core);
- the envelope of the transaction in progress: :attr:`Session.txn`
  (None outside a transaction);
- the upstream dialogue, and so how far the transaction got upstream:
  :attr:`UpstreamLeg.state <smtpgate.proxy.upstream.UpstreamLeg.state>` of
  :attr:`Session.leg`;
- which client command waits for the upstream's answer: :attr:`Session.pending`.

Decisions come from :mod:`smtpgate.policy` (pure functions); this module
carries them out. Replies produced while handling a batch of pipelined
commands leave in one write, and body bytes leave with the final dot.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from smtpgate.config.netaddr import HostPort
from smtpgate.logs import describe_error
from smtpgate.policy.decisions import (
    REPLY_MUST_STARTTLS,
    REPLY_OTHER_TRANSACTION,
    UpstreamTLS,
    checked_domain,
    reject_mail_from_in_clear,
    reject_rcpt_in_clear,
    upstream_tls,
)
from smtpgate.policy.patterns import normalize_domain
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
from smtpgate.proxy.interception import Interception
from smtpgate.proxy.message_id import MessageIdScanner
from smtpgate.proxy.runtime import PolicyRuntime
from smtpgate.proxy.upstream import (
    CLEAR,
    Dropped,
    LegState,
    Opened,
    TLSFacts,
    UpstreamLeg,
    UpstreamTarget,
    UpstreamUnavailable,
    connect_failed,
    connect_failure,
)
from smtpgate.routing.nexthops import NoRoute, Route, configured_route
from smtpgate.smtp.address import Address
from smtpgate.smtp.client import UpstreamProtocolError
from smtpgate.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthAborted,
    AuthRequested,
    AuthResponse,
    BodyChunk,
    BodyEnd,
    BodyInvalid,
    ChunkEnd,
    ChunkRequested,
    ConnectionClosed,
    DataRequested,
    Hello,
    MailFrom,
    RcptTo,
    Reply,
    Reset,
    StartTLSRequested,
)
from smtpgate.smtp.server import ServerConnection, State

REPLY_UPSTREAM_FAILED: Final = (
    451,
    "4.4.2 Upstream connection lost, message not delivered, try later",
)
"""The upstream leg failed during a transaction (SPEC 2.3): always temporary."""

REPLY_CLIENT_TIMEOUT: Final = b"421 4.4.2 Timeout, closing connection\r\n"

REPLY_AUTH_UNAVAILABLE: Final = (454, "4.7.0 Temporary authentication failure")
"""AUTH could not be relayed: the upstream leg cannot be opened, or not encrypted, or was
lost during the exchange (RFC 4954 section 6); the reason is in the ``auth`` record."""

#: Log reasons for a refusal that the rules, not a peer, decided.
REASON_CLIENT_IN_CLEAR = "the rule requires an encrypted client leg"
LOST_EARLIER = "upstream connection lost earlier in this transaction"
AUTHENTICATED_LEG_LOST = "the authenticated upstream connection is gone"

#: What a Received: token may hold: a host name, an address (literal), a TLS version or
#: cipher name. Nothing that ends a line, a comment or the header's token list.
_NOT_IN_TOKEN = re.compile(r"[^A-Za-z0-9.:\-\[\]_/+=]+")


def _text(address: HostPort | None) -> str:
    return "" if address is None else str(address)


def _token(text: str) -> str:
    """``text`` with every run of characters not allowed in a header token as one ``?``."""
    return _NOT_IN_TOKEN.sub("?", text) or "?"


# Tuples, not sets: membership by identity, without Enum.__hash__ (a Python call) per test.
_OPENING: Final = (LegState.GREETING, LegState.HELLO, LegState.STARTTLS)
#: The leg is in a handshake (the driver answers) or gone: no reply to read.
_NOT_READING: Final = (LegState.HANDSHAKE, LegState.LOST)


class Transaction:
    """The envelope of one MAIL ... end-of-data as the client gave it, and the facts
    its log record gives."""

    __slots__ = (
        "binarymime",
        "body_transfer",
        "checked_domain",
        "chunk_refusal",
        "final_reply",
        "headers",
        "mail_params",
        "mode",
        "recipient_domains",
        "recipients",
        "refused_reply",
        "relay_seconds",
        "route",
        "rule",
        "sender",
        "sender_address",
        "sender_domain",
        "size",
        "smtputf8",
    )

    def __init__(
        self,
        sender: Address,
        sender_domain: str,
        mail_params: bytes,
        *,
        smtputf8: bool,
        binarymime: bool = False,
    ) -> None:
        #: The reverse-path as relayed upstream; ``sender_address`` is its parsed form, for the log.
        self.sender = sender.path
        self.sender_address = sender
        self.sender_domain = sender_domain
        self.mail_params = mail_params
        #: MAIL had SMTPUTF8: only an upstream that offers SMTPUTF8 may get it (RFC 6531 3.4).
        self.smtputf8 = smtputf8
        #: MAIL had BODY=BINARYMIME: only BDAT to an upstream with BINARYMIME may carry it.
        self.binarymime = binarymime
        #: How the body travelled: "data", "bdat" (relayed as BDAT), "bdat-to-data".
        self.body_transfer = ""
        #: The upstream's first refusal of a BDAT chunk, relayed to the client.
        self.chunk_refusal: Reply | None = None
        #: The upstream TLS mode fixed by the first accepted recipient (SPEC 2.2).
        self.mode: UpstreamTLS | None = None
        #: ... and the domain its certificate is checked against ("": the next hop's name).
        self.checked_domain = ""
        #: The next hops fixed by the first accepted recipient: others must share them.
        self.route: Route | None = None
        self.recipient_domains: list[str] = []
        #: The accepted recipients, as the client gave them; formatted only for the record.
        self.recipients: list[Address] = []
        #: The last refusal of a recipient, for the summary when none was accepted.
        self.refused_reply = 0
        self.rule = ""
        #: Content bytes the client sent (unstuffed, without our Received: header).
        self.size = 0
        self.headers = MessageIdScanner()
        #: From the final dot relayed to the upstream's verdict; None without a verdict.
        self.relay_seconds: float | None = None
        #: The upstream's answer to the final dot (it names the message in the next queue).
        self.final_reply: Reply | None = None

    def record(
        self, outcome: str, reply: int, *, addresses: bool, upstream_reused: bool
    ) -> dict[str, Any]:
        """This transaction's fields of the ``transaction`` record (docs/logs.md)."""
        fields: dict[str, Any] = {
            "rule": self.rule or "default",
            "sender_domain": self.sender_domain,
            "recipient_domains": self.recipient_domains,
        }
        if addresses:
            fields["sender"] = log_address(self.sender_address)
            fields["recipients"] = [str(r) for r in self.recipients]
        fields["size"] = self.size
        fields["body_transfer"] = self.body_transfer
        fields["message_id"] = self.headers.message_id()
        fields["outcome"] = outcome
        fields["reply"] = reply
        fields["upstream_reused"] = upstream_reused
        fields["relay_ms"] = milliseconds(self.relay_seconds)
        final = self.final_reply
        fields["upstream_reply"] = f"{final.code} {final.text}" if final is not None else ""
        return fields


def _outcome(code: int) -> str:
    """A transaction's outcome by the reply that ended it."""
    return "delivered" if code < 300 else "tempfail" if code < 500 else "rejected"


def milliseconds(seconds: float | None) -> float | None:
    """A duration as records give it: milliseconds to the microsecond, None when unknown."""
    return None if seconds is None else round(seconds * 1000, 3)


def log_address(address: Address) -> str:
    """An envelope address as records show it; the null sender is ``<>``."""
    return str(address) or "<>"


def closed_by_core_reason(server: ServerConnection, event: ConnectionClosed) -> str:
    """The ``session_end`` reason when the client-leg core closed the connection."""
    if event.reason == "quit":
        return "client_quit"
    if server.errors >= server.limits.max_errors:
        return "too_many_errors"
    if server.commands > server.limits.max_commands:
        return "too_many_commands"
    return "input_flood"  # more unanswered input than the core holds


def hop_fields(leg: UpstreamLeg | None) -> dict[str, Any]:
    """More of the next hop a leg went to than its ``upstream`` (``host:port``), as
    records show it (docs/logs.md)."""
    if leg is None:
        return {
            "next_hop_address": "",
            "mx_preference": None,
            "next_hop_via": "",
            "tls_name": "",
        }
    hop = leg.target.hop
    return {
        "next_hop_address": leg.peer or hop.address,
        "mx_preference": hop.preference,
        "next_hop_via": str(hop.via),
        # The name sent as SNI and, under validate_certificates, checked in the certificate.
        "tls_name": leg.target.tls_name if leg.tls.version != "none" else "",
    }


# -- what waits for the upstream ------------------------------------------------------------------


def all_hops_failed(pending: AwaitRcpt | AwaitAuth, last: str) -> str:
    """The reason logged when the last of several next hops failed too."""
    hops = pending.route.hops
    tried = "; ".join([*pending.failures, f"{hops[pending.hop]}: {last}"])
    return f"all {len(hops)} next hops failed: {tried}"


@dataclass(slots=True)
class AwaitRoute:
    """A RCPT whose next hops are being looked up (``upstream = "mx"``)."""

    event: RcptTo
    domain: str
    rule: str
    mode: UpstreamTLS
    checked_domain: str


@dataclass(slots=True)
class AwaitRcpt:
    """A RCPT relayed upstream (opening the leg first when needed)."""

    event: RcptTo
    domain: str
    rule: str
    mode: UpstreamTLS
    route: Route
    #: The domain the certificate is checked against; "": each next hop's host name.
    checked_domain: str = ""
    #: Which of ``route.hops`` is tried (the next one when it cannot be opened).
    hop: int = 0
    #: Why the hops tried before failed, for the log when all do.
    failures: list[str] = field(default_factory=list)
    #: This RCPT carries the transaction's MAIL upstream.
    mail_here: bool = False
    #: ... and the upstream accepted it (a reused leg lost before that is replaced once).
    mail_accepted: bool = False
    retried: bool = False
    data_pipelined: bool = False
    mail_refusal: Reply | None = None
    answer: Reply | None = None


@dataclass(slots=True)
class AwaitData:
    """DATA relayed (or pipelined earlier); the 354 is owed. ``chunk``: for a client's
    first BDAT, converted to DATA (its octets are read after the 354)."""

    chunk: bool = False


@dataclass(slots=True)
class AwaitChunks:
    """BDAT chunks relayed whose replies are owed. ``answer``: the client's chunk
    ends here and gets its reply once they are in (None: flow control mid-chunk)."""

    answer: ChunkEnd | None = None


@dataclass(slots=True)
class AwaitEnd:
    """The final dot relayed; the upstream's verdict on the message is owed."""

    #: When the dot left (the session's clock), for ``relay_ms``.
    since: float = 0.0


@dataclass(slots=True)
class AwaitReset:
    """RSET relayed; ``then`` is the EHLO/HELO that ended the transaction, answered after."""

    then: Hello | None = None


@dataclass(slots=True)
class AwaitAuth:
    """AUTH, or a SASL response, relayed (opening the leg first when needed).

    Only the mechanism is ever logged; the SASL payloads stay in the SMTP cores.
    """

    mechanism: str
    route: Route
    #: Credentials cross no clear leg, whatever the rules say.
    mode: UpstreamTLS = UpstreamTLS.REQUIRED
    #: Which of ``route.hops`` is tried (the next one when it cannot be opened).
    hop: int = 0
    failures: list[str] = field(default_factory=list)
    #: AUTH comes before any recipient: the certificate is checked against the next
    #: hop's host name, never a recipient's domain.
    checked_domain: str = ""
    #: The AUTH line to send once the leg is open (its initial response, if any).
    initial_response: bytes | None = field(default=None, repr=False)
    #: The client sent ``*`` (RFC 4954 section 4).
    cancelled: bool = False
    #: The core ended the exchange itself (a response too long or not base64): the
    #: upstream's answer to our ``*`` is not relayed.
    aborted: bool = False


Pending = AwaitRoute | AwaitRcpt | AwaitAuth | AwaitData | AwaitChunks | AwaitEnd | AwaitReset


@dataclass(slots=True)
class Wait:
    """What the driver reads next, and for how long before :class:`TimedOut`."""

    side: Side
    #: The longest silence: restarts on every read.
    timeout: float
    #: Read at most this much: commands come in pieces the core's flood guard takes
    #: (input a client piled up while back-pressure held it waits in the stream).
    max_bytes: int | None = None
    #: The whole phase (one command line; the DATA phase) within this, however the
    #: bytes trickle in; ``deadline_reason`` ends the session when it passes.
    deadline: float | None = None
    deadline_reason: str = "deadline"
    #: Bytes per second the phase must keep up (0: no minimum); see proxy/deadlines.py.
    min_rate: int = 0


class Session:
    def __init__(
        self,
        rt: PolicyRuntime,
        session_id: str,
        client_addr: str,
        *,
        client_tls: TLSFacts | None = None,
        received_date: Callable[[], str],
        log_addresses: bool = True,
        interception: Interception | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``client_tls``: the client leg is TLS from its first byte; None for cleartext.
        ``log_addresses``: records carry envelope addresses (``[logging] addresses``).
        ``interception``: where the client was going (``upstream = "transparent"``).
        ``clock``: seconds, for the durations records give (handshakes, relay)."""
        self.rt = rt
        self.id = session_id
        self.client_addr = client_addr
        self.interception = interception
        #: Where the upstream leg goes: the policy's next hops, or (transparent) the
        #: original destination; None: each recipient domain's MX hosts.
        self.route = rt.route
        if interception is not None and interception.destination is not None:
            self.route = configured_route([interception.destination])
        self.server = ServerConnection(rt.hostname, rt.limits, tls=client_tls is not None)
        self.client_tls = client_tls or CLEAR
        self.received_date = received_date
        self.log_addresses = log_addresses
        #: Why the session ended, for its ``session_end`` record (docs/logs.md).
        self.end_reason = "client_disconnected"
        self.helo_name = ""
        self.txn: Transaction | None = None
        self.leg: UpstreamLeg | None = None
        self.pending: Pending | None = None
        #: The AUTH exchange whose 334 challenge the client is answering.
        self.sasl: AwaitAuth | None = None
        self.closed = False
        self._handshaking = False
        self._clock = clock
        #: When the client's STARTTLS handshake, the opening of the upstream leg and
        #: its TLS handshake began, for ``handshake_ms`` and ``setup_ms``.
        self._client_tls_since = 0.0
        self._opening_since = 0.0
        self._upstream_tls_since: float | None = None
        self._out: list[Command] = []
        self._wait_client = Wait(
            Side.CLIENT,
            rt.command_timeout,
            rt.limits.max_buffer // 2,
            deadline=rt.command_deadline,
            deadline_reason="command_deadline",
        )
        self._wait_body = Wait(
            Side.CLIENT,
            rt.data_timeout,
            deadline=rt.data_deadline,
            deadline_reason="data_deadline",
            min_rate=rt.min_data_rate,
        )
        self._wait_upstream = Wait(Side.UPSTREAM, rt.command_timeout)
        self._wait_verdict = Wait(Side.UPSTREAM, rt.data_timeout)
        #: The ``Received:`` header up to its date, and the hello name, client TLS and
        #: ESMTP it was made for: the same for every message of the session until one
        #: of them changes (:meth:`_received_header`).
        self._received_head: tuple[str, TLSFacts, bool, bytes] | None = None

    @property
    def encrypted(self) -> bool:
        return self.server.tls

    @property
    def wait(self) -> Wait | None:
        """What to read next; None once the session is over."""
        if self.closed:
            return None
        if self.pending is not None:
            return self._wait_verdict if isinstance(self.pending, AwaitEnd) else self._wait_upstream
        return self._wait_body if self.server.reading_body else self._wait_client

    # -- the interface ----------------------------------------------------------------------------

    def start(self) -> list[Command]:
        interception = self.interception
        self._log(
            "session_start",
            session=self.id,
            client=self.client_addr,
            policy=self.rt.name,
            client_tls=self.client_tls.version,
            client_cipher=self.client_tls.cipher,
            tls_resumed=self.client_tls.resumed,
            **({} if interception is None else {"destination": _text(interception.destination)}),
        )
        if interception is not None and interception.reply is not None:
            # Nowhere to relay to (a loop, or no destination): refused before the greeting.
            code, text = interception.reply
            self._log(
                "interception_refused",
                session=self.id,
                client=self.client_addr,
                reason=interception.refusal,
                reply=code,
            )
            self.end_reason = "interception_refused"
            self._out.append(SendClient(f"{code} {text}\r\n".encode()))
            self._close()
            return self._take()
        self.server.greet("ESMTP smtpgate")
        return self._run()

    def handle(self, event: ProxyEvent) -> list[Command]:
        if self.closed:
            return []
        # By exact type through a table: the chain of isinstance tests this replaces
        # ran several times per message.
        if _EVENT_HANDLERS[type(event)](self, event):
            return self._run()
        return self._take()

    def _take(self) -> list[Command]:
        out, self._out = self._out, []
        return out

    # -- the events, one method each; True: go on with what is buffered ------------------------

    def _on_client_data(self, event: ClientData) -> bool:
        self.server.receive_data(event.data)
        return True

    def _on_upstream_data(self, event: UpstreamData) -> bool:
        self._upstream_data(event.data)
        return True

    def _on_upstream_connected(self, event: UpstreamConnected) -> bool:
        self._upstream_connected(event.leg)
        return True

    def _on_upstream_connect_failed(self, event: UpstreamConnectFailed) -> bool:
        self._upstream_connect_failed(event)
        return True

    def _on_next_hops_resolved(self, event: NextHopsResolved) -> bool:
        self._next_hops_resolved(event)
        return True

    def _on_tls(self, event: TLSDone | TLSFailed) -> bool:
        self._tls_result(event)
        return True

    def _on_timed_out(self, event: TimedOut) -> bool:
        if event.side is Side.UPSTREAM:
            self._upstream_failed("upstream timed out")
            return True
        self.end_reason = event.reason  # the timeout, or which deadline or budget ran out
        self._out.append(SendClient(REPLY_CLIENT_TIMEOUT))
        self._end_transaction("aborted", 421)
        self._close()
        return False

    def _on_connection_lost(self, event: ConnectionLost) -> bool:
        if event.side is Side.UPSTREAM:
            self._upstream_failed(event.reason or "upstream closed the connection")
            return True
        # Client gone (or cut by the driver): nothing delivered.
        self.end_reason = event.reason or "client_disconnected"
        self._end_transaction("aborted", 0)
        self._close()
        return False

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> list[Command]:
        """Handle what is buffered on both legs until one must wait for the other; returns
        the commands, with what is queued for each leg last, one write each."""
        server = self.server
        while not self.closed:
            if self.pending is not None:
                if type(self.pending) is AwaitRoute:
                    break  # the driver answers with the route
                leg = self.leg
                if leg is None or leg.state in _NOT_READING or not self._next_reply(leg):
                    break
                continue
            if self._handshaking:
                break
            event = server.next_event()
            if event is NEED_DATA:
                if server.state is State.CLOSED:
                    self._close()
                break
            if event is PAUSED:
                self._start_client_tls()
                break
            _CLIENT_EVENT_HANDLERS[type(event)](self, event)
        out, self._out = self._out, []
        if self.closed:
            return out
        if self.pending is None:
            replies = server.data_to_send()
            if replies:
                out.append(SendClient(replies))
        leg = self.leg
        if leg is not None and leg.state is not LegState.LOST:
            chunks = leg.data_to_send()
            if chunks:
                out.append(SendUpstream(chunks))
        return out

    def _next_reply(self, leg: UpstreamLeg) -> bool:
        """Handle one buffered upstream reply; False when none is complete yet."""
        try:
            reply = leg.next_reply()
            if reply is None:
                return False
            if leg.state in _OPENING:
                self._opening_reply(leg, reply)
            else:
                self._reply(reply)
        except UpstreamProtocolError as exc:
            self._upstream_failed(describe_error(exc))
        return True

    def _log(self, event: str, **fields: Any) -> None:
        self._out.append(Log(event, fields))

    # -- client events --------------------------------------------------------------------------

    def _body_chunk(self, event: BodyChunk) -> None:
        leg = self.leg
        if leg is not None and leg.state is LegState.BODY:
            data = event.data
            leg.body(data)
            txn = self.txn
            assert txn is not None
            txn.size += len(data)
            if not txn.headers.done:
                txn.headers.feed(data)
            if leg.chunked and leg.chunks_in_flight:
                self.pending = AwaitChunks()  # flow control: the upstream answers first

    def _chunk_requested(self, event: ChunkRequested) -> None:
        """BDAT: relayed as BDAT when the upstream offers CHUNKING, else as DATA."""
        server = self.server
        txn = self.txn
        leg = self.leg
        assert txn is not None
        if leg is None or leg.state is LegState.LOST:
            server.refuse_chunk(*REPLY_UPSTREAM_FAILED)
            self._end_transaction("tempfail", REPLY_UPSTREAM_FAILED[0])
            return
        if leg.state is LegState.BODY:  # a further chunk of the body under way
            server.accept_chunk()
            return
        if leg.chunking:
            txn.body_transfer = "bdat"
            leg.chunks()
            if self.rt.received_header:
                leg.body(self._received_header())
            server.accept_chunk()
            if leg.chunks_in_flight:
                self.pending = AwaitChunks()
            return
        # leg.mail refused BODY=BINARYMIME towards this upstream: only text gets here.
        txn.body_transfer = "bdat-to-data"
        leg.data()
        self.pending = AwaitData(chunk=True)

    def _chunk_ended(self, event: ChunkEnd) -> None:
        """A chunk that is not the last is in: ``250`` once what went upstream of it is
        accepted (relayed as BDAT) or queued (converted to DATA)."""
        leg = self.leg
        if leg is not None and leg.state is LegState.BODY and leg.chunked and leg.owes_replies:
            self.pending = AwaitChunks(event)
            return
        self._answer_chunk(event)

    def _answer_chunk(self, event: ChunkEnd) -> None:
        txn = self.txn
        assert txn is not None
        leg = self.leg
        refusal = txn.chunk_refusal
        if refusal is not None:
            self._relay_chunk_refusal(refusal)
        elif leg is None or leg.state is not LegState.BODY:
            self._upstream_failed_transaction()
        else:
            self.server.reply(250, f"2.0.0 Ok: {event.size} octets")

    def _chunk_reply(self, pending: AwaitChunks, reply: Reply) -> None:
        """A reply to a BDAT chunk relayed; the first refusal ends the upstream side."""
        txn = self.txn
        assert txn is not None
        if not reply.is_positive and txn.chunk_refusal is None:
            txn.chunk_refusal = reply
            # RFC 3030: after a refused chunk the upstream discards the rest; no LAST goes.
            self._drop_leg()
        leg = self.leg
        if leg is not None and leg.state is not LegState.LOST and leg.owes_replies:
            return
        self.pending = None
        if pending.answer is not None:
            self._answer_chunk(pending.answer)

    def _data_requested(self, event: DataRequested) -> None:
        self._data()

    def _body_ended(self, event: BodyEnd) -> None:
        self._body_end()

    def _body_invalid(self, event: BodyInvalid) -> None:
        # Abandon the upstream transaction without its final dot: nothing is delivered.
        self._end_transaction("rejected", event.code)
        self._reset_upstream()  # a first BDAT refused: MAIL and RCPT are open upstream

    def _hello_received(self, event: Hello) -> None:
        if self.txn is not None:  # EHLO/HELO ends a transaction, like RSET (RFC 5321 4.1.4)
            self._reset(then=event)
        else:
            self._hello(event)

    def _starttls_requested(self, event: StartTLSRequested) -> None:
        if self.txn is not None:
            # As Postfix: the envelope given in clear must not straddle the switch.
            self.server.reply(503, "5.5.1 Error: MAIL transaction in progress")
        else:
            self.server.accept_starttls()

    def _reset_received(self, event: Reset) -> None:
        self._reset()

    # -- AUTH (RFC 4954), relayed to the upstream on an encrypted leg bound to this session --

    def _auth_requested(self, event: AuthRequested) -> None:
        route = self.route
        assert route is not None  # auth = "relay" needs configured hosts (config check)
        pending = AwaitAuth(event.mechanism, route, initial_response=event.initial_response)
        self.pending = pending
        leg = self.leg
        if leg is not None and leg.bound and leg.state is LegState.READY:
            self._leg_open(pending, leg)  # a failed AUTH is tried again on the same leg
            return
        if leg is not None:
            self.leg = None
            self._out.append(ReleaseUpstream(leg))
        # A new connection: a parked one may be dead, and an exchange cannot be replayed.
        self._open_upstream(self._target(pending), fresh=True)

    def _auth_response(self, event: AuthResponse) -> None:
        exchange = self.sasl
        assert exchange is not None
        self.sasl = None
        leg = self.leg
        if leg is None or leg.state is not LegState.AUTH:
            # The upstream leg was lost while the client was answering the challenge.
            self.server.reply(*REPLY_AUTH_UNAVAILABLE)
            self._log_auth(exchange, REPLY_AUTH_UNAVAILABLE[0], "upstream connection lost")
            return
        exchange.cancelled = event.data == b"*"
        leg.auth_response(event.data)
        self.pending = exchange

    def _auth_aborted(self, event: AuthAborted) -> None:
        exchange = self.sasl
        assert exchange is not None
        self.sasl = None
        self._log_auth(exchange, event.code, f"the client's response: {event.text}")
        leg = self.leg
        if leg is not None and leg.state is LegState.AUTH:
            exchange.aborted = True
            leg.auth_response(b"*")  # the upstream's answer (501) is not relayed
            self.pending = exchange

    def _auth_reply(self, pending: AwaitAuth, reply: Reply) -> None:
        self.pending = None
        if reply.code == 334:
            if pending.aborted or pending.cancelled:
                raise UpstreamProtocolError("upstream challenged again after AUTH was cancelled")
            self.sasl = pending
            self.server.auth_challenge(reply.lines)
            return
        if pending.aborted:
            return
        self.server.reply_lines(reply.code, reply.lines)
        self._log_auth(pending, reply.code)

    def _log_auth(
        self, exchange: AwaitAuth, reply: int, reason: str = "", *, upstream: str | None = None
    ) -> None:
        """The ``auth`` record: the mechanism and the outcome, never a SASL payload.
        ``upstream``: the next hop, when the leg to it is already dropped."""
        if reply == 235:
            outcome = "authenticated"
        elif exchange.cancelled:
            outcome = "cancelled"
        elif reply < 500:
            outcome = "tempfail"
        else:
            outcome = "failed"
        leg = self.leg
        self._log(
            "auth",
            session=self.id,
            client=self.client_addr,
            policy=self.rt.name,
            mechanism=exchange.mechanism,
            outcome=outcome,
            reply=reply,
            upstream=upstream if upstream is not None else leg.target.address if leg else "",
            reason=reason,
        )

    def _leg_open(self, pending: AwaitRcpt | AwaitAuth, leg: UpstreamLeg) -> None:
        """``leg`` is open for what waits: the envelope, or the client's AUTH."""
        if isinstance(pending, AwaitAuth):
            leg.auth(pending.mechanism, pending.initial_response)
            pending.initial_response = None
        else:
            self._send_envelope(pending, leg)

    def _core_closed(self, event: ConnectionClosed) -> None:
        self.end_reason = closed_by_core_reason(self.server, event)
        self._end_transaction("aborted", 0)

    def _hello(self, event: Hello) -> None:
        rt = self.rt
        self.helo_name = event.name
        if not event.esmtp:
            self.server.reply(250, rt.hostname)
        elif not rt.esmtp_enabled:
            self.server.reply(502, "5.5.1 EHLO not supported, use HELO")
        else:
            self.server.reply_ehlo(rt.ehlo_offer_tls if self.encrypted else rt.ehlo_offer_clear)

    def _start_client_tls(self) -> None:
        self._handshaking = True
        out = self.server.data_to_send()
        if out:
            self._out.append(SendClient(out))
        discarded = self.server.discarded_after_starttls
        if discarded:
            self._log(
                "starttls_injection",
                session=self.id,
                client=self.client_addr,
                discarded_bytes=len(discarded),
            )
        self._client_tls_since = self._clock()
        self._out.append(StartTLS(Side.CLIENT))

    def _mail(self, event: MailFrom) -> None:
        sender_domain = normalize_domain(event.sender.domain)
        if reject_mail_from_in_clear(
            rules=self.rt.rules,
            sender_domain=sender_domain,
            client_encrypted=self.encrypted,
            require_tls_for_envelope=self.rt.require_tls_for_envelope,
        ):
            self.server.reply(*REPLY_MUST_STARTTLS)
            fields: dict[str, Any] = {"sender_domain": sender_domain}
            if self.log_addresses:
                fields["sender"] = log_address(event.sender)
            self._log(
                "mail_rejected",
                session=self.id,
                client=self.client_addr,
                **fields,
                reply=REPLY_MUST_STARTTLS[0],
                reason=REASON_CLIENT_IN_CLEAR,
            )
            return
        smtputf8 = any(key == "SMTPUTF8" for key, _ in event.params)
        binarymime = any(
            key == "BODY" and (value or "").upper() == "BINARYMIME" for key, value in event.params
        )
        self.txn = Transaction(
            event.sender,
            sender_domain,
            event.raw_params,
            smtputf8=smtputf8,
            binarymime=binarymime,
        )
        self.server.reply(250, "2.1.0 Ok")

    def _rcpt(self, event: RcptTo) -> None:
        txn = self.txn
        assert txn is not None
        server = self.server
        domain = normalize_domain(event.recipient.domain)
        match = self.rt.rules.match(txn.sender_domain, domain)
        if reject_rcpt_in_clear(
            match=match,
            client_encrypted=self.encrypted,
            require_tls_for_envelope=self.rt.require_tls_for_envelope,
        ):
            server.reply(*REPLY_MUST_STARTTLS)
            self._rcpt_rejected(
                txn, event, domain, match.label, REPLY_MUST_STARTTLS[0], REASON_CLIENT_IN_CLEAR
            )
            return
        mode = upstream_tls(match.rule.recipient_encryption, client_encrypted=self.encrypted)
        if self.server.authenticated:
            # Every recipient goes on the authenticated leg, which is encrypted: at least
            # what any rule asks for (docs/proxy.md, AUTH); its certificate was checked
            # against the next hop's name when AUTH opened it, before any recipient.
            mode = UpstreamTLS.REQUIRED
            checked = ""
        else:
            checked = checked_domain(match.rule.tls_name_from, domain, mode)
        if txn.mode is not None and (txn.mode is not mode or txn.checked_domain != checked):
            server.reply(*REPLY_OTHER_TRANSACTION)
            if txn.mode is not mode:
                reason = f"needs upstream TLS {mode}, the transaction's leg is {txn.mode}"
            else:
                reason = (
                    f"needs upstream TLS checked for {checked or 'the next hop name'}, "
                    f"the transaction's leg is checked for {txn.checked_domain or 'its host name'}"
                )
            self._rcpt_rejected(txn, event, domain, match.label, REPLY_OTHER_TRANSACTION[0], reason)
            return
        leg = self.leg
        if leg is not None and leg.state is LegState.LOST:
            # The upstream connection carrying this transaction is gone. Its accepted
            # recipients cannot move to a new one (SPEC 2.3): refuse the rest, and
            # DATA gets a 4xx for lack of an upstream, so the client retries all.
            server.reply(*REPLY_UPSTREAM_FAILED)
            self._rcpt_rejected(
                txn, event, domain, match.label, REPLY_UPSTREAM_FAILED[0], LOST_EARLIER
            )
            return
        route = self.route
        if route is None:  # upstream = "mx": the driver asks DNS
            self.pending = AwaitRoute(event, domain, match.label, mode, checked)
            self._out.append(ResolveNextHops(domain))
            return
        self._relay_rcpt(AwaitRcpt(event, domain, match.label, mode, route, checked))

    def _next_hops_resolved(self, event: NextHopsResolved) -> None:
        pending = self.pending
        assert isinstance(pending, AwaitRoute)
        self.pending = None
        resolution = event.resolution
        if isinstance(resolution, NoRoute):
            txn = self.txn
            assert txn is not None
            self.server.reply(*resolution.reply)
            self._rcpt_rejected(
                txn,
                pending.event,
                pending.domain,
                pending.rule,
                resolution.reply[0],
                resolution.reason,
            )
            return
        self._relay_rcpt(
            AwaitRcpt(
                pending.event,
                pending.domain,
                pending.rule,
                pending.mode,
                resolution,
                pending.checked_domain,
            )
        )

    def _relay_rcpt(self, pending: AwaitRcpt) -> None:
        """Relay a RCPT on the transaction's leg, or open one to its first next hop."""
        txn = self.txn
        assert txn is not None
        route = pending.route
        if txn.route is not None and txn.route is not route and txn.route.key != route.key:
            # Another next hop: as for another TLS mode, another transaction (SPEC 2.2).
            self.server.reply(*REPLY_OTHER_TRANSACTION)
            reason = f"its next hop {route.hops[0]} is not the transaction's"
            self._rcpt_rejected(
                txn, pending.event, pending.domain, pending.rule, REPLY_OTHER_TRANSACTION[0], reason
            )
            return
        self.pending = pending
        leg = self.leg
        if (
            leg is not None
            and leg.mode is pending.mode
            and leg.target.checked_domain == pending.checked_domain
            and leg.target.hop in route
        ):
            pending.hop = route.position(leg.target.hop)
            self._send_envelope(pending, leg)
            return
        if self.server.authenticated:
            # Another connection would not carry the client's authentication.
            self.pending = None
            self._refuse_recipient(txn, pending, REPLY_UPSTREAM_FAILED, AUTHENTICATED_LEG_LOST)
            return
        if leg is not None:
            self.leg = None
            self._out.append(ReleaseUpstream(leg))
        self._open_upstream(self._target(pending))

    def _target(self, pending: AwaitRcpt | AwaitAuth) -> UpstreamTarget:
        """The upstream leg for the next hop ``pending`` is at, in its TLS mode."""
        target = self.rt.upstream_targets[pending.mode]
        hop = pending.route.hops[pending.hop]
        if target.hop is hop and not pending.checked_domain:
            return target
        return target.to(hop, pending.checked_domain)

    def _open_upstream(self, target: UpstreamTarget, *, fresh: bool = False) -> None:
        """Ask for a leg to ``target`` (``fresh``: a new connection); its setup time counts
        from here."""
        self._opening_since, self._upstream_tls_since = self._clock(), None
        self._out.append(OpenUpstream(target, fresh=fresh))

    def _send_envelope(self, pending: AwaitRcpt, leg: UpstreamLeg) -> None:
        """MAIL (with the first recipient) and RCPT upstream, pipelined when offered."""
        txn = self.txn
        assert txn is not None
        if leg.state is LegState.READY:
            try:
                dropped = leg.mail(
                    txn.sender, txn.mail_params, smtputf8=txn.smtputf8, binarymime=txn.binarymime
                )
            except UpstreamUnavailable as exc:  # the leg stays at rest, fit for others
                self.pending = None
                self.server.reply(exc.code, exc.text)
                self._rcpt_rejected(
                    txn, pending.event, pending.domain, pending.rule, exc.code, exc.reason
                )
                return
            self._log_dropped(dropped)
            pending.mail_here = True
            if not leg.pipelining:
                return  # RCPT follows MAIL's answer
        self._send_rcpt(pending, leg)

    def _send_rcpt(self, pending: AwaitRcpt, leg: UpstreamLeg) -> None:
        self._log_dropped(leg.rcpt(pending.event.recipient.path, pending.event.raw_params))
        if leg.pipelining and self.server.next_command_is(b"DATA"):
            # The client pipelined DATA after this RCPT: so do we, saving a round trip.
            leg.data()
            pending.data_pipelined = True

    def _log_dropped(self, dropped: Dropped) -> None:
        """Parameters the upstream does not offer are left out, never silently: the
        sender asked for something (a DSN, a size check, an 8-bit body) it will not get."""
        for parameter, keyword in dropped:
            self._log(
                "parameter_dropped",
                session=self.id,
                client=self.client_addr,
                parameter=parameter,
                reason=f"upstream does not offer {keyword}",
            )

    def _data(self) -> None:
        leg = self.leg
        if leg is None or leg.state is LegState.LOST:
            self.server.reply(*REPLY_UPSTREAM_FAILED)
            return
        if leg.state is not LegState.DATA:
            leg.data()
        self.pending = AwaitData()
        if self.txn is not None:
            self.txn.body_transfer = "data"

    def _body_end(self) -> None:
        leg = self.leg
        txn = self.txn
        if txn is not None and txn.chunk_refusal is not None:
            refusal = txn.chunk_refusal
            self._relay_chunk_refusal(refusal)
            return
        if leg is None or leg.state is not LegState.BODY:
            self._upstream_failed_transaction()
            return
        leg.end()  # the body's rest leaves with the dot, in the same write
        self.pending = AwaitEnd(self._clock())

    def _reset(self, then: Hello | None = None) -> None:
        self._end_transaction("aborted", 0)
        if not self._reset_upstream(then) and then is not None:
            self._hello(then)

    def _reset_upstream(self, then: Hello | None = None) -> bool:
        """RSET the upstream's open envelope (MAIL and RCPT sent, no body yet); False
        when there is none."""
        leg = self.leg
        if leg is not None and leg.state is LegState.ENVELOPE and not leg.owes_replies:
            leg.reset()
            self.pending = AwaitReset(then)
            return True
        return False

    # -- upstream events ------------------------------------------------------------------------

    def _upstream_data(self, data: bytes) -> None:
        leg = self.leg
        if leg is None or leg.state is LegState.LOST:
            return
        try:
            leg.receive_data(data)
        except UpstreamProtocolError as exc:
            self._upstream_failed(describe_error(exc))

    def _upstream_connected(self, leg: UpstreamLeg) -> None:
        pending = self.pending
        if not isinstance(pending, AwaitRcpt | AwaitAuth):
            self._out.append(ReleaseUpstream(leg))
            return
        self.leg = leg
        if leg.reused:
            self._leg_open(pending, leg)
            return
        try:
            leg.check_tls(leg.tls)  # implicit TLS: a failed check blocks ``required``
        except UpstreamUnavailable as exc:
            self._open_failed(exc)

    def _upstream_connect_failed(self, event: UpstreamConnectFailed) -> None:
        pending = self.pending
        assert isinstance(pending, AwaitRcpt | AwaitAuth)
        self._open_failed(connect_failed(self._target(pending), event.reason, tls=event.tls))

    def _tls_result(self, event: TLSDone | TLSFailed) -> None:
        if event.side is Side.CLIENT:
            self._handshaking = False
            if isinstance(event, TLSFailed):
                self.end_reason = "starttls_failed"
                self._log(
                    "starttls_failed", session=self.id, client=self.client_addr, reason=event.reason
                )
                self._close()
                return
            self.server.tls_established()
            self.client_tls = event.facts
            self._log(
                "starttls",
                session=self.id,
                client=self.client_addr,
                client_tls=event.facts.version,
                client_cipher=event.facts.cipher,
                tls_resumed=event.facts.resumed,
                handshake_ms=milliseconds(self._clock() - self._client_tls_since),
            )
            return
        leg = self.leg
        assert leg is not None
        try:
            if isinstance(event, TLSDone):
                leg.tls_established(event.facts)
                return
            target = leg.tls_failed(event.reason)
        except UpstreamUnavailable as exc:
            self._open_failed(exc)
            return
        # Opportunistic: the failed handshake leaves nothing usable; deliver in clear (RFC 7435).
        self.leg = None
        self._out.append(OpenUpstream(target))

    def _opening_reply(self, leg: UpstreamLeg, reply: Reply) -> None:
        try:
            step = leg.opening_reply(reply)
        except UpstreamUnavailable as exc:
            self._open_failed(exc)
            return
        if step is Opened.START_TLS:
            self._upstream_tls_since = self._clock()
            self._out.append(StartTLS(Side.UPSTREAM))
        elif step is Opened.READY:
            now = self._clock()
            tls_since = self._upstream_tls_since
            self._log(
                "upstream_connected",
                session=self.id,
                upstream=leg.target.address,
                **hop_fields(leg),
                mode=str(leg.mode),
                upstream_tls=leg.tls.version,
                upstream_cipher=leg.tls.cipher,
                upstream_verify=str(leg.tls.verification),
                upstream_tls_resumed=leg.tls.resumed,
                upstream_fallback=leg.fallback,
                handshake_ms=milliseconds(None if tls_since is None else now - tls_since),
                setup_ms=milliseconds(now - self._opening_since),
            )
            pending = self.pending
            assert isinstance(pending, AwaitRcpt | AwaitAuth)
            self._leg_open(pending, leg)

    def _open_failed(self, exc: UpstreamUnavailable) -> None:
        """The next hop could not be opened as the rule demands: try the next one;
        after the last, the recipient gets the last one's reply (all temporary);
        an AUTH gets ``454 4.7.0``."""
        pending = self.pending
        assert isinstance(pending, AwaitRcpt | AwaitAuth)
        self._drop_leg()
        self.leg = None
        self._hop_failed(pending, exc)

    def _hop_failed(self, pending: AwaitRcpt | AwaitAuth, exc: UpstreamUnavailable) -> None:
        """``pending``'s next hop is given up (its leg is gone): the next one is tried,
        with ``next_hop_failed`` saying why; after the last, the recipient gets
        ``exc``'s reply (an AUTH ``454 4.7.0``), and its reason names every hop tried."""
        hops = pending.route.hops
        failed = hops[pending.hop]
        if pending.hop + 1 < len(hops):
            tls_name = (
                self._target(pending).tls_name if pending.mode is not UpstreamTLS.NONE else ""
            )
            pending.hop += 1
            pending.failures.append(f"{failed}: {exc.reason}")
            self._log(
                "next_hop_failed",
                session=self.id,
                upstream=str(failed),
                next_hop_address=failed.address,
                mx_preference=failed.preference,
                tls_name=tls_name,
                reason=exc.reason,
                trying=str(hops[pending.hop]),
            )
            self._open_upstream(self._target(pending))
            return
        self.pending = None
        if isinstance(pending, AwaitAuth):
            reason = all_hops_failed(pending, exc.reason) if pending.failures else exc.reason
            self.server.reply(*REPLY_AUTH_UNAVAILABLE)
            self._log_auth(pending, REPLY_AUTH_UNAVAILABLE[0], reason, upstream=str(failed))
            return
        txn = self.txn
        assert txn is not None
        self.server.reply(exc.code, exc.text)
        self._rcpt_rejected(
            txn, pending.event, pending.domain, pending.rule, exc.code, exc.reason, tried=pending
        )

    def _reply(self, reply: Reply) -> None:
        pending = self.pending
        leg = self.leg
        assert leg is not None
        if isinstance(pending, AwaitRcpt):
            self._rcpt_reply(pending, leg, reply)
        elif isinstance(pending, AwaitAuth):
            self._auth_reply(pending, reply)
        elif isinstance(pending, AwaitData):
            self.pending = None
            if reply.code != 354:
                if pending.chunk:  # a refused BDAT ends the client's transaction (RFC 3030)
                    self.server.refuse_chunk_lines(reply.code, reply.lines)
                    self._end_transaction(_outcome(reply.code), reply.code)
                    self._reset_upstream()
                else:
                    self.server.reply_lines(reply.code, reply.lines)
                return
            if pending.chunk:
                self.server.accept_chunk()
            else:
                self.server.accept_data()
            if self.rt.received_header:
                leg.body_prefix(self._received_header())
        elif isinstance(pending, AwaitChunks):
            self._chunk_reply(pending, reply)
        elif isinstance(pending, AwaitEnd):
            txn = self.txn
            assert txn is not None
            if reply.command == "BDAT":  # a chunk before the last; the verdict follows
                if not reply.is_positive and txn.chunk_refusal is None:
                    txn.chunk_refusal = reply
                return
            self.pending = None
            # After a refused chunk the verdict is that refusal (the LAST's answer is moot).
            verdict = txn.chunk_refusal or reply
            self.server.reply_lines(verdict.code, verdict.lines)
            txn.final_reply = verdict
            txn.relay_seconds = self._clock() - pending.since
            self._end_transaction(_outcome(verdict.code), verdict.code)
        elif isinstance(pending, AwaitReset):
            self.pending = None
            if pending.then is not None:
                self._hello(pending.then)

    def _rcpt_reply(self, pending: AwaitRcpt, leg: UpstreamLeg, reply: Reply) -> None:
        txn = self.txn
        assert txn is not None
        command = reply.command
        if command == "MAIL":
            pending.mail_accepted = reply.is_positive
            if not reply.is_positive:
                pending.mail_refusal = reply  # relayed instead of the RCPT's moot answer
            elif not leg.pipelining:
                self._send_rcpt(pending, leg)
                return
        elif command == "RCPT":
            pending.answer = reply
        elif command == "DATA":
            # A DATA pipelined behind a RCPT that no recipient justifies (RFC 2920: refused).
            if reply.code == 354:
                raise UpstreamProtocolError("upstream accepted DATA without recipients")
            pending.data_pipelined = False
        if pending.mail_refusal is not None:
            if leg.owes_replies:
                return  # the rest of the batch is moot without a sender; drain it
        elif pending.answer is None:
            return
        elif (
            pending.data_pipelined and not pending.answer.is_positive and not txn.recipient_domains
        ):
            return  # the pipelined DATA's refusal is owed too
        self.pending = None
        server = self.server
        if pending.mail_refusal is not None:
            refusal = pending.mail_refusal
            reason = f"upstream refused MAIL: {refusal.code} {refusal.text}"
            if (
                refusal.code < 500
                and pending.mail_here
                and pending.hop + 1 < len(pending.route.hops)
                and not self.server.authenticated
            ):
                # A temporary refusal of the sender (a busy or greylisting host) says
                # nothing of the domain: its next host is asked, as Postfix does. The
                # leg is at rest, fit for others. (After AUTH only this leg carries the
                # session's mail: its refusal is relayed.)
                self.leg = None
                self._out.append(ReleaseUpstream(leg))
                self.pending = pending
                pending.mail_here = pending.mail_accepted = pending.data_pipelined = False
                pending.mail_refusal = pending.answer = None
                self._hop_failed(pending, UpstreamUnavailable((refusal.code, refusal.text), reason))
                return
            server.reply_lines(refusal.code, refusal.lines)
            self._rcpt_rejected(
                txn,
                pending.event,
                pending.domain,
                pending.rule,
                refusal.code,
                reason,
                tried=pending,
            )
            return
        answer = pending.answer
        assert answer is not None
        server.reply_lines(answer.code, answer.lines)
        if answer.is_positive:
            if txn.mode is None:
                txn.mode = pending.mode
                txn.checked_domain = pending.checked_domain
                txn.route = pending.route
                txn.rule = pending.rule
            txn.recipient_domains.append(pending.domain)
            txn.recipients.append(pending.event.recipient)
        else:
            self._rcpt_rejected(
                txn,
                pending.event,
                pending.domain,
                pending.rule,
                answer.code,
                f"upstream refused RCPT: {answer.code} {answer.text}",
            )

    def _upstream_failed(self, reason: str) -> None:
        """The upstream connection is gone (closed, timed out, broke the protocol)."""
        leg = self.leg
        if leg is None or leg.state is LegState.LOST:
            return
        opening = leg.state in _OPENING or leg.state is LegState.HANDSHAKE
        self._drop_leg()
        pending = self.pending
        txn = self.txn
        if isinstance(pending, AwaitAuth):
            if opening:
                self._open_failed(connect_failure(f"upstream dialogue failed: {reason}"))
                return
            self.pending = None
            if not pending.aborted:
                self.server.reply(*REPLY_AUTH_UNAVAILABLE)
                self._log_auth(pending, REPLY_AUTH_UNAVAILABLE[0], reason)
            self.leg = None
        elif isinstance(pending, AwaitRcpt):
            assert txn is not None
            if opening:
                self._open_failed(connect_failure(f"upstream dialogue failed: {reason}"))
                return
            if (
                leg.reused
                and pending.mail_here
                and not pending.mail_accepted
                and not pending.retried
            ):
                # A parked leg the upstream had closed: once more on a fresh connection.
                self.leg = None
                self.pending = pending = AwaitRcpt(
                    pending.event,
                    pending.domain,
                    pending.rule,
                    pending.mode,
                    pending.route,
                    pending.checked_domain,
                    pending.hop,
                    retried=True,
                )
                self._open_upstream(self._target(pending))
                return
            self.pending = None
            if not txn.recipient_domains:
                self.leg = None  # nothing to lose: a new connection may start over
            self._refuse_recipient(
                txn, pending, REPLY_UPSTREAM_FAILED, f"upstream failed during MAIL/RCPT: {reason}"
            )
        elif isinstance(pending, AwaitData) and pending.chunk:
            self.pending = None
            self.server.refuse_chunk(*REPLY_UPSTREAM_FAILED)
            self._end_transaction("tempfail", REPLY_UPSTREAM_FAILED[0])
            self.leg = None
        elif isinstance(pending, AwaitChunks):
            # The client's chunk (or the rest of it) is answered 451 at its end.
            self.pending = None
            if pending.answer is not None:
                self._answer_chunk(pending.answer)
        elif isinstance(pending, AwaitData | AwaitEnd):
            # After the dot we cannot know whether the upstream took it; a 4xx makes the
            # client retry (a possible duplicate is better than a loss, RFC 5321 6.1).
            self.pending = None
            self._upstream_failed_transaction()  # logs the leg's TLS
            self.leg = None
        elif isinstance(pending, AwaitReset):
            self.pending = None
            self.leg = None
            if pending.then is not None:
                self._hello(pending.then)
        elif txn is None or not txn.recipient_domains:
            self.leg = None  # at rest, or nothing accepted yet: the next RCPT opens anew
        # else: the LOST leg stays, so the rest of this transaction gets 4xx (SPEC 2.3)

    def _drop_leg(self) -> None:
        leg = self.leg
        if leg is not None and leg.state is not LegState.LOST:
            leg.lost()
            self._out.append(AbortUpstream(leg))

    # -- bookkeeping ----------------------------------------------------------------------------

    def _end_transaction(self, outcome: str, reply: int) -> None:
        # The record describes the leg this transaction used, also when it is dropped here.
        leg = self.leg
        if leg is not None:
            if leg.state is LegState.BODY:
                self._drop_leg()  # mid-body (client gone, body refused): no final dot
            if leg.state is LegState.LOST:
                self.leg = None
        txn = self.txn
        if txn is None:
            return
        self.txn = None
        if not txn.recipient_domains and outcome == "aborted":
            if not txn.refused_reply:
                return  # MAIL and nothing else: no transaction worth a summary
            outcome, reply = "rejected", txn.refused_reply
        tls = leg.tls if leg is not None else CLEAR
        self._log(
            "transaction",
            session=self.id,
            client=self.client_addr,
            policy=self.rt.name,
            client_tls=self.client_tls.version,
            client_cipher=self.client_tls.cipher,
            upstream=leg.target.address if leg is not None else "",
            upstream_tls=tls.version,
            upstream_cipher=tls.cipher,
            upstream_verify=str(tls.verification),
            upstream_fallback=leg.fallback if leg is not None else "",
            **hop_fields(leg),
            **txn.record(
                outcome,
                reply,
                addresses=self.log_addresses,
                upstream_reused=leg is not None and leg.reused,
            ),
        )

    def _upstream_failed_transaction(self) -> None:
        """The upstream failed the body: ``451 4.4.2`` to the client, the transaction
        ends as a temporary failure (the client retries; nothing was acknowledged)."""
        self.server.reply(*REPLY_UPSTREAM_FAILED)
        self._end_transaction("tempfail", REPLY_UPSTREAM_FAILED[0])

    def _relay_chunk_refusal(self, refusal: Reply) -> None:
        """The upstream's first refusal of a BDAT chunk is the transaction's answer."""
        self.server.reply_lines(refusal.code, refusal.lines)
        self._end_transaction(_outcome(refusal.code), refusal.code)

    def _refuse_recipient(
        self, txn: Transaction, pending: AwaitRcpt, reply: tuple[int, str], reason: str
    ) -> None:
        """The recipient ``pending`` waits for is refused with ``reply``, logged with why."""
        self.server.reply(*reply)
        self._rcpt_rejected(txn, pending.event, pending.domain, pending.rule, reply[0], reason)

    def _rcpt_rejected(
        self,
        txn: Transaction,
        event: RcptTo,
        domain: str,
        rule: str,
        code: int,
        reason: str,
        *,
        tried: AwaitRcpt | None = None,
    ) -> None:
        """``tried``: the recipient's next hops, when ``reason`` is why the last one of
        them failed; after several, ``reason`` names every hop and ``last_hop_reason``
        keeps the last one's own (its kind for the metrics)."""
        last_hop_reason = ""
        if tried is not None and tried.failures:
            last_hop_reason, reason = reason, all_hops_failed(tried, reason)
        txn.refused_reply = code
        if not txn.rule:
            txn.rule = rule
        addresses: dict[str, str] = {}
        if self.log_addresses:
            addresses = {
                "sender": log_address(txn.sender_address),
                "recipient": str(event.recipient),
            }
        self._log(
            "rcpt_rejected",
            session=self.id,
            client=self.client_addr,
            policy=self.rt.name,
            client_tls=self.client_tls.version,
            rule=rule,
            sender_domain=txn.sender_domain,
            recipient_domain=domain,
            **addresses,
            reply=code,
            reason=reason,
            last_hop_reason=last_hop_reason,
        )

    def _received_header(self) -> bytes:
        """The trace header; every part is reduced to header-safe ASCII, whatever it held.

        All but the date is made once per session (and again after another hello or
        STARTTLS): five token scans and the formatting cost more than the rest of a
        small message's transaction in the session.
        """
        helo, tls_facts, esmtp = self.helo_name, self.client_tls, self.server.esmtp
        head = self._received_head
        if head is None or head[0] is not helo or head[1] is not tls_facts or head[2] != esmtp:
            version, cipher = tls_facts.version, tls_facts.cipher
            encrypted = version != "none"
            tls = f" (version={_token(version)} cipher={_token(cipher)})" if encrypted else ""
            protocol = ("ESMTPS" if encrypted else "ESMTP") if esmtp else "SMTP"
            client_ip = _token(self.client_addr.rsplit(":", 1)[0])
            text = (
                f"Received: from {_token(helo)} ([{client_ip}])\r\n"
                f"\tby {_token(self.rt.hostname)} (smtpgate) with {protocol}{tls}\r\n"
                f"\tid {self.id}; "
            )
            head = self._received_head = (helo, tls_facts, esmtp, text.encode("ascii"))
        return head[3] + self.received_date().encode("ascii") + b"\r\n"

    def _close(self) -> None:
        """Flush, close the client leg, release the upstream leg, log the end."""
        out = self.server.data_to_send()
        if out:
            self._out.append(SendClient(out))
        self._out.append(CloseClient())
        leg = self.leg
        self.leg = None
        if leg is not None and leg.state is not LegState.LOST:
            if leg.state is LegState.BODY:
                self._out.append(AbortUpstream(leg))  # a QUIT now would be body text
            else:
                self._out.append(ReleaseUpstream(leg))
        self._log("session_end", session=self.id, client=self.client_addr, reason=self.end_reason)
        self.closed = True


#: What :meth:`Session.handle` does with each event, by exact type.
_EVENT_HANDLERS: Final[dict[type, Callable[[Session, Any], bool]]] = {
    ClientData: Session._on_client_data,
    UpstreamData: Session._on_upstream_data,
    UpstreamConnected: Session._on_upstream_connected,
    UpstreamConnectFailed: Session._on_upstream_connect_failed,
    NextHopsResolved: Session._on_next_hops_resolved,
    TLSDone: Session._on_tls,
    TLSFailed: Session._on_tls,
    TimedOut: Session._on_timed_out,
    ConnectionLost: Session._on_connection_lost,
}

#: What the session does with each event of the client leg's SMTP core, by exact type.
_CLIENT_EVENT_HANDLERS: Final[dict[type, Callable[[Session, Any], None]]] = {
    BodyChunk: Session._body_chunk,
    RcptTo: Session._rcpt,
    MailFrom: Session._mail,
    DataRequested: Session._data_requested,
    ChunkRequested: Session._chunk_requested,
    ChunkEnd: Session._chunk_ended,
    BodyEnd: Session._body_ended,
    BodyInvalid: Session._body_invalid,
    Hello: Session._hello_received,
    StartTLSRequested: Session._starttls_requested,
    Reset: Session._reset_received,
    ConnectionClosed: Session._core_closed,
    AuthRequested: Session._auth_requested,
    AuthResponse: Session._auth_response,
    AuthAborted: Session._auth_aborted,
}
