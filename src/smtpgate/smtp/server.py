"""Server role: the client leg of the proxy, sans-IO.

One object owns all session state; :data:`TRANSITIONS` is the table of what a
positive answer to each command does. The core answers what needs no
decision (NOOP, RSET, HELP, VRFY, QUIT, syntax and sequence errors) and asks
the caller, through an event, for everything a proxy must decide or relay
(EHLO/HELO, STARTTLS, AUTH and each SASL response, MAIL, RCPT, DATA, BDAT,
end of data).

BDAT (RFC 3030, offered with CHUNKING) frames the message by octet count:
the core reads exactly the announced octets after the command line, whatever
the reads split, and what follows them is the next command. A BDAT it
refuses itself still has its octets read and dropped before the reply, so
message content is never taken for commands.

Commands are parsed one at a time: while a command waits for its answer, the
next one stays in the buffer, so replies to pipelined commands (RFC 2920)
always leave in order, and each command is checked against the state its
predecessors' answers produced.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from smtpgate.smtp.address import AddressError, is_hello_name, parse_path
from smtpgate.smtp.data import (
    TOO_BIG,
    BareNewlinePolicy,
    ChunkDecoder,
    DataDecoder,
    DataViolation,
    NulPolicy,
)
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
    Event,
    Hello,
    MailFrom,
    RcptTo,
    Reset,
    StartTLSRequested,
    _Sentinel,
)
from smtpgate.smtp.extensions import MAIL_PARAMETERS, RCPT_PARAMETERS, required_keyword
from smtpgate.smtp.replies import format_reply, format_reply_bytes

#: RFC 4954 section 4: an AUTH command with its initial response, and each response
#: to a challenge, may be this long (CRLF included), whatever the command-line limit.
MAX_AUTH_LINE: Final = 12288

#: A SASL mechanism name (RFC 4422 section 3.1).
_MECHANISM = re.compile(rb"[A-Z0-9_-]{1,20}")
#: A SASL response as RFC 4954 section 4 allows it: base64, ``=`` (empty) or ``*`` (cancel).
#: Nothing else is relayed: a stray CR or NUL must never reach the upstream's command line.
_SASL_RESPONSE = re.compile(rb"[A-Za-z0-9+/]*={0,2}|\*")

REPLY_AUTH_NEEDS_TLS: Final = (
    538,
    "5.7.11 Encryption required for requested authentication mechanism",
)
"""AUTH on a client leg in clear (RFC 4954 section 6): the credentials are never relayed."""

REPLY_NOT_IMPLEMENTED: Final = (502, "5.5.1 Command not implemented")

#: BODY values (RFC 6152, RFC 3030 BINARYMIME).
_BODY_VALUES = ("7BIT", "8BITMIME", "BINARYMIME")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Every limit of the server role; defaults follow RFC 5321 section 4.5.3."""

    max_command_line: int = 512
    max_data_line: int = 1000
    max_message_size: int = 10 * 1024 * 1024
    max_recipients: int = 100
    max_errors: int = 20
    max_commands: int = 10_000
    max_buffer: int = 256 * 1024
    bare_newline: BareNewlinePolicy = "reject"
    nul_bytes: NulPolicy = "reject"
    vrfy: bool = True
    #: The policy relays AUTH (``auth = "relay"``); the EHLO reply offers it over TLS only.
    auth: bool = False


class State(Enum):
    INIT = "init"  # no HELO/EHLO yet (again, after STARTTLS)
    READY = "ready"  # greeted, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # reading the body
    CHUNK = "chunk"  # reading the octets of an accepted BDAT
    BDAT = "bdat"  # between BDAT chunks: the transaction's body is under way
    TLS = "tls"  # paused for the TLS handshake
    AUTH = "auth"  # a 334 challenge was sent: the next line is the client's SASL response
    CLOSED = "closed"


