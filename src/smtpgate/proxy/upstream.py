"""The upstream leg: one connection to the receiving server, with its TLS mode.

``UpstreamLeg.open`` carries out the recipient-encryption decision of SPEC
2.2 and raises :class:`UpstreamUnavailable` with the reply the client should
get when it cannot be met; nothing is sent in clear under ``required``.
"""

from __future__ import annotations

import ssl

from smtpgate.logs import describe_error
from smtpgate.policy.decisions import UpstreamTLS
from smtpgate.proxy.runtime import PolicyRuntime
from smtpgate.proxy.stream import Stream, open_stream
from smtpgate.smtp.client import ClientConnection, UpstreamProtocolError
from smtpgate.smtp.events import NEED_DATA, PAUSED, Reply
from smtpgate.tls.info import describe_tls
from smtpgate.tls.result import NOT_CHECKED, OK


class UpstreamUnavailable(Exception):
    """The upstream leg cannot be set up as the rule demands; ``code text`` goes to the client."""

    def __init__(self, code: int, text: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.text = text
        self.reason = reason


def _tls_required_failure(reason: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(451, "4.7.5 Cannot deliver encrypted as required, try later", reason)


def _connect_failure(reason: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(451, "4.4.1 Upstream server unavailable, try later", reason)


class _FallBackToClear(Exception):
    """An opportunistic STARTTLS handshake failed: the leg starts over in clear."""


class UpstreamLeg:
    __slots__ = (
        "cipher",
        "client",
        "data_sent",
        "fallback",
        "in_transaction",
        "mode",
        "reused",
        "stream",
        "timeout",
        "tls_version",
        "verification",
    )

    def __init__(self, stream: Stream, client: ClientConnection, mode: UpstreamTLS, timeout: float):
        self.stream = stream
        self.client = client
        self.mode = mode
        self.timeout = timeout
        self.tls_version = "none"
        self.cipher = "none"
        self.verification = NOT_CHECKED
        #: Why an opportunistic leg is in clear (no STARTTLS offered, refused, handshake failed).
        self.fallback = ""
        #: Taken from the pool: it may have died while parked.
        self.reused = False
        #: MAIL was sent and neither the final dot nor RSET has been answered.
        self.in_transaction = False
        #: DATA went out pipelined behind the last RCPT; its reply is still owed.
        self.data_sent = False

    @classmethod
    async def open(cls, rt: PolicyRuntime, mode: UpstreamTLS) -> UpstreamLeg:
        try:
            return await cls._connect(rt, mode, starttls=mode is not UpstreamTLS.NONE)
        except _FallBackToClear as failure:  # RFC 7435: retry in clear
            leg = await cls._connect(rt, mode, starttls=False)
            leg.fallback = str(failure)
            return leg

    @classmethod
    async def _connect(cls, rt: PolicyRuntime, mode: UpstreamTLS, *, starttls: bool) -> UpstreamLeg:
        verify = mode is UpstreamTLS.REQUIRED and rt.profile.validate_certificates
        context = rt.upstream_context_verified if verify else rt.upstream_context_unverified
        implicit = rt.upstream_implicit_tls and mode is not UpstreamTLS.NONE
        if rt.upstream_implicit_tls and mode is UpstreamTLS.NONE:
            implicit = True  # an implicit-TLS upstream cannot be spoken to in clear
        try:
            stream = await open_stream(
                rt.upstream_host,
                rt.upstream_port,
                ssl_context=context if implicit else None,
                server_hostname=rt.upstream_host if implicit else None,
                timeout=rt.command_timeout,
            )
        except ssl.SSLError as exc:
            if mode is UpstreamTLS.REQUIRED:
                raise _tls_required_failure(f"TLS handshake failed: {describe_error(exc)}") from exc
            raise _connect_failure(f"implicit TLS handshake failed: {describe_error(exc)}") from exc
        except (OSError, TimeoutError) as exc:
            raise _connect_failure(f"connect {rt.upstream}: {describe_error(exc)}") from exc
        leg = cls(stream, ClientConnection(tls=implicit), mode, rt.command_timeout)
        try:
            greeting = await leg.reply()
            if greeting.code != 220:
                raise _connect_failure(f"upstream greeting {greeting.code} {greeting.text}")
            await leg.hello(rt.hostname)
            if implicit:
                await leg._record_tls(rt, verify)
            elif starttls:
                if not leg.client.offers_starttls:
                    if mode is UpstreamTLS.REQUIRED:
                        raise _tls_required_failure("upstream does not offer STARTTLS")
                    leg.fallback = "upstream does not offer STARTTLS"
                    return leg
                leg.client.send_starttls()
                answer = await leg.reply()
                if answer.code != 220:
                    refused = f"STARTTLS refused: {answer.code} {answer.text}"
                    if mode is UpstreamTLS.REQUIRED:
                        raise _tls_required_failure(refused)
                    leg.fallback = refused
                    return leg
                try:
                    await stream.start_tls(
                        context,
                        server_side=False,
                        server_hostname=rt.upstream_host,
                        timeout=rt.command_timeout,
                    )
                except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
                    stream.abort()
                    failed = f"TLS handshake failed: {describe_error(exc)}"
                    if mode is UpstreamTLS.REQUIRED:
                        raise _tls_required_failure(failed) from exc
                    raise _FallBackToClear(failed) from exc
                leg.client.tls_established()
                await leg._record_tls(rt, verify)
                await leg.hello(rt.hostname)
        except UpstreamUnavailable:
            leg.abort()
            raise
        except (UpstreamProtocolError, OSError, TimeoutError, ConnectionError) as exc:
            leg.abort()
            raise _connect_failure(f"upstream dialogue failed: {describe_error(exc)}") from exc
        return leg

    async def _record_tls(self, rt: PolicyRuntime, verified: bool) -> None:
        ssl_object = self.stream.ssl_object
        self.tls_version, self.cipher = describe_tls(ssl_object)
        if ssl_object is None:
            return
        verifier = rt.upstream_verifier
        if rt.profile.ocsp:
            self.verification = await verifier.check_with_ocsp(
                ssl_object,
                rt.upstream_host,
                check_chain=verified or rt.profile.validate_certificates,
            )
            if self.verification.failed and self.mode is UpstreamTLS.REQUIRED:
                raise _tls_required_failure(f"certificate check: {self.verification}")
        elif verified:
            self.verification = OK
        else:
            self.verification = verifier.check(ssl_object, rt.upstream_host)

    async def hello(self, hostname: str) -> None:
        self.client.send_ehlo(hostname)
        answer = await self.reply()
        if answer.code != 250:
            self.client.send_helo(hostname)
            answer = await self.reply()
            if answer.code != 250:
                raise _connect_failure(f"upstream refused HELO: {answer.code} {answer.text}")

    async def reply(self) -> Reply:
        """Flush what is queued, then wait for the next reply."""
        self.flush()
        client = self.client
        while True:
            event = client.next_event()
            if isinstance(event, Reply):
                return event
            if event is PAUSED:
                raise UpstreamProtocolError("reply wanted while paused for TLS")
            assert event is NEED_DATA
            data = await self.stream.read(self.timeout)
            if not data:
                raise ConnectionError("upstream closed the connection")
            client.receive_data(data)

    def flush(self) -> None:
        out = self.client.data_to_send()
        if out:
            self.stream.writelines(out)

    def abort(self) -> None:
        self.stream.abort()

    @property
    def usable(self) -> bool:
        transport = self.stream.transport
        return not self.stream.at_eof and transport is not None and not transport.is_closing()

    def close_quietly(self) -> None:
        """QUIT without waiting for the answer: for parked legs nobody waits on."""
        self.stream.write(b"QUIT\r\n")
        self.stream.close()
