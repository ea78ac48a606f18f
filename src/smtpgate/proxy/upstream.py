"""The upstream leg: one connection to the receiving server, sans-IO.

:class:`UpstreamLeg` wraps the client role of the SMTP core
(:class:`~smtpgate.smtp.client.ClientConnection`) with what a relay asks of
it: *open* (greeting, EHLO, STARTTLS, second EHLO), *envelope* (MAIL and
RCPT, parameters filtered to what the server offers, RFC 1869; SMTPUTF8 never
sent to a server without it, RFC 6531), *data*, *body*, *end*,
*reset*, and whether it is *at rest* (parkable for the next session). It
never touches a socket: the driver feeds it bytes and writes what it queues.

Where the upstream dialogue stands is :attr:`UpstreamLeg.state`, one
:class:`LegState`; the session reads it instead of keeping flags of its own.

Opening carries out the recipient-encryption decision of SPEC 2.2: a leg
that cannot be set up as the :class:`UpstreamTarget` demands raises
:class:`UpstreamUnavailable` with the reply the client should get; nothing is
sent in clear under ``required``. An opportunistic STARTTLS whose handshake
failed is answered by :meth:`UpstreamTarget.without_starttls`: a new
connection in clear (RFC 7435).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

from smtpgate.policy.decisions import REPLY_UPSTREAM_TLS_UNAVAILABLE, UpstreamTLS
from smtpgate.routing.nexthops import NextHop
from smtpgate.smtp.client import ClientConnection, UpstreamProtocolError
from smtpgate.smtp.events import NEED_DATA, PAUSED, Reply
from smtpgate.smtp.extensions import MAIL_PARAMETERS, RCPT_PARAMETERS, offered_parameters
from smtpgate.tls.contexts import UpstreamContext
from smtpgate.tls.info import describe_tls
from smtpgate.tls.profile import TLSProfileLike
from smtpgate.tls.result import NOT_CHECKED, VerificationResult
from smtpgate.tls.verification import UpstreamVerifier

REPLY_UPSTREAM_UNAVAILABLE: Final = (451, "4.4.1 Upstream server unavailable, try later")
"""The upstream could not be reached or greeted (connect, greeting, EHLO)."""

REPLY_NO_SMTPUTF8_UPSTREAM: Final = (
    553,
    "5.6.7 SMTPUTF8 is required, but the upstream server does not offer it",
)
"""MAIL had SMTPUTF8 and the upstream does not offer it: never downgraded or sent on,
refused so that the sender bounces it (RFC 6531 3.4)."""

REPLY_NO_BINARYMIME_UPSTREAM: Final = (
    554,
    "5.6.3 BINARYMIME message cannot be relayed: the upstream server does not offer "
    "BINARYMIME and CHUNKING",
)
"""MAIL had BODY=BINARYMIME and the upstream cannot take binary content by BDAT:
smtpgate never converts a body (RFC 3030 section 3 leaves converting or bouncing;
RFC 3463 5.6.3 conversion required but not supported), so the sender bounces it."""

#: BDAT chunks sent whose replies may be owed at once; then the session waits for them,
#: so neither side piles up replies (or chunks) without bound.
MAX_CHUNKS_IN_FLIGHT: Final = 32

#: Parameters the upstream leg left out: (parameter, the EHLO keyword it needs).
Dropped = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class TLSFacts:
    """What a finished handshake (or its absence) looks like, as logged."""

    version: str = "none"
    cipher: str = "none"
    verification: VerificationResult = NOT_CHECKED
    #: The handshake resumed an earlier session (no certificate was sent).
    resumed: bool = False

    @classmethod
    def of(
        cls,
        ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
        verification: VerificationResult = NOT_CHECKED,
    ) -> TLSFacts:
        """The facts of a connection's handshake (``CLEAR``'s for a clear one)."""
        if ssl_object is None:
            return CLEAR
        version, cipher = describe_tls(ssl_object)
        return cls(version, cipher, verification, bool(ssl_object.session_reused))


CLEAR: Final = TLSFacts()


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where an upstream leg goes and how it is encrypted: all it needs, nothing more."""

    #: The server: its name (SNI, the certificate name checked), port, address from DNS.
    hop: NextHop
    mode: UpstreamTLS
    #: TLS from the first byte (port 465 style); STARTTLS otherwise.
    implicit_tls: bool
    #: Issue STARTTLS when offered (False for ``none`` and for the clear retry).
    starttls: bool
    #: The profile's upstream context: verifying for ``required`` with validation on.
    context: UpstreamContext
    #: Whether ``context`` verifies chain and host name in the handshake.
    verify_in_handshake: bool
    profile: TLSProfileLike
    #: Certificate checks after the handshake, with this configuration's anchors and verdicts.
    verifier: UpstreamVerifier
    #: Our name in EHLO/HELO.
    ehlo_name: str
    #: Replies and STARTTLS handshakes (the action's ``command_timeout``).
    timeout: float
    #: The TCP connect and an implicit-TLS handshake: past it, the next hop is tried.
    connect_timeout: float
    #: Why this target is in clear although its mode prefers TLS (a failed handshake).
    fallback: str = ""
    #: The recipient's domain when the rule has the certificate checked against it
    #: (``tls_name_from = "recipient_domain"``); "" for the next hop's host name.
    checked_domain: str = ""

    @property
    def host(self) -> str:
        return self.hop.host

    @property
    def tls_name(self) -> str:
        """The name sent as SNI and, under ``validate_certificates``, checked in the
        certificate (the ``tls_name`` of the records)."""
        return self.checked_domain or self.hop.host

    @property
    def port(self) -> int:
        return self.hop.port

    @property
    def address(self) -> str:
        """``host:port`` as logs show it."""
        return str(self.hop)

    def to(self, hop: NextHop, checked_domain: str = "") -> UpstreamTarget:
        """The same settings towards another next hop (checked against ``checked_domain``)."""
        return replace(self, hop=hop, checked_domain=checked_domain)

    def without_starttls(self, why: str) -> UpstreamTarget:
        """The same upstream in clear: an opportunistic handshake failed (RFC 7435)."""
        return replace(self, starttls=False, fallback=why)