#: (command awaiting an answer, answer positive) -> next state; None keeps the state.
TRANSITIONS: dict[tuple[str, bool], State | None] = {
    ("HELO", True): State.READY,
    ("HELO", False): None,
    ("STARTTLS", True): State.TLS,
    ("STARTTLS", False): None,
    ("MAIL", True): State.MAIL,
    ("MAIL", False): None,
    ("RCPT", True): State.RCPT,
    ("RCPT", False): None,
    ("DATA", True): State.DATA,
    ("DATA", False): None,
    ("BODY", True): State.READY,
    ("BODY", False): State.READY,
    ("AUTH", True): State.READY,
    ("AUTH", False): State.READY,
    # A chunk that is not the last (RFC 3030): a refusal fails the transaction.
    ("CHUNK", True): State.BDAT,
    ("CHUNK", False): State.READY,
}

_NOT_IMPLEMENTED = frozenset({b"EXPN", b"TURN", b"ETRN", b"ATRN", b"SEND"})


class LocalProtocolError(RuntimeError):
    """The caller used the API out of order (a bug in the caller, not the peer)."""


@dataclass(frozen=True, slots=True)
class EhloOffer:
    """An EHLO answer worked out once, where the keywords are decided (per
    configuration, not per EHLO): its bytes and what its keywords allow."""

    #: The keywords' names, upper case: the MAIL and RCPT parameters a client may use.
    offered: frozenset[str]
    starttls: bool
    #: The SASL mechanisms of the AUTH keyword.
    auth_mechanisms: frozenset[bytes]
    reply: bytes

    @classmethod
    def of(cls, greeting: str, keywords: Sequence[str]) -> EhloOffer:
        offered = frozenset(k.split(" ", 1)[0].upper() for k in keywords)
        return cls(
            offered=offered,
            starttls="STARTTLS" in offered,
            auth_mechanisms=frozenset(
                mechanism.encode("ascii").upper()
                for keyword in keywords
                if keyword.split(" ", 1)[0].upper() == "AUTH"
                for mechanism in keyword.split()[1:]
            ),
            reply=format_reply(250, [greeting, *keywords]),
        )


