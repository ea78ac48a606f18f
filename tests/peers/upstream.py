"""aiosmtpd as a real upstream (receiving) SMTP server on a loopback port.

aiosmtpd is an independent SMTP implementation (see ARCHITECTURE.md: it stays in
the project as a peer). ``AiosmtpdUpstream`` runs one in a thread
(``aiosmtpd.controller.Controller``) and records every message it accepts
together with the TLS state of the connection it came on, so tests can check
what the upstream leg really looked like:

- ``starttls=<SSLContext>``: STARTTLS offered (``tls_context``)
- ``implicit=<SSLContext>``: TLS from the first byte (``ssl_context``)
- neither: a plain server that does not offer STARTTLS
- ``proxy_protocol=True``: expects a HAProxy PROXY v1/v2 header first
- ``data_delay``: seconds to wait before answering the final dot
- ``smtputf8=True``: advertise SMTPUTF8
- ``users={"alice": "password"}``: a submission server: AUTH PLAIN/LOGIN over TLS
  only, and required before MAIL (``530 5.7.0``)

The end-to-end proxy tests (``tests/proxy``) use the same server, started at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from . import ReservedPort, wait_until

__all__ = ["AiosmtpdUpstream", "ReceivedMessage"]


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # after dot-unstuffing
    peer: tuple[str, int]
    ehlo: str | None
    tls_version: str | None  # "TLSv1.3", None when in clear
    tls_cipher: str | None
    proxy_src: tuple[str, int] | None = None  # from a PROXY header
    authenticated_as: str | None = None  # the AUTH login of the session it came on

    @property
    def content(self) -> bytes:
        return self.data


def _tls(server: Any) -> Any:
    return server.transport.get_extra_info("ssl_object") if server.transport else None


@dataclass
class _Handler:
    data_reply: str = "250 2.0.0 OK queued"
    data_delay: float = 0.0
    messages: list[ReceivedMessage] = field(default_factory=list)
    #: ("MAIL" / "RCPT", argument, TLS version or None) in arrival order.
    commands: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_PROXY(self, server: Any, session: Any, envelope: Any, proxy_data: Any) -> bool:
        return True

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return responses

    def _command(self, server: Any, verb: str, address: str) -> None:
        ssl_obj = _tls(server)
        with self.lock:
            self.commands.append((verb, address, ssl_obj.version() if ssl_obj else None))

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self._command(server, "MAIL", address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self._command(server, "RCPT", address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        ssl_obj = _tls(server)
        proxy = getattr(session, "proxy_data", None)
        src = None
        if proxy is not None and getattr(proxy, "src_addr", None) is not None:
            src = (str(proxy.src_addr), int(proxy.src_port))
        msg = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or envelope.content or b""),
            peer=tuple(session.peer[:2]),  # type: ignore[arg-type]
            ehlo=session.host_name,
            tls_version=ssl_obj.version() if ssl_obj else None,
            tls_cipher=ssl_obj.cipher()[0] if ssl_obj else None,
            proxy_src=src,
            authenticated_as=(getattr(session.auth_data, "login", b"") or b"").decode() or None,
        )
        with self.lock:
            self.messages.append(msg)
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        return self.data_reply


@dataclass
class _Authenticator:
    """aiosmtpd's authenticator callback: the login and password against ``users``."""

    users: dict[str, str]
    attempts: list[tuple[str, str, bool]] = field(default_factory=list)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        success = self.users.get(login) == password
        self.attempts.append((mechanism, login, success))
        return AuthResult(success=success, handled=False, auth_data=auth_data if success else None)


class AiosmtpdUpstream:
    """A recording aiosmtpd server; use as a context manager."""

    def __init__(
        self,
        *,
        starttls: ssl.SSLContext | None = None,
        implicit: ssl.SSLContext | None = None,
        proxy_protocol: bool = False,
        hostname: str = "upstream.test",
        data_reply: str = "250 2.0.0 OK queued",
        data_delay: float = 0.0,
        smtputf8: bool = False,
        port: int | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        #: Held until the server listens (see :class:`ReservedPort`).
        self._reserved = contextlib.ExitStack()
        if port is None:
            port = self._reserved.enter_context(ReservedPort()).port
        self.port = port
        self.handler = _Handler(data_reply=data_reply, data_delay=data_delay)
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if starttls is not None:
            kwargs["tls_context"] = starttls
            kwargs["require_starttls"] = False
        if implicit is not None:
            kwargs["ssl_context"] = implicit
        if proxy_protocol:
            kwargs["proxy_protocol_timeout"] = 5
        if users is not None:
            kwargs["authenticator"] = _Authenticator(users)
            kwargs["auth_required"] = True
        #: (mechanism, login, success) per AUTH attempt, in arrival order.
        self.auth_attempts: list[tuple[str, str, bool]] = (
            kwargs["authenticator"].attempts if users is not None else []
        )
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname=hostname,
            auth_require_tls=users is not None,
            ready_timeout=10,
            **kwargs,
        )
        self.offers_starttls = starttls is not None
        self.implicit_tls = implicit is not None

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self.handler.lock:
            return list(self.handler.messages)

    @property
    def commands(self) -> list[tuple[str, str, str | None]]:
        with self.handler.lock:
            return list(self.handler.commands)

    def wait_messages(self, count: int = 1, timeout: float = 20) -> list[ReceivedMessage]:
        return wait_until(
            lambda: msgs if len(msgs := self.messages) >= count else None,
            lambda: (
                f"aiosmtpd upstream 127.0.0.1:{self.port}: {len(self.messages)} of {count} "
                "message(s)"
            ),
            timeout=timeout,
        )

    def start(self) -> AiosmtpdUpstream:
        try:
            self.controller.start()
        finally:
            self._reserved.close()
        return self

    def stop(self) -> None:
        self._reserved.close()
        self.controller.stop(no_assert=True)

    def __enter__(self) -> AiosmtpdUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
