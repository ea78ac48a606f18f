"""One client connection: feeds the client leg's SMTP core, applies the
encryption rules, and drives the upstream leg.

Decisions come from :mod:`smtpgate.policy` (pure functions); this module only
carries them out. Replies produced while handling a batch of pipelined
commands leave in one write.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from collections.abc import Mapping
from email.utils import formatdate
from typing import Any

from smtpgate.logs import EventLog, describe_error
from smtpgate.policy.decisions import (
    REPLY_MUST_STARTTLS,
    REPLY_OTHER_TRANSACTION,
    UpstreamTLS,
    reject_mail_from_in_clear,
    reject_rcpt_in_clear,
    upstream_tls,
)
from smtpgate.policy.patterns import normalize_domain
from smtpgate.proxy.message_id import MessageIdScanner
from smtpgate.proxy.runtime import PolicyRuntime
from smtpgate.proxy.stream import Stream
from smtpgate.proxy.upstream import UpstreamLeg, UpstreamUnavailable
from smtpgate.smtp.address import Address
from smtpgate.smtp.client import UpstreamProtocolError
from smtpgate.smtp.events import (
    NEED_DATA,
    PAUSED,
    BodyChunk,
    BodyEnd,
    BodyInvalid,
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
from smtpgate.smtp.extensions import MAIL_PARAMETERS, RCPT_PARAMETERS, offered_parameters
from smtpgate.smtp.server import ServerConnection, State
from smtpgate.tls.info import describe_tls

_session_ids = itertools.count(1)
_SESSION_PREFIX = f"{os.getpid():x}"

#: Write body bytes upstream once this many are queued within one read.
BODY_FLUSH_BYTES = 256 * 1024

UPSTREAM_FAILED = (451, "4.4.2 Upstream connection lost, message not delivered, try later")
NO_SMTPUTF8_UPSTREAM = (
    553,
    "5.6.7 SMTPUTF8 is required, but the upstream server does not offer it",
)

#: Log reasons for a refusal that the rules, not a peer, decided.
REASON_CLIENT_IN_CLEAR = "the rule requires an encrypted client leg"


_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """RFC 5322 date of this second; formatted once per second, not per message."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now))
    return _date_cache[1]


#: What a Received: token may hold: a host name, an address (literal), a TLS version or
#: cipher name. Nothing that ends a line, a comment or the header's token list.
_NOT_IN_TOKEN = re.compile(r"[^A-Za-z0-9.:\-\[\]_/+=]+")


def _token(text: str) -> str:
    """``text`` with every run of characters not allowed in a header token as one ``?``."""
    return _NOT_IN_TOKEN.sub("?", text) or "?"


class Transaction:
    """What one MAIL ... end-of-data needs to remember, and the facts its log record gives."""

    __slots__ = (
        "final_reply",
        "headers",
        "mail_params",
        "mail_sent",
        "recipient_domains",
        "recipients",
        "refused_reply",
        "rule",
        "sender",
        "sender_address",
        "sender_domain",
        "size",
        "smtputf8",
        "upstream_key",
    )

    def __init__(
        self, sender: Address, sender_domain: str, mail_params: bytes, *, smtputf8: bool
    ) -> None:
        #: The reverse-path as relayed upstream; ``sender_address`` is its parsed form, for the log.
        self.sender = sender.path
        self.sender_address = sender
        self.sender_domain = sender_domain
        self.mail_params = mail_params
        #: MAIL had SMTPUTF8: only an upstream that offers SMTPUTF8 may get it (RFC 6531 3.4).
        self.smtputf8 = smtputf8
        self.mail_sent = False
        self.upstream_key: UpstreamTLS | None = None
        self.recipient_domains: list[str] = []
        #: The accepted recipients, as the client gave them; formatted only for the record.
        self.recipients: list[Address] = []
        #: The last refusal of a recipient, for the summary when none was accepted.
        self.refused_reply = 0
        self.rule = ""
        #: Content bytes the client sent (unstuffed, without our Received: header).
        self.size = 0
        self.headers = MessageIdScanner()
        #: The upstream's answer to the final dot (it names the message in the next queue).
        self.final_reply: Reply | None = None

    def record(self, outcome: str, reply: int, *, addresses: bool) -> dict[str, Any]:
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
        fields["message_id"] = self.headers.message_id()
        fields["outcome"] = outcome
        fields["reply"] = reply
        final = self.final_reply
        fields["upstream_reply"] = f"{final.code} {final.text}" if final is not None else ""
        return fields


