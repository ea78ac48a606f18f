"""Sans-IO SMTP: bytes in, events out; replies in, bytes out.

Two roles share one vocabulary:

- :class:`ServerConnection` speaks to the sending MTA (the client leg).
- :class:`ClientConnection` speaks to the receiving server (the upstream leg).

Neither touches a socket. The caller feeds received bytes with
``receive_data``, pulls events with ``next_event`` until it gets
:data:`NEED_DATA` (or :data:`PAUSED` after a STARTTLS switch), and writes
``data_to_send()`` in one call per batch. See docs/smtp-core.md.
"""

from smtpgate.smtp.address import Address, AddressError, parse_path
from smtpgate.smtp.client import ClientConnection, ClientLimits, UpstreamProtocolError
from smtpgate.smtp.data import ChunkDecoder, DataDecoder, DataEncoder, canonicalize
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
    Reply,
    Reset,
    StartTLSRequested,
)
from smtpgate.smtp.server import ServerConnection, ServerLimits

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Address",
    "AddressError",
    "AuthAborted",
    "AuthRequested",
    "AuthResponse",
    "BodyChunk",
    "BodyEnd",
    "BodyInvalid",
    "ChunkDecoder",
    "ChunkEnd",
    "ChunkRequested",
    "ClientConnection",
    "ClientLimits",
    "ConnectionClosed",
    "DataDecoder",
    "DataEncoder",
    "DataRequested",
    "Event",
    "Hello",
    "MailFrom",
    "RcptTo",
    "Reply",
    "Reset",
    "ServerConnection",
    "ServerLimits",
    "StartTLSRequested",
    "UpstreamProtocolError",
    "canonicalize",
    "parse_path",
]