class UpstreamUnavailable(Exception):
    """The leg cannot be set up as the target demands; ``code text`` goes to the client."""

    def __init__(self, reply: tuple[int, str], reason: str) -> None:
        super().__init__(reason)
        self.code, self.text = reply
        self.reason = reason


def tls_failure(reason: str) -> UpstreamUnavailable:
    """Encryption was required and cannot be had: ``451 4.7.5`` (SPEC 2.2)."""
    return UpstreamUnavailable(REPLY_UPSTREAM_TLS_UNAVAILABLE, reason)


def connect_failure(reason: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(REPLY_UPSTREAM_UNAVAILABLE, reason)


def connect_failed(target: UpstreamTarget, reason: str, *, tls: bool) -> UpstreamUnavailable:
    """The connect (``tls``: its implicit-TLS handshake) to ``target`` failed."""
    if not tls:
        return connect_failure(f"connect {target.address}: {reason}")
    if target.mode is UpstreamTLS.REQUIRED:
        return tls_failure(f"TLS handshake failed: {reason}")
    return connect_failure(f"implicit TLS handshake failed: {reason}")


class LegState(Enum):
    """Where the upstream dialogue stands; what the leg is waiting for."""

    GREETING = "greeting"  # connected, the server's 220 is owed
    HELLO = "hello"  # EHLO (or the HELO fallback) sent
    STARTTLS = "starttls"  # STARTTLS sent
    HANDSHAKE = "handshake"  # 220 to STARTTLS received: the driver runs the handshake
    READY = "ready"  # opened, no transaction
    AUTH = "auth"  # AUTH or a SASL response sent, its reply owed (a 334 leaves it here)
    ENVELOPE = "envelope"  # MAIL sent: a transaction is open upstream
    DATA = "data"  # DATA sent, its 354 owed
    BODY = "body"  # 354 received: body bytes flow, a QUIT now would be body text
    END = "end"  # the final dot sent, its reply owed
    RESET = "reset"  # RSET sent, its reply owed
    LOST = "lost"  # the connection is gone (or was dropped)


class Opened(Enum):
    """What a reply during opening asks of the caller."""

    CONTINUE = "continue"  # commands queued, wait for the next reply
    START_TLS = "start_tls"  # the driver runs the handshake, then :meth:`tls_established`
    READY = "ready"  # the leg is open


class UpstreamLeg:
    __slots__ = (
        "_prefix",
        "bound",
        "chunked",
        "client",
        "fallback",
        "peer",
        "reused",
        "state",
        "target",
        "tls",
    )

    def __init__(self, target: UpstreamTarget, tls: TLSFacts = CLEAR) -> None:
        self.target = target
        self.client = ClientConnection(tls=target.implicit_tls)
        self.tls = tls
        self.state = LegState.GREETING
        #: Taken from a pool: the upstream may have closed it while it was parked.
        self.reused = False
        #: Why an opportunistic leg is in clear (no STARTTLS offered, refused, handshake failed).
        self.fallback = target.fallback
        #: The address connected to, when the driver knows it (for the log).
        self.peer = ""
        #: AUTH was sent on it: it speaks for one client's credentials, so it serves that
        #: session alone and is never parked for another (docs/proxy.md, AUTH).
        self.bound = False
        #: The body in progress goes by BDAT (RFC 3030), not DATA.
        self.chunked = False
        #: What goes before a DATA body, held until its first bytes (:meth:`body_prefix`).
        self._prefix = b""

    @property
    def mode(self) -> UpstreamTLS:
        return self.target.mode

    @property
    def at_rest(self) -> bool:
        """Open, no transaction, no reply owed, no client's AUTH on it: fit to be parked
        for another session."""
        return self.state is LegState.READY and not self.owes_replies and not self.bound

    @property
    def owes_replies(self) -> bool:
        """Commands were sent whose replies have not come yet."""
        return self.client.waiting > 0

    @property
    def pipelining(self) -> bool:
        return self.client.pipelining

    @property
    def chunking(self) -> bool:
        return self.client.chunking

    @property
    def chunks_in_flight(self) -> bool:
        """BDAT replies are owed: without PIPELINING, any; with it, a full window."""
        owed = self.client.waiting
        return owed > 0 and (not self.pipelining or owed >= MAX_CHUNKS_IN_FLIGHT)

    # -- opening -----------------------------------------------------------------------------

    def opening_reply(self, reply: Reply) -> Opened:
        """Advance the opening dialogue; :class:`UpstreamUnavailable` when it cannot succeed."""
        target = self.target
        if self.state is LegState.GREETING:
            if reply.code != 220:
                raise connect_failure(f"upstream greeting {reply.code} {reply.text}")
            self.client.send_ehlo(target.ehlo_name)
            self.state = LegState.HELLO
            return Opened.CONTINUE
        if self.state is LegState.HELLO:
            if reply.code != 250:
                if reply.command == "EHLO":
                    self.client.send_helo(target.ehlo_name)
                    return Opened.CONTINUE
                raise connect_failure(f"upstream refused HELO: {reply.code} {reply.text}")
            if self.client.tls or not target.starttls or target.implicit_tls:
                return self._ready()
            if not self.client.offers_starttls:
                return self._clear("upstream does not offer STARTTLS")
            self.client.send_starttls()
            self.state = LegState.STARTTLS
            return Opened.CONTINUE
        if self.state is LegState.STARTTLS:
            if reply.code != 220:
                return self._clear(f"STARTTLS refused: {reply.code} {reply.text}")
            self.state = LegState.HANDSHAKE
            return Opened.START_TLS
        raise UpstreamProtocolError(f"unexpected {reply.code} while {self.state.value}")

    def check_tls(self, facts: TLSFacts) -> None:
        """Record a finished handshake; a failed enforced check blocks ``required``."""
        self.tls = facts
        target = self.target
        # A verdict the profile does not enforce (validation off, no OCSP) is only logged.
        enforced = target.verify_in_handshake or target.profile.ocsp
        if facts.verification.failed and enforced and target.mode is UpstreamTLS.REQUIRED:
            raise tls_failure(f"certificate check: {facts.verification}")

    def tls_established(self, facts: TLSFacts) -> None:
        """The STARTTLS handshake finished: check it, then EHLO again (RFC 3207)."""
        self.check_tls(facts)
        self.client.tls_established()
        self.client.send_ehlo(self.target.ehlo_name)
        self.state = LegState.HELLO

    def tls_failed(self, reason: str) -> UpstreamTarget:
        """The STARTTLS handshake failed: the target to retry in clear, unless it is required."""
        self.state = LegState.LOST
        failed = f"TLS handshake failed: {reason}"
        if self.target.mode is UpstreamTLS.REQUIRED:
            raise tls_failure(failed)
        return self.target.without_starttls(failed)

    def _clear(self, why: str) -> Opened:
        """No TLS on this connection: refused under ``required``, else delivered in clear."""
        if self.target.mode is UpstreamTLS.REQUIRED:
            raise tls_failure(why)
        self.fallback = why
        return self._ready()

    def _ready(self) -> Opened:
        self.state = LegState.READY
        return Opened.READY

    # -- a transaction ------------------------------------------------------------------------

    def auth(self, mechanism: str, initial_response: bytes | None) -> None:
        """The client's AUTH, relayed: from now on this leg is the client's alone."""
        self.bound = True
        self.client.send_auth(mechanism, initial_response)
        self.state = LegState.AUTH

    def auth_response(self, data: bytes) -> None:
        """The client's answer to a ``334``, relayed verbatim (``*`` cancels)."""
        self.client.send_auth_response(data)
        self.state = LegState.AUTH

    def mail(
        self, sender: bytes, raw_params: bytes, *, smtputf8: bool, binarymime: bool = False
    ) -> Dropped:
        """MAIL with the parameters this upstream offers; returns those left out."""
        caps = self.client.capabilities
        if smtputf8 and "SMTPUTF8" not in caps:
            raise UpstreamUnavailable(
                REPLY_NO_SMTPUTF8_UPSTREAM, "upstream does not offer SMTPUTF8"
            )
        if binarymime and not ("BINARYMIME" in caps and "CHUNKING" in caps):
            raise UpstreamUnavailable(
                REPLY_NO_BINARYMIME_UPSTREAM, "upstream does not offer BINARYMIME and CHUNKING"
            )
        params, dropped = offered_parameters(raw_params, MAIL_PARAMETERS, caps)
        self.client.send_mail(sender, params)
        self.state = LegState.ENVELOPE
        return dropped

    def rcpt(self, recipient: bytes, raw_params: bytes) -> Dropped:
        """RCPT with the parameters this upstream offers; returns those left out."""
        params, dropped = offered_parameters(raw_params, RCPT_PARAMETERS, self.client.capabilities)
        self.client.send_rcpt(recipient, params)
        return dropped

    def data(self) -> None:
        self.chunked = False
        self._prefix = b""
        self.client.send_data()
        self.state = LegState.DATA

    def chunks(self) -> None:
        """The body goes by BDAT: each :meth:`body` is one chunk, :meth:`end` the last."""
        self.chunked = True
        self._prefix = b""
        self.state = LegState.BODY

    def body_prefix(self, text: bytes) -> None:
        """Bytes to put before the client's DATA body (the ``Received:`` header). Held
        and sent with the body's first chunk, or with the dot if none comes: sent at
        once they were a write, a TLS record and a system call of their own, the
        client's body arriving a round trip after the ``354``. (Under BDAT each chunk
        is a command awaiting its reply, so the header is a chunk sent as it comes.)"""
        self._prefix = text

    def body(self, chunk: bytes | memoryview) -> None:
        if self.chunked:
            self.client.send_bdat(chunk)
            return
        if self._prefix:
            self.client.send_body(self._prefix)
            self._prefix = b""
        self.client.send_body(chunk)

    def end(self) -> None:
        if self.chunked:
            self.client.send_bdat(b"", last=True)
        else:
            if self._prefix:
                self.client.send_body(self._prefix)
                self._prefix = b""
            self.client.send_end_of_data()
        self.state = LegState.END

    def reset(self) -> None:
        self._prefix = b""
        self.client.send_rset()
        self.state = LegState.RESET

    def lost(self) -> None:
        self.state = LegState.LOST

    # -- bytes --------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self.client.receive_data(data)

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None until more bytes arrive.

        A reply that ends or advances the transaction moves :attr:`state` (a
        refused MAIL leaves no transaction open; DATA's 354 starts the body;
        the answer to the dot or to RSET leaves the leg at rest).
        """
        event = self.client.next_event()
        if isinstance(event, Reply):
            command = event.command
            if command == "DATA":
                if event.code == 354:
                    self.state = LegState.BODY
                elif self.state is LegState.DATA:
                    self.state = LegState.ENVELOPE
            elif command in (".", "BDAT LAST", "RSET") or (
                command == "MAIL" and not event.is_positive
            ):
                self.state = LegState.READY
            elif command == "AUTH" and event.code != 334:
                self.state = LegState.READY  # the exchange is over, whatever its outcome
            return event
        if event is PAUSED:
            raise UpstreamProtocolError("reply wanted while paused for TLS")
        assert event is NEED_DATA
        return None

    def data_to_send(self) -> list[bytes | memoryview]:
        return self.client.data_to_send()