def log_address(address: Address) -> str:
    """An envelope address as records show it; the null sender is ``<>``."""
    return str(address) or "<>"


def closed_by_core_reason(server: ServerConnection, event: ConnectionClosed) -> str:
    """The ``session_end`` reason when the client-leg core closed the connection."""
    if event.reason == "quit":
        return "client_quit"
    if server.errors >= server.limits.max_errors:
        return "too_many_errors"
    return "input_flood"  # more unanswered input than the core holds


class Session:
    def __init__(
        self,
        stream: Stream,
        rt: PolicyRuntime,
        log: EventLog,
        client: tuple[str, int] | None,
        *,
        tls: bool | None = None,
    ) -> None:
        self.stream = stream
        self.rt = rt
        self.log = log
        self.id = f"{_SESSION_PREFIX}.{next(_session_ids)}"
        self.client_addr = f"{client[0]}:{client[1]}" if client else "unknown"
        # An implicit-TLS listener may also take cleartext clients (tls_compliant_only off).
        self.server = ServerConnection(
            rt.hostname, rt.limits, tls=rt.implicit_tls if tls is None else tls
        )
        self.upstream: UpstreamLeg | None = None
        self.txn: Transaction | None = None
        self.client_tls = ("none", "none")
        self.helo_name = ""
        self.in_body = False
        #: Body bytes handed to the upstream leg and not yet written.
        self.body_queued = 0
        #: Why the session ended, for its ``session_end`` record (docs/logs.md).
        self.end_reason = "client_disconnected"

    @property
    def encrypted(self) -> bool:
        return self.server.tls

    # -- main loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        rt = self.rt
        server = self.server
        if server.tls:
            self.client_tls = describe_tls(self.stream.ssl_object)
        self.log.emit(
            "session_start",
            session=self.id,
            client=self.client_addr,
            policy=rt.name,
            client_tls=self.client_tls[0],
            client_cipher=self.client_tls[1],
        )
        server.greet("ESMTP smtpgate")
        self._flush()
        # Commands are fed in pieces the core's flood guard (max_buffer) takes: with the
        # back-pressure below, input piles up in the stream while the client is not read.
        command_piece = rt.limits.max_buffer // 2
        try:
            while server.state is not State.CLOSED:
                in_data = server.state is State.DATA
                timeout = rt.data_timeout if in_data else rt.command_timeout
                try:
                    data = await self.stream.read(timeout, None if in_data else command_piece)
                except TimeoutError:
                    self.stream.write(b"421 4.4.2 Timeout, closing connection\r\n")
                    self.end_reason = "timeout"
                    self._end_transaction("aborted", 421)
                    break
                if not data:
                    self.end_reason = "client_disconnected"
                    self._end_transaction("aborted", 0)  # client vanished: nothing delivered
                    break
                server.receive_data(data)
                if not await self._drain_events():
                    self.end_reason = "starttls_failed"
                    break
                self._flush()
                if self.body_queued and self.upstream is not None:
                    self.body_queued = 0
                    self.upstream.flush()
                try:
                    # Replies the client does not take: read nothing more until it does.
                    await self.stream.drain(rt.command_timeout)
                except TimeoutError:
                    self.end_reason = "client_not_reading"
                    self._end_transaction("aborted", 0)
                    self.stream.abort()  # closing would wait for it to read what is queued
                    break
        except asyncio.CancelledError:
            self.end_reason = "server_shutdown"  # the drain time after SIGTERM ran out
            raise
        except Exception:
            self.end_reason = "internal_error"  # the gateway logs it as session_error
            raise
        finally:
            self._flush()
            self.stream.close()
            self._release_upstream()
            self.log.emit(
                "session_end", session=self.id, client=self.client_addr, reason=self.end_reason
            )

    async def _drain_events(self) -> bool:
        server = self.server
        while True:
            event = server.next_event()
            if event is NEED_DATA:
                return True
            if event is PAUSED:
                if not await self._start_tls():
                    return False
                continue
            await self._handle(event)

    def _flush(self) -> None:
        out = self.server.data_to_send()
        if out:
            self.stream.write(out)

    # -- events --------------------------------------------------------------------------------

    async def _handle(self, event: Event) -> None:
        server = self.server
        if isinstance(event, BodyChunk):
            await self._body_chunk(event)
        elif isinstance(event, RcptTo):
            await self._rcpt(event)
        elif isinstance(event, MailFrom):
            self._mail(event)
        elif isinstance(event, DataRequested):
            await self._data()
        elif isinstance(event, BodyEnd):
            await self._body_end()
        elif isinstance(event, BodyInvalid):
            self._body_invalid(event)
        elif isinstance(event, Hello):
            if self.txn is not None:  # EHLO/HELO ends a transaction, like RSET (RFC 5321 4.1.4)
                await self._reset()
            self._hello(event)
        elif isinstance(event, StartTLSRequested):
            if self.txn is not None:
                # As Postfix: the envelope given in clear must not straddle the switch.
                server.reply(503, "5.5.1 Error: MAIL transaction in progress")
            else:
                server.accept_starttls()
        elif isinstance(event, Reset):
            await self._reset()
        elif isinstance(event, ConnectionClosed):
            self.end_reason = closed_by_core_reason(server, event)
            self._end_transaction("aborted", 0)

    def _hello(self, event: Hello) -> None:
        rt = self.rt
        self.helo_name = event.name
        if not event.esmtp:
            self.server.reply(250, rt.hostname)
        elif not rt.esmtp_enabled:
            self.server.reply(502, "5.5.1 EHLO not supported, use HELO")
        else:
            keywords = rt.ehlo_keywords_tls if self.encrypted else rt.ehlo_keywords_clear
            self.server.reply_ehlo(keywords)

    async def _start_tls(self) -> bool:
        self._flush()
        server = self.server
        if server.discarded_after_starttls:
            self.log.emit(
                "starttls_injection",
                session=self.id,
                client=self.client_addr,
                discarded_bytes=len(server.discarded_after_starttls),
            )
        try:
            await self.stream.start_tls(
                self.rt.client_tls_context, server_side=True, timeout=self.rt.command_timeout
            )
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.log.emit(
                "starttls_failed",
                session=self.id,
                client=self.client_addr,
                reason=describe_error(exc),
            )
            return False
        server.tls_established()
        self.client_tls = describe_tls(self.stream.ssl_object)
        self.log.emit(
            "starttls",
            session=self.id,
            client=self.client_addr,
            client_tls=self.client_tls[0],
            client_cipher=self.client_tls[1],
        )
        return True

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
            if self.log.addresses:
                fields["sender"] = log_address(event.sender)
            self.log.emit(
                "mail_rejected",
                session=self.id,
                client=self.client_addr,
                **fields,
                reply=REPLY_MUST_STARTTLS[0],
                reason=REASON_CLIENT_IN_CLEAR,
            )
            return
        smtputf8 = any(key == "SMTPUTF8" for key, _ in event.params)
        self.txn = Transaction(event.sender, sender_domain, event.raw_params, smtputf8=smtputf8)
        self.server.reply(250, "2.1.0 Ok")

    async def _rcpt(self, event: RcptTo) -> None:
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
            self._log_rcpt_rejected(
                txn, event, domain, match.label, REPLY_MUST_STARTTLS[0], REASON_CLIENT_IN_CLEAR
            )
            return
        mode = upstream_tls(match.rule.recipient_encryption, client_encrypted=self.encrypted)
        if txn.upstream_key is not None and txn.upstream_key is not mode:
            server.reply(*REPLY_OTHER_TRANSACTION)
            reason = f"needs upstream TLS {mode}, the transaction's leg is {txn.upstream_key}"
            self._log_rcpt_rejected(
                txn, event, domain, match.label, REPLY_OTHER_TRANSACTION[0], reason
            )
            return
        if txn.mail_sent and (self.upstream is None or not self.upstream.usable):
            # The upstream connection carrying this transaction is gone. Its accepted
            # recipients cannot move to a new one (SPEC 2.3): refuse the rest, and
            # DATA gets a 4xx for lack of an upstream, so the client retries all.
            self._drop_upstream()
            server.reply(*UPSTREAM_FAILED)
            reason = "upstream connection lost earlier in this transaction"
            self._log_rcpt_rejected(txn, event, domain, match.label, UPSTREAM_FAILED[0], reason)
            return
        try:
            try:
                answer = await self._send_rcpt(txn, mode, event)
            except (UpstreamProtocolError, OSError, ConnectionError):
                upstream = self.upstream
                if upstream is None or not upstream.reused or txn.mail_sent:
                    raise
                # A parked leg the upstream had closed: once more on a fresh connection.
                self._drop_upstream()
                answer = await self._send_rcpt(txn, mode, event)
        except UpstreamUnavailable as exc:
            server.reply(exc.code, exc.text)
            self._log_rcpt_rejected(txn, event, domain, match.label, exc.code, exc.reason)
            return
        except (UpstreamProtocolError, OSError, TimeoutError, ConnectionError) as exc:
            self._drop_upstream()
            if not txn.recipient_domains:
                txn.mail_sent = False  # nothing to lose: a new connection may start over
            server.reply(*UPSTREAM_FAILED)
            reason = f"upstream failed during MAIL/RCPT: {describe_error(exc)}"
            self._log_rcpt_rejected(txn, event, domain, match.label, UPSTREAM_FAILED[0], reason)
            return
        if isinstance(answer, tuple):  # the upstream refused MAIL: relay that instead
            refusal = answer[0]
            server.reply_lines(refusal.code, refusal.lines)
            reason = f"upstream refused MAIL: {refusal.code} {refusal.text}"
            self._log_rcpt_rejected(txn, event, domain, match.label, refusal.code, reason)
            return
        server.reply_lines(answer.code, answer.lines)
        if answer.is_positive:
            if txn.upstream_key is None:
                txn.upstream_key = mode
                txn.rule = match.label
            txn.recipient_domains.append(domain)
            txn.recipients.append(event.recipient)
        else:
            reason = f"upstream refused RCPT: {answer.code} {answer.text}"
            self._log_rcpt_rejected(txn, event, domain, match.label, answer.code, reason)

    async def _send_rcpt(
        self, txn: Transaction, mode: UpstreamTLS, event: RcptTo
    ) -> Reply | tuple[Reply]:
        """MAIL (with the first recipient) and RCPT upstream, pipelined when offered."""
        upstream = await self._upstream_for(mode)
        client = upstream.client
        if not txn.mail_sent:
            if txn.smtputf8 and "SMTPUTF8" not in client.capabilities:
                # Never downgraded or sent on: refused, so the sender bounces it (RFC 6531 3.4).
                raise UpstreamUnavailable(*NO_SMTPUTF8_UPSTREAM, "upstream does not offer SMTPUTF8")
            client.send_mail(txn.sender, self._mail_params(txn.mail_params, MAIL_PARAMETERS))
            upstream.in_transaction = True
            if not client.pipelining:
                mail_reply = await upstream.reply()
                if not mail_reply.is_positive:
                    upstream.in_transaction = False
                    return (mail_reply,)
            client.send_rcpt(
                event.recipient.path, self._mail_params(event.raw_params, RCPT_PARAMETERS)
            )
            if client.pipelining:
                mail_reply = await upstream.reply()
                if not mail_reply.is_positive:
                    await upstream.reply()  # the RCPT's answer, moot without a sender
                    upstream.in_transaction = False
                    return (mail_reply,)
            txn.mail_sent = True
        else:
            client.send_rcpt(
                event.recipient.path, self._mail_params(event.raw_params, RCPT_PARAMETERS)
            )
        if client.pipelining and self.server.next_command_is(b"DATA"):
            # The client pipelined DATA after this RCPT: so do we, saving a round trip.
            client.send_data()
            upstream.data_sent = True
        answer = await upstream.reply()
        if upstream.data_sent and not answer.is_positive and not txn.recipient_domains:
            # No recipient for the pipelined DATA: RFC 2920 has the server refuse it.
            upstream.data_sent = False
            if (await upstream.reply()).code == 354:
                raise UpstreamProtocolError("upstream accepted DATA without recipients")
        return answer

    def _mail_params(self, raw: bytes, table: Mapping[str, str]) -> bytes:
        """MAIL/RCPT parameters the upstream understands (RFC 1869: never send unknown ones;
        RFC 3461 section 4: DSN parameters are not relayed to a server without DSN).

        The rest are left out, each with a ``parameter_dropped`` record: the sender
        asked for something (a DSN, a size check, an 8-bit body) it will not get.
        """
        upstream = self.upstream
        assert upstream is not None
        kept, dropped = offered_parameters(raw, table, upstream.client.capabilities)
        for parameter, keyword in dropped:
            self.log.emit(
                "parameter_dropped",
                session=self.id,
                client=self.client_addr,
                parameter=parameter,
                reason=f"upstream does not offer {keyword}",
            )
        return kept

    async def _upstream_for(self, mode: UpstreamTLS) -> UpstreamLeg:
        upstream = self.upstream
        if upstream is not None:
            if upstream.mode is mode and upstream.usable:
                return upstream
            self._release_upstream()
        upstream = self.rt.pool.take(mode)
        if upstream is not None:
            upstream.reused = True
        else:
            upstream = await UpstreamLeg.open(self.rt, mode)
            self.log.emit(
                "upstream_connected",
                session=self.id,
                upstream=self.rt.upstream,
                mode=str(mode),
                upstream_tls=upstream.tls_version,
                upstream_cipher=upstream.cipher,
                upstream_verify=str(upstream.verification),
                upstream_fallback=upstream.fallback,
            )
        self.upstream = upstream
        return upstream

    async def _data(self) -> None:
        upstream = self.upstream
        server = self.server
        if upstream is None:
            server.reply(*UPSTREAM_FAILED)
            return
        if not upstream.data_sent:
            upstream.client.send_data()
        upstream.data_sent = False
        try:
            answer = await upstream.reply()
        except (UpstreamProtocolError, OSError, TimeoutError, ConnectionError):
            server.reply(*UPSTREAM_FAILED)
            self._end_transaction("tempfail", UPSTREAM_FAILED[0])  # logs the leg's TLS
            self._drop_upstream()
            return
        if answer.code != 354:
            server.reply_lines(answer.code, answer.lines)
            return
        server.accept_data()
        self.in_body = True
        if self.rt.received_header:
            upstream.client.send_body(self._received_header())

    async def _body_chunk(self, event: BodyChunk) -> None:
        upstream = self.upstream
        if upstream is None or not self.in_body:
            return
        data = event.data
        upstream.client.send_body(data)
        self.body_queued += len(data)
        txn = self.txn
        if txn is not None:
            txn.size += len(data)
            if not txn.headers.done:
                txn.headers.feed(data)
        # Body bytes wait for the rest of this read (often the final dot) so that
        # they leave in one write; a large body goes out as it comes, with backpressure.
        if self.body_queued >= BODY_FLUSH_BYTES:
            self.body_queued = 0
            upstream.flush()
            await upstream.stream.drain()

    def _body_invalid(self, event: BodyInvalid) -> None:
        # Abandon the upstream transaction without its final dot: nothing is delivered.
        # _end_transaction drops the leg while in_body, after noting its TLS facts.
        self._end_transaction("rejected", event.code)

    async def _body_end(self) -> None:
        upstream = self.upstream
        server = self.server
        self.in_body = False
        if upstream is None:
            server.reply(*UPSTREAM_FAILED)
            self._end_transaction("tempfail", UPSTREAM_FAILED[0])
            return
        upstream.client.send_end_of_data()
        self.body_queued = 0  # the reply() below writes the body's rest with the dot
        try:
            upstream.timeout = self.rt.data_timeout
            answer = await upstream.reply()
            upstream.timeout = self.rt.command_timeout
            upstream.in_transaction = False
        except (UpstreamProtocolError, OSError, TimeoutError, ConnectionError):
            # We cannot know whether the upstream took it; a 4xx makes the client retry
            # (a possible duplicate is better than a loss, RFC 5321 section 6.1).
            server.reply(*UPSTREAM_FAILED)
            self._end_transaction("tempfail", UPSTREAM_FAILED[0])  # logs the leg's TLS
            self._drop_upstream()
            return
        server.reply_lines(answer.code, answer.lines)
        if self.txn is not None:
            self.txn.final_reply = answer
        outcome = (
            "delivered" if answer.code < 300 else "tempfail" if answer.code < 500 else "rejected"
        )
        self._end_transaction(outcome, answer.code)

    async def _reset(self) -> None:
        self._end_transaction("aborted", 0)
        upstream = self.upstream
        if upstream is not None and upstream.client.waiting == 0:
            upstream.client.send_rset()
            try:
                await upstream.reply()
                upstream.in_transaction = False
            except (UpstreamProtocolError, OSError, TimeoutError, ConnectionError):
                self._drop_upstream()

    # -- bookkeeping ---------------------------------------------------------------------------

    def _end_transaction(self, outcome: str, reply: int) -> None:
        # The record describes the leg this transaction used, also when it is dropped here.
        upstream = self.upstream
        if self.in_body:
            # Mid-body (client gone, body refused): drop the upstream without its final dot.
            self._drop_upstream()
            self.in_body = False
        txn = self.txn
        if txn is None:
            return
        self.txn = None
        if not txn.recipient_domains and outcome == "aborted":
            if not txn.refused_reply:
                return  # MAIL and nothing else: no transaction worth a summary
            outcome, reply = "rejected", txn.refused_reply
        self.log.emit(
            "transaction",
            session=self.id,
            client=self.client_addr,
            policy=self.rt.name,
            client_tls=self.client_tls[0],
            client_cipher=self.client_tls[1],
            upstream_tls=upstream.tls_version if upstream else "none",
            upstream_cipher=upstream.cipher if upstream else "none",
            upstream_verify=str(upstream.verification) if upstream else "not-checked",
            upstream_fallback=upstream.fallback if upstream else "",
            **txn.record(outcome, reply, addresses=self.log.addresses),
        )

    def _log_rcpt_rejected(
        self, txn: Transaction, event: RcptTo, domain: str, rule: str, code: int, reason: str
    ) -> None:
        txn.refused_reply = code
        if not txn.rule:
            txn.rule = rule
        addresses: dict[str, str] = {}
        if self.log.addresses:
            addresses = {
                "sender": log_address(txn.sender_address),
                "recipient": str(event.recipient),
            }
        self.log.emit(
            "rcpt_rejected",
            session=self.id,
            client=self.client_addr,
            policy=self.rt.name,
            client_tls=self.client_tls[0],
            rule=rule,
            sender_domain=txn.sender_domain,
            recipient_domain=domain,
            **addresses,
            reply=code,
            reason=reason,
        )

    def _received_header(self) -> bytes:
        """The trace header; every part is reduced to header-safe ASCII, whatever it held."""
        version, cipher = self.client_tls
        tls = f" (version={_token(version)} cipher={_token(cipher)})" if version != "none" else ""
        protocol = ("ESMTPS" if version != "none" else "ESMTP") if self.server.esmtp else "SMTP"
        client_ip = _token(self.client_addr.rsplit(":", 1)[0])
        line = (
            f"Received: from {_token(self.helo_name)} ([{client_ip}])\r\n"
            f"\tby {_token(self.rt.hostname)} (smtpgate) with {protocol}{tls}\r\n"
            f"\tid {self.id}; {_date_now()}\r\n"
        )
        return line.encode("ascii")

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None

    def _release_upstream(self) -> None:
        """Park the leg for the next session when its dialogue is at rest, else close it."""
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            if self.in_body:
                upstream.abort()  # a QUIT now would be body text
            else:
                self.rt.pool.give(upstream)  # closes it instead when not at rest
