"""Client role: the upstream leg of the proxy, sans-IO.

Commands go out through ``send_*`` (several may be queued before any reply:
pipelining, RFC 2920); replies come back as :class:`Reply` events, matched in
order to the command they answer and kept verbatim for relaying.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from smtpgate.smtp.data import DataEncoder
from smtpgate.smtp.events import NEED_DATA, PAUSED, Reply, _Sentinel
from smtpgate.smtp.replies import ReplyParseError, ReplyParser


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Limits on what the upstream server may send us."""

    #: A ``334`` challenge line carries up to 12288 octets of base64 (RFC 4954
    #: section 4; GSSAPI's tokens are large), the longest reply line SMTP has.
    max_reply_line: int = len("334 ") + 12288 + len("\r\n")
    max_reply_lines: int = 100
    max_buffer: int = 256 * 1024


class UpstreamProtocolError(Exception):
    """The upstream server broke the protocol; the transaction fails with a 4xx."""


class ClientConnection:
    """SMTP client state machine for one upstream connection."""

    def __init__(self, limits: ClientLimits | None = None, *, tls: bool = False) -> None:
        self.limits = limits or ClientLimits()
        self.tls = tls
        #: EHLO keywords (upper-case) -> their parameters, from the last EHLO reply.
        self.capabilities: dict[str, str] = {}
        self.esmtp = False
        self.discarded_after_starttls = b""
        self._expect: deque[str] = deque(["greeting"])
        self._parser = ReplyParser(
            max_line=self.limits.max_reply_line, max_lines=self.limits.max_reply_lines
        )
        self._buf = b""
        self._pos = 0
        self._paused = False
        self._out: list[bytes | memoryview] = []
        self._encoder: DataEncoder | None = None

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.capabilities

    @property
    def chunking(self) -> bool:
        """BDAT may carry the body (RFC 3030 CHUNKING)."""
        return "CHUNKING" in self.capabilities

    @property
    def offers_starttls(self) -> bool:
        return "STARTTLS" in self.capabilities

    @property
    def waiting(self) -> int:
        """How many replies are still owed."""
        return len(self._expect)

    # -- commands ------------------------------------------------------------------------------

    def send_ehlo(self, name: str) -> None:
        self._command(b"EHLO " + name.encode("ascii"), "EHLO")

    def send_helo(self, name: str) -> None:
        self._command(b"HELO " + name.encode("ascii"), "HELO")

    def send_starttls(self) -> None:
        self._command(b"STARTTLS", "STARTTLS")

    def send_auth(self, mechanism: str, initial_response: bytes | None) -> None:
        """AUTH as the client gave it (RFC 4954); its replies, ``334`` included, answer "AUTH"."""
        line = b"AUTH " + mechanism.encode("ascii")
        self._command(line if initial_response is None else line + b" " + initial_response, "AUTH")

    def send_auth_response(self, data: bytes) -> None:
        """The client's SASL response to a ``334``, verbatim (``*`` cancels)."""
        self._command(data, "AUTH")

    def send_mail(self, path: bytes, params: bytes = b"") -> None:
        self._command(b"MAIL FROM:" + path + (b" " + params if params else b""), "MAIL")

    def send_rcpt(self, path: bytes, params: bytes = b"") -> None:
        self._command(b"RCPT TO:" + path + (b" " + params if params else b""), "RCPT")

    def send_data(self) -> None:
        self._command(b"DATA", "DATA")
        self._encoder = DataEncoder()

    def send_body(self, chunk: bytes | memoryview) -> None:
        """Canonical CRLF content; dot-stuffed here. Call after the ``354``."""
        if self._encoder is None:
            raise RuntimeError("send_body before send_data")
        self._out.extend(self._encoder.encode(chunk))

    def send_end_of_data(self) -> None:
        if self._encoder is None:
            raise RuntimeError("send_end_of_data before send_data")
        self._out.append(self._encoder.end())
        self._encoder = None
        self._expect.append(".")

    def send_bdat(self, chunk: bytes | memoryview, *, last: bool = False) -> None:
        """``BDAT <size> [LAST]`` and the chunk's octets as they are, in one write
        (RFC 3030: no dot stuffing). The reply names ``"BDAT"``, or ``"BDAT LAST"``."""
        if last:
            self._out.append(b"BDAT %d LAST\r\n" % len(chunk))
            self._expect.append("BDAT LAST")
        else:
            self._out.append(b"BDAT %d\r\n" % len(chunk))
            self._expect.append("BDAT")
        if chunk:
            self._out.append(chunk)

    def send_rset(self) -> None:
        self._encoder = None
        self._command(b"RSET", "RSET")

    def send_noop(self) -> None:
        self._command(b"NOOP", "NOOP")

    def send_quit(self) -> None:
        self._command(b"QUIT", "QUIT")

    def _command(self, line: bytes, name: str) -> None:
        if b"\r" in line or b"\n" in line:
            raise ValueError("a command must not contain CR or LF")
        self._out.append(line + b"\r\n")
        self._expect.append(name)

    def data_to_send(self) -> list[bytes | memoryview]:
        """Everything queued since the last call, for one ``writelines``."""
        out, self._out = self._out, []
        return out

    # -- replies -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._paused:
            # Plaintext after the server's 220 and before the handshake: never a reply.
            self.discarded_after_starttls += data
            return
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos :] + data
        else:
            self._buf = data
        self._pos = 0
        if len(self._buf) > self.limits.max_buffer:
            raise UpstreamProtocolError("upstream sent too much without a complete reply")

    def next_event(self) -> Reply | _Sentinel:
        if self._paused:
            return PAUSED
        buf = self._buf
        while True:
            newline = buf.find(b"\n", self._pos)
            if newline < 0:
                if len(buf) - self._pos > self.limits.max_reply_line:
                    raise UpstreamProtocolError("reply line too long")
                return NEED_DATA
            end = newline - 1 if newline > self._pos and buf[newline - 1] == 13 else newline
            line = buf[self._pos : end]
            self._pos = newline + 1
            try:
                complete = self._parser.feed_line(line)
            except ReplyParseError as exc:
                raise UpstreamProtocolError(str(exc)) from exc
            if complete is not None:
                return self._reply(*complete)

    def _reply(self, code: int, lines: tuple[bytes, ...]) -> Reply:
        if not self._expect:
            raise UpstreamProtocolError(f"unexpected reply {code} from upstream")
        command = self._expect.popleft()
        if command == "EHLO" and code == 250:
            self.esmtp = True
            self.capabilities = _parse_capabilities(lines[1:])
        elif command == "STARTTLS" and code == 220:
            # RFC 3207: whatever followed the 220 in clear is not trusted.
            self.discarded_after_starttls = self._buf[self._pos :]
            self._buf, self._pos = b"", 0
            self._paused = True
        return Reply(code, lines, command)

    def tls_established(self) -> None:
        """After the handshake: forget what the server said in clear (RFC 3207)."""
        self._paused = False
        self.tls = True
        self.capabilities = {}
        self.esmtp = False


def _parse_capabilities(lines: tuple[bytes, ...]) -> dict[str, str]:
    capabilities: dict[str, str] = {}
    for line in lines:
        keyword, _, params = line.decode("ascii", "replace").partition(" ")
        if keyword:
            capabilities[keyword.upper()] = params.strip()
    return capabilities
