"""Events the SMTP core emits. Frozen and slotted: they are created per command."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from smtpgate.smtp.address import Address


class _Sentinel(Enum):
    NEED_DATA = "need-data"
    PAUSED = "paused"


#: ``next_event`` has nothing more to give until more bytes arrive.
NEED_DATA: Final = _Sentinel.NEED_DATA
#: The connection switched protocol (STARTTLS): no event until TLS is up.
PAUSED: Final = _Sentinel.PAUSED


@dataclass(frozen=True, slots=True)
class Hello:
    """EHLO or HELO. The caller answers with ``reply_ehlo`` / ``reply``."""

    esmtp: bool
    name: str


@dataclass(frozen=True, slots=True)
class StartTLSRequested:
    """STARTTLS. The caller answers ``accept_starttls()`` or ``reply(454, ...)``."""


@dataclass(frozen=True, slots=True)
class AuthRequested:
    """AUTH (RFC 4954) over TLS, with a mechanism the EHLO reply offered.

    The caller relays it and answers with ``auth_challenge`` (``334``) or a final
    ``reply_lines``. ``initial_response`` (None: none given; ``b"="``: an empty
    one) is a credential: it never appears in a repr, a log or an error.
    """

    mechanism: str
    initial_response: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """The client's answer to a ``334`` challenge, verbatim (``*`` cancels, RFC 4954 4).

    The caller relays it and answers like :class:`AuthRequested`. A credential:
    never in a repr, a log or an error.
    """

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthAborted:
    """The client's answer to a challenge was too long or not base64: the core
    answered ``code text`` itself and ended the exchange; the caller cancels it
    upstream (``*``)."""

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM. ``params`` keeps the ESMTP parameters verbatim for relaying."""

    sender: Address
    params: tuple[tuple[str, str | None], ...]
    raw_params: bytes


@dataclass(frozen=True, slots=True)
class RcptTo:
    recipient: Address
    params: tuple[tuple[str, str | None], ...]
    raw_params: bytes


@dataclass(frozen=True, slots=True)
class DataRequested:
    """DATA. The caller answers ``accept_data()`` (354) or ``reply(...)``."""


@dataclass(frozen=True, slots=True)
class ChunkRequested:
    """``BDAT size [LAST]`` (RFC 3030). The caller answers ``accept_chunk()`` (the
    octets then come as ``BodyChunk`` events) or ``refuse_chunk(...)`` (they are
    dropped and the reply follows them)."""

    size: int
    last: bool


@dataclass(frozen=True, slots=True)
class ChunkEnd:
    """Every octet of a BDAT chunk that is not the last is in; the caller answers
    with ``reply``: a refusal ends the transaction (RFC 3030 section 2)."""

    size: int


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Message content: unstuffed, canonical CRLF, never the whole message at once."""

    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class BodyEnd:
    """The client's final ``.`` (or the end of its ``BDAT ... LAST`` chunk); the
    caller answers with the upstream's reply."""


@dataclass(frozen=True, slots=True)
class BodyInvalid:
    """The body broke a limit or the bare-newline policy.

    The core swallows the rest of the body and, at the client's final ``.``,
    sends ``code text`` itself. The caller abandons the upstream transaction.
    """

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Reset:
    """RSET (already answered ``250``); the caller drops the transaction."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """QUIT was answered, or the core gave up (too many errors); close after flushing."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A server reply on the upstream leg, kept verbatim.

    ``lines`` holds each text line without the code and separator; ``command``
    names what it answers ("greeting", "EHLO", "MAIL", "RCPT", "DATA", ".", ...).
    """

    code: int
    lines: tuple[bytes, ...]
    command: str

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def text(self) -> str:
        return " / ".join(line.decode("utf-8", "replace") for line in self.lines)

    def __str__(self) -> str:
        """``code text``, as logs show a reply (``upstream_reply``)."""
        return f"{self.code} {self.text}"


Event = (
    Hello
    | StartTLSRequested
    | AuthRequested
    | AuthResponse
    | AuthAborted
    | MailFrom
    | RcptTo
    | DataRequested
    | ChunkRequested
    | ChunkEnd
    | BodyChunk
    | BodyEnd
    | BodyInvalid
    | Reset
    | ConnectionClosed
)