class ServerConnection:
    """SMTP server state machine for one client connection."""

    def __init__(self, hostname: str, limits: ServerLimits | None = None, *, tls: bool = False):
        self.hostname = hostname
        self.limits = limits or ServerLimits()
        self.state = State.INIT
        self.tls = tls
        self.esmtp = False
        self.starttls_offered = False
        #: EHLO keywords of our last EHLO answer: the parameters a client may use.
        self.offered: frozenset[str] = frozenset()
        self.errors = 0
        #: Command lines dispatched so far (one too long is an error, not a command).
        self.commands = 0
        #: Plaintext bytes that followed STARTTLS and were thrown away (injection attempts).
        self.discarded_after_starttls = b""
        self.recipients = 0
        #: AUTH succeeded (``235``); RFC 4954 allows one AUTH per session.
        self.authenticated = False
        #: The SASL mechanisms of our last EHLO answer's AUTH keyword.
        self.auth_mechanisms: frozenset[bytes] = frozenset()
        self._smtputf8 = False
        self._buf = b""
        self._pos = 0
        self._skip_line = False
        self._hello_esmtp = False
        self._awaiting: str | None = None
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._decoder: DataDecoder | None = None
        #: The transaction's BDAT content (from its first accepted chunk), and whether
        #: MAIL said BODY=BINARYMIME (RFC 3030: only BDAT may carry it).
        self._chunks: ChunkDecoder | None = None
        self._binarymime = False
        #: The BDAT waiting for an answer: its size and LAST; then the octets left to read.
        self._chunk_size = 0
        self._chunk_last = False
        self._chunk_left = 0
        #: Octets of a refused BDAT still to drop, and the reply that follows them.
        self._skip_left = 0
        self._skip_reply = b""
        self._skip_error = False
        #: A BDAT transaction just failed: BDATs the client pipelined after it are dropped
        #: without counting as errors (RFC 3030 section 2 asks the server to expect them).
        self._bdat_failed = False

    # -- output -------------------------------------------------------------------------------

    def greet(self, text: str = "ESMTP") -> None:
        self._out.append(format_reply(220, f"{self.hostname} {text}"))

    def data_to_send(self) -> bytes:
        """All replies queued since the last call, for one write."""
        if not self._out:
            return b""
        out = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return out

    # -- answers to events --------------------------------------------------------------------

    def reply(self, code: int, text: str | Sequence[str]) -> None:
        """Answer the command awaiting a decision with a reply of our own."""
        self._queue(format_reply(code, text))
        self._answered(code)

    def reply_lines(self, code: int, lines: Sequence[bytes]) -> None:
        """Answer with a reply relayed verbatim (code and every text line)."""
        self._queue(format_reply_bytes(code, lines))
        self._answered(code)

    def reply_ehlo(self, keywords: Sequence[str] | EhloOffer, greeting: str | None = None) -> None:
        """Answer EHLO with ``keywords`` (e.g. ``["PIPELINING", "SIZE 1000", "STARTTLS"]``),
        or with an :class:`EhloOffer` worked out beforehand (``greeting`` is its own)."""
        if self._awaiting != "HELO" or not self._hello_esmtp:
            raise LocalProtocolError("reply_ehlo answers an EHLO")
        offer = (
            keywords
            if isinstance(keywords, EhloOffer)
            else EhloOffer.of(greeting or self.hostname, keywords)
        )
        self.offered = offer.offered
        self.starttls_offered = offer.starttls
        self.auth_mechanisms = offer.auth_mechanisms
        self._queue(offer.reply)
        self._answered(250)

    def accept_starttls(self) -> None:
        """``220``, then pause: the caller starts TLS and calls :meth:`tls_established`."""
        if self._awaiting != "STARTTLS":
            raise LocalProtocolError("accept_starttls answers STARTTLS")
        self.reply(220, "2.0.0 Ready to start TLS")
        # RFC 3207 section 5: anything the client pipelined after STARTTLS is
        # discarded, never executed inside the TLS session (CVE-2011-0411).
        self.discarded_after_starttls = self._buf[self._pos :]
        self._buf, self._pos = b"", 0
        self._events.clear()

    def tls_established(self) -> None:
        """The handshake finished: the session starts over, as RFC 3207 requires."""
        if self.state is not State.TLS:
            raise LocalProtocolError("tls_established without STARTTLS")
        self.tls = True
        self.state = State.INIT
        self.esmtp = False
        self.starttls_offered = False

    def auth_challenge(self, lines: Sequence[bytes]) -> None:
        """Relay a ``334`` challenge verbatim; the client's next line is its SASL response."""
        if self._awaiting != "AUTH":
            raise LocalProtocolError("auth_challenge answers AUTH or a SASL response")
        self._queue(format_reply_bytes(334, lines))
        self._awaiting = None
        self.state = State.AUTH

    def accept_data(self) -> None:
        if self._awaiting != "DATA":
            raise LocalProtocolError("accept_data answers DATA")
        self.reply(354, "End data with <CR><LF>.<CR><LF>")

    def accept_chunk(self) -> None:
        """Read the chunk :class:`ChunkRequested` announced: its content comes as
        ``BodyChunk`` events, then ``ChunkEnd`` (answered with ``reply``) or, after
        ``LAST``, ``BodyEnd`` (answered with the upstream's verdict)."""
        if self._awaiting != "BDAT":
            raise LocalProtocolError("accept_chunk answers BDAT")
        self._awaiting = None
        self.state = State.CHUNK
        self._chunk_left = self._chunk_size
        if not self._chunk_left:
            self._chunk_done()

    def refuse_chunk(self, code: int, text: str | Sequence[str]) -> None:
        """Refuse the BDAT awaiting an answer: its octets are read and dropped, then
        ``code text`` answers it, and the transaction is over (RFC 3030 section 2)."""
        self.refuse_chunk_lines(code, [text] if isinstance(text, str) else text)

    def refuse_chunk_lines(self, code: int, lines: Sequence[str | bytes]) -> None:
        """As :meth:`refuse_chunk`, with a reply relayed verbatim."""
        if self._awaiting != "BDAT":
            raise LocalProtocolError("refuse_chunk answers BDAT")
        self._awaiting = None
        raw = [line.encode("utf-8") if isinstance(line, str) else line for line in lines]
        self._end_transaction_body()
        self._skip(self._chunk_size, format_reply_bytes(code, raw))

    @property
    def reading_body(self) -> bool:
        """Message octets are expected (DATA, or a BDAT chunk, read or dropped)."""
        return self.state is State.DATA or self.state is State.CHUNK or self._skip_left > 0

    def _answered(self, code: int) -> None:
        command = self._awaiting
        if command is None:
            raise LocalProtocolError("no command is waiting for an answer")
        self._awaiting = None
        positive = code < 400 if command != "DATA" else code == 354
        if command == "STARTTLS":
            positive = code == 220
        elif command == "AUTH":
            positive = code == 235
            self.authenticated = positive
        new_state = TRANSITIONS[command, positive]
        if new_state is not None:
            self.state = new_state
        if command == "RCPT" and positive:
            self.recipients += 1
        elif command == "HELO" and positive:
            self.esmtp = self._hello_esmtp
            self._reset_transaction()
        elif command == "DATA" and positive:
            limits = self.limits
            self._decoder = DataDecoder(
                max_size=limits.max_message_size,
                max_line_length=limits.max_data_line,
                bare_newline=limits.bare_newline,
                nul_bytes=limits.nul_bytes,
            )
        elif command in ("BODY", "CHUNK") and (command == "BODY" or not positive):
            self._bdat_failed = self._chunks is not None and not (command == "BODY" and positive)
            self._reset_transaction()

    def _end_transaction_body(self) -> None:
        """A BDAT failed: the transaction is over, whatever its state."""
        if self.state in (State.RCPT, State.BDAT, State.CHUNK):
            self.state = State.READY
        self._reset_transaction()
        self._bdat_failed = True

    def _reset_transaction(self) -> None:
        self.recipients = 0
        self._smtputf8 = False
        self._binarymime = False
        self._decoder = None
        self._chunks = None

    # -- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is State.CLOSED or not data:
            return
        if self.state is State.TLS:
            # Plaintext that arrived after our 220 but before the handshake: never a command.
            self.discarded_after_starttls += data
            return
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos :] + data
        else:
            self._buf = data
        self._pos = 0
        if len(self._buf) > self.limits.max_buffer and not self.reading_body:
            # A client that pipelines more than we will hold is flooding: stop reading it.
            self._fail(421, "4.7.0 Too much pipelined input, closing connection")

    def next_event(self) -> Event | _Sentinel:
        if self._events:
            return self._events.popleft()
        if self.state is State.TLS:
            return PAUSED
        if self.state is State.CLOSED:
            return NEED_DATA
        if self._awaiting is not None:
            raise LocalProtocolError(f"{self._awaiting} is waiting for an answer")
        while self._pos < len(self._buf):
            if self._skip_left:
                self._receive_skipped()
            elif self.state is State.CHUNK:
                self._receive_chunk()
            elif self.state is State.DATA:
                self._receive_body()
            elif self.state is State.AUTH:
                if not self._receive_sasl_response():
                    break
            elif not self._receive_command():
                break
            if self._events:
                return self._events.popleft()
            if self._awaiting is not None or self.state in (State.CLOSED, State.TLS):
                break
        return NEED_DATA

    def next_command_is(self, verb: bytes) -> bool:
        """Whether the next pipelined command line, already received, is ``verb``.

        Lets a proxy pipeline that command upstream too (RFC 2920) before
        the event for it is produced.
        """
        buf, pos = self._buf, self._pos
        if self.reading_body or buf.find(b"\n", pos) < 0:
            return False
        line = buf[pos : pos + len(verb) + 2].rstrip(b"\r\n").upper()
        return line == verb

    def _receive_body(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        data = self._buf[self._pos :] if self._pos else self._buf
        self._buf, self._pos = b"", 0
        had_violation = decoder.violation is not None
        chunks, done, trailing = decoder.feed(data)
        if decoder.violation is not None:
            if not had_violation:
                self._events.append(BodyInvalid(decoder.violation.code, decoder.violation.text))
        else:
            self._events.extend(BodyChunk(chunk) for chunk in chunks)
        if done:
            self._buf = trailing
            if decoder.violation is not None:
                self._awaiting = "BODY"
                self.reply(decoder.violation.code, decoder.violation.text)
            else:
                self._awaiting = "BODY"
                self._events.append(BodyEnd())

    def _receive_sasl_response(self) -> bool:
        """One SASL response line, verbatim; False when only a partial line is left."""
        buf, pos = self._buf, self._pos
        newline = buf.find(b"\n", pos)
        end = newline - 1 if newline > pos and buf[newline - 1] == 13 else newline
        if (newline < 0 and len(buf) - pos > MAX_AUTH_LINE) or end - pos + 2 > MAX_AUTH_LINE:
            # RFC 4954 section 4: the exchange ends here; the rest of the line is skipped.
            self._skip_line = newline < 0
            self._buf, self._pos = (b"", 0) if newline < 0 else (buf, newline + 1)
            self._abort_sasl(500, "5.5.6 Authentication Exchange line is too long")
            return True
        if newline < 0:
            if pos:
                self._buf, self._pos = buf[pos:], 0
            return False
        self._pos = newline + 1
        response = buf[pos:end]
        if not _SASL_RESPONSE.fullmatch(response):
            self._abort_sasl(501, "5.5.2 Cannot decode response")
        else:
            self._ask("AUTH", AuthResponse(response))
        return True

    def _abort_sasl(self, code: int, text: str) -> None:
        """End the exchange with our own error; the caller cancels it upstream."""
        self.state = State.READY
        self._events.append(AuthAborted(code, text))
        self._error(code, text)

    def _receive_chunk(self) -> None:
        """The octets of the accepted BDAT in the buffer: content events, then its end."""
        chunks = self._chunks
        assert chunks is not None
        buf, pos = self._buf, self._pos
        stop = min(pos + self._chunk_left, len(buf))
        self._chunk_left -= stop - pos
        self._pos = stop
        had_violation = chunks.violation is not None
        content = chunks.feed(buf, pos, stop)
        if chunks.violation is not None:
            if not had_violation:
                self._events.append(BodyInvalid(chunks.violation.code, chunks.violation.text))
        elif content is not None:
            self._events.append(BodyChunk(content))
        if stop == len(buf):
            self._buf, self._pos = b"", 0
        if not self._chunk_left:
            self._chunk_done()

    def _chunk_done(self) -> None:
        """Every octet of the chunk is in: ask for its answer, or answer a violation."""
        chunks = self._chunks
        assert chunks is not None
        last = self._chunk_last
        had_violation = chunks.violation is not None
        if last and not had_violation:
            tail = chunks.finish()  # a CR kept back at the very end is a bare CR
            if chunks.violation is not None:
                self._events.append(BodyInvalid(chunks.violation.code, chunks.violation.text))
            elif tail is not None:
                self._events.append(BodyChunk(tail))
        violation = chunks.violation
        if violation is not None:
            self._awaiting = "BODY"  # the transaction is over, as after DATA's refusal
            self.reply(violation.code, violation.text)
        elif last:
            self._awaiting = "BODY"
            self._events.append(BodyEnd())
        else:
            self._awaiting = "CHUNK"
            self._events.append(ChunkEnd(self._chunk_size))

    def _receive_skipped(self) -> None:
        """Drop the octets of a refused BDAT; its reply follows the last of them."""
        take = min(self._skip_left, len(self._buf) - self._pos)
        self._skip_left -= take
        self._pos += take
        if self._pos == len(self._buf):
            self._buf, self._pos = b"", 0
        if self._skip_left:
            return
        reply, self._skip_reply = self._skip_reply, b""
        self._queue(reply)
        if self._skip_error:
            self._skip_error = False
            self.errors += 1
            if self.errors >= self.limits.max_errors:
                self._fail(421, "4.7.0 Too many errors, closing connection")

    def _skip(self, size: int, reply: bytes, *, error: bool = False) -> None:
        self._skip_left = size
        self._skip_reply = reply
        self._skip_error = error
        if not size:
            self._receive_skipped()

    def _receive_command(self) -> bool:
        """Parse one command line; False when only a partial line is left."""
        buf, pos = self._buf, self._pos
        newline = buf.find(b"\n", pos)
        limit = self.limits.max_command_line
        if self.limits.auth and buf[pos : pos + 5].upper() == b"AUTH ":
            limit = max(limit, MAX_AUTH_LINE)  # an initial response may be long
        if newline < 0:
            if len(buf) - pos > limit:
                self._buf, self._pos = b"", 0
                if not self._skip_line:
                    self._skip_line = True
                    self._error(500, "5.5.2 Line too long")
                return True
            if pos:
                self._buf, self._pos = buf[pos:], 0
            return False
        self._pos = newline + 1
        if self._skip_line:
            self._skip_line = False
            return True
        end = newline - 1 if newline > pos and buf[newline - 1] == 13 else newline
        if end - pos + 2 > limit:
            self._error(500, "5.5.2 Line too long")
            return True
        self._dispatch(buf[pos:end])
        return True

    # -- commands -----------------------------------------------------------------------------

    def _dispatch(self, line: bytes) -> None:
        self.commands += 1
        if self.commands > self.limits.max_commands:
            self._fail(421, "4.7.0 Too many commands, closing connection")
            return
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb != b"BDAT":
            self._bdat_failed = False
        handler = _COMMANDS.get(verb)
        if handler is not None:
            handler(self, arg)
        elif verb in _NOT_IMPLEMENTED:
            self._error(*REPLY_NOT_IMPLEMENTED)
        else:
            self._error(500, "5.5.2 Command not recognized")

    def _cmd_helo(self, arg: bytes, *, esmtp: bool) -> None:
        name = arg.strip(b" ")
        if not is_hello_name(name):
            # RFC 5321 4.1.1.1: a domain or an address literal. The name goes into the
            # Received: header upstream, so nothing else (CR, NUL, spaces) gets through.
            self._error(501, f"5.5.4 Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
            return
        self._hello_esmtp = esmtp
        self.starttls_offered = False
        self._ask("HELO", Hello(esmtp, name.decode("ascii")))

    def _cmd_ehlo(self, arg: bytes) -> None:
        self._cmd_helo(arg, esmtp=True)

    def _cmd_helo_plain(self, arg: bytes) -> None:
        self._cmd_helo(arg, esmtp=False)

    def _cmd_starttls(self, arg: bytes) -> None:
        if arg.strip(b" "):
            self._error(501, "5.5.4 Syntax: STARTTLS")
        elif self.tls:
            self._error(503, "5.5.1 TLS already active")
        elif not self.starttls_offered:
            self._error(502, "5.5.1 STARTTLS not available")
        else:
            self._ask("STARTTLS", StartTLSRequested())

    def _cmd_auth(self, arg: bytes) -> None:
        if not self.limits.auth:
            self._error(*REPLY_NOT_IMPLEMENTED)
            return
        if not self.tls:
            self._error(*REPLY_AUTH_NEEDS_TLS)
            return
        if self.state is State.INIT or not self.esmtp:
            self._error(503, "5.5.1 Send EHLO first")
            return
        if self.authenticated:
            self._error(503, "5.5.1 Already authenticated")
            return
        if self.state is not State.READY:
            self._error(503, "5.5.1 MAIL transaction in progress")
            return
        words = arg.split(b" ")
        mechanism = words[0].upper()
        if not 1 <= len(words) <= 2 or not _MECHANISM.fullmatch(mechanism) or b"" in words:
            self._error(501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        if mechanism not in self.auth_mechanisms:
            self._error(504, "5.5.4 Unrecognized authentication type")
            return
        initial = words[1] if len(words) == 2 else None
        if initial is not None and (initial == b"*" or not _SASL_RESPONSE.fullmatch(initial)):
            self._error(501, "5.5.2 Cannot decode initial response")
            return
        self._ask("AUTH", AuthRequested(mechanism.decode("ascii"), initial))

    def _cmd_mail(self, arg: bytes) -> None:
        if self.state is State.INIT:
            self._error(503, "5.5.1 Send HELO/EHLO first")
            return
        if self.state is not State.READY:
            self._error(503, "5.5.1 Nested MAIL command")
            return
        if arg[:5].upper() != b"FROM:":
            self._error(501, "5.5.4 Syntax: MAIL FROM:<address>")
            return
        try:
            sender, params, raw = parse_path(arg[5:], allow_null=True)
        except AddressError as exc:
            self._error(exc.code, exc.text)
            return
        problem = self._check_mail_params(params, sender.path)
        if problem is not None:
            self._error(*problem)
            return
        self._smtputf8 = any(key == "SMTPUTF8" for key, _ in params)
        self._binarymime = any(
            key == "BODY" and (value or "").upper() == "BINARYMIME" for key, value in params
        )
        self._ask("MAIL", MailFrom(sender, params, raw))

    def _check_mail_params(
        self, params: tuple[tuple[str, str | None], ...], path: bytes
    ) -> tuple[int, str] | None:
        smtputf8 = False
        for key, value in params:
            if required_keyword(MAIL_PARAMETERS, key, value) not in self.offered or not self.esmtp:
                return 555, f"5.5.4 Unsupported parameter {key}"
            if key == "SIZE":
                if value is None or not value.isdigit():
                    return 501, "5.5.4 Bad SIZE parameter"
                if int(value) > self.limits.max_message_size:
                    return 552, "5.3.4 Message size exceeds fixed maximum message size"
            elif key == "BODY" and (value or "").upper() not in _BODY_VALUES:
                return 501, "5.5.4 Bad BODY parameter"
            elif key == "SMTPUTF8":
                if value is not None:
                    return 501, "5.5.4 SMTPUTF8 takes no value"
                smtputf8 = True
            elif key == "RET" and (value or "").upper() not in ("FULL", "HDRS"):
                return 501, "5.5.4 Bad RET parameter"
        if not smtputf8 and not path.isascii():
            return 553, "5.6.7 Non-ASCII address requires SMTPUTF8"
        return None

    def _cmd_rcpt(self, arg: bytes) -> None:
        if self.state is State.BDAT:
            self._error(503, "5.5.1 RCPT not allowed after BDAT")
            return
        if self.state not in (State.MAIL, State.RCPT):
            self._error(503, "5.5.1 Need MAIL command")
            return
        if arg[:3].upper() != b"TO:":
            self._error(501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        try:
            recipient, params, raw = parse_path(arg[3:], allow_null=False, allow_postmaster=True)
        except AddressError as exc:
            self._error(exc.code, exc.text)
            return
        for key, value in params:
            if RCPT_PARAMETERS.get(key) not in self.offered or not self.esmtp:
                self._error(555, f"5.5.4 Unsupported parameter {key}")
                return
            if key == "NOTIFY" and not _valid_notify(value):
                self._error(501, "5.5.4 Bad NOTIFY parameter")
                return
        if not self._smtputf8 and not recipient.path.isascii():
            self._error(553, "5.6.7 Non-ASCII address requires SMTPUTF8")
            return
        if self.recipients >= self.limits.max_recipients:
            # Not an error of the client's: it resends these in another transaction.
            self._queue(format_reply(452, "4.5.3 Too many recipients"))
            return
        self._ask("RCPT", RcptTo(recipient, params, raw))

    def _cmd_data(self, arg: bytes) -> None:
        if arg.strip(b" "):
            self._error(501, "5.5.4 Syntax: DATA")
        elif self.state is State.BDAT:
            self._error(503, "5.5.1 DATA not allowed after BDAT")  # RFC 3030 section 2
        elif self._binarymime and self.state is State.RCPT:
            self._error(503, "5.5.1 BODY=BINARYMIME requires BDAT")  # RFC 3030 section 3
        elif self.state is State.RCPT:
            self._ask("DATA", DataRequested())
        elif self.state is State.MAIL:
            self._error(554, "5.5.1 No valid recipients")
        else:
            self._error(503, "5.5.1 Need RCPT command")

    def _cmd_bdat(self, arg: bytes) -> None:
        if "CHUNKING" not in self.offered or not self.esmtp:
            # Not offered: the octets cannot be told from commands, as for any unknown verb.
            self._error(*REPLY_NOT_IMPLEMENTED)
            return
        words = arg.split(b" ")
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or (len(words) == 2 and words[1].upper() != b"LAST")
        ):
            # Where the chunk ends is unknown: what follows is read as commands (as Postfix).
            self._error(501, "5.5.4 Syntax: BDAT chunk-size [LAST]")
            return
        size = int(words[0])
        refusal: tuple[int, str] | None = None
        if self.state is State.MAIL:
            refusal = 554, "5.5.1 No valid recipients"
        elif self.state not in (State.RCPT, State.BDAT):
            refusal = 503, "5.5.1 Need MAIL command"
        if refusal is not None:
            self._skip(size, format_reply(*refusal), error=not self._bdat_failed)
            return
        chunks = self._chunks
        if chunks is None:
            limits = self.limits
            chunks = self._chunks = ChunkDecoder(
                max_size=limits.max_message_size,
                max_line_length=limits.max_data_line,
                bare_newline=limits.bare_newline,
                nul_bytes=limits.nul_bytes,
                binary=self._binarymime,
            )
        if not chunks.reserve(size):
            self._refuse_body(size, TOO_BIG)
            return
        self._chunk_size, self._chunk_last = size, len(words) == 2
        self._ask("BDAT", ChunkRequested(size, self._chunk_last))

    def _refuse_body(self, size: int, violation: DataViolation) -> None:
        """The core refuses the body (the size limit): the caller abandons the transaction."""
        self._events.append(BodyInvalid(violation.code, violation.text))
        self._end_transaction_body()
        self._skip(size, format_reply(violation.code, violation.text))

    def _cmd_rset(self, arg: bytes) -> None:
        if arg.strip(b" "):
            self._error(501, "5.5.4 Syntax: RSET")
            return
        if self.state in (State.MAIL, State.RCPT, State.BDAT):
            self.state = State.READY
        self._reset_transaction()
        self._queue(format_reply(250, "2.0.0 Ok"))
        self._events.append(Reset())

    def _cmd_noop(self, arg: bytes) -> None:
        self._queue(format_reply(250, "2.0.0 Ok"))

    def _cmd_help(self, arg: bytes) -> None:
        self._queue(format_reply(214, "2.0.0 See RFC 5321"))

    def _cmd_vrfy(self, arg: bytes) -> None:
        if not arg.strip(b" "):
            self._error(501, "5.5.4 Syntax: VRFY address")
        elif self.limits.vrfy:
            self._queue(format_reply(252, "2.5.0 Cannot VRFY user, but will accept message"))
        else:
            self._queue(format_reply(502, "5.5.1 VRFY disabled"))

    def _cmd_quit(self, arg: bytes) -> None:
        self._queue(format_reply(221, "2.0.0 Bye"))
        self._close("quit")

    # -- helpers ------------------------------------------------------------------------------

    def _ask(self, command: str, event: Event) -> None:
        self._awaiting = command
        self._events.append(event)

    def _queue(self, reply: bytes) -> None:
        self._out.append(reply)

    def _error(self, code: int, text: str) -> None:
        self._queue(format_reply(code, text))
        self.errors += 1
        if self.errors >= self.limits.max_errors:
            self._fail(421, "4.7.0 Too many errors, closing connection")

    def _fail(self, code: int, text: str) -> None:
        self._queue(format_reply(code, text))
        self._close(text)

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._buf, self._pos = b"", 0
        self._skip_left, self._skip_reply = 0, b""
        self._awaiting = None
        self._events.append(ConnectionClosed(reason))


def _valid_notify(value: str | None) -> bool:
    if value is None:
        return False
    words = {w.upper() for w in value.split(",")}
    return words == {"NEVER"} or (bool(words) and words <= {"SUCCESS", "FAILURE", "DELAY"})


_COMMANDS = {
    b"EHLO": ServerConnection._cmd_ehlo,
    b"HELO": ServerConnection._cmd_helo_plain,
    b"STARTTLS": ServerConnection._cmd_starttls,
    b"AUTH": ServerConnection._cmd_auth,
    b"MAIL": ServerConnection._cmd_mail,
    b"RCPT": ServerConnection._cmd_rcpt,
    b"DATA": ServerConnection._cmd_data,
    b"BDAT": ServerConnection._cmd_bdat,
    b"RSET": ServerConnection._cmd_rset,
    b"NOOP": ServerConnection._cmd_noop,
    b"HELP": ServerConnection._cmd_help,
    b"VRFY": ServerConnection._cmd_vrfy,
    b"QUIT": ServerConnection._cmd_quit,
}
