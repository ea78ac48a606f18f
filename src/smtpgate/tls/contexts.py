"""TLS profile -> cached ``ssl.SSLContext`` for each leg.

Building a context reads certificate files and parses trust stores, so it
happens once per (profile, certificates, role) and the per-connection path is
a dictionary lookup. A reload builds a new cache (``clear()`` empties one).

Client leg (smtpgate is the TLS server):
  * incoming actions present the proxy server certificate, or a configured SNI
    certificate when the client's SNI matches one;
  * outgoing actions present a leaf for the upstream host name issued by the
    proxy CA (``client_leg_context_for_upstream``); when the upstream host is
    not known in advance, ``client_leg_context(outgoing=True)`` issues the leaf
    for the client's SNI name instead.
Upstream leg (smtpgate is the TLS client): the caller passes
``server_hostname`` to ``wrap_socket``/``start_tls``, which sends SNI, and
the context offers the session that server name last gave
(:class:`UpstreamContext`).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from smtpgate.tls.certificates import (
    CertificateError,
    CertificateStore,
    CertKeyFiles,
    SNICertificate,
)
from smtpgate.tls.ciphers import apply_profile
from smtpgate.tls.issuing import normalize_host
from smtpgate.tls.profile import ProfileKey, TLSProfileLike, profile_key

log = logging.getLogger(__name__)

SNICallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]


def _server_context(profile: TLSProfileLike, pairs: Iterable[CertKeyFiles]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_profile(ctx, profile)
    # Our order (ECDHE before static RSA) wins over the client's.
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # OpenSSL sends two TLS 1.3 session tickets per handshake; a sending MTA
    # caches one session per destination, so one ticket is all it can use.
    ctx.num_tickets = 1
    # One certificate per key type: OpenSSL keeps each in its own slot (with its
    # own chain) and presents the first one the client's signature algorithms
    # (and, in TLS 1.2, the cipher suite) allow, in its own preference order:
    # ECDSA before RSA.
    for cert, key in pairs:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(
                f"{cert}: cannot load certificate/key {key}: {exc}", path=cert
            ) from exc
    return ctx


class UpstreamContext(ssl.SSLContext):
    """The upstream leg's client context, offering each server the TLS session it
    last gave (TLS 1.3 or 1.2 ticket, or TLS 1.2 session ID), so that a new
    connection to it resumes: no certificate to send and verify, no signature.

    The event loop's TLS transport makes the ``SSLObject`` itself (through
    :meth:`wrap_bio`, with the server name and nothing else), so the sessions are
    kept per server name: the TLS name the certificate was checked against (the
    next hop's host name, or the recipient's domain with ``tls_name_from``). A
    session is only ever offered under the context (profile values,
    verification) that established it, and a reload builds new contexts, so it
    starts without sessions. Another address of the same name that does
    not know the session answers with a full handshake.
    """

    #: Server names remembered; the oldest is forgotten first.
    max_sessions = 1024

    def __init__(self, protocol: int) -> None:
        super().__init__()  # ssl.SSLContext.__new__ has taken the protocol
        self._sessions: dict[str, ssl.SSLSession] = {}

    def remember(self, server_hostname: str, ssl_object: ssl.SSLObject) -> None:
        """Keep the session of a connection to ``server_hostname`` for the next one.

        Called when the connection has had its first replies: a TLS 1.3 server
        sends its ticket after the handshake, and a session without one cannot
        be resumed.
        """
        session = ssl_object.session
        if session is None or (ssl_object.version() == "TLSv1.3" and not session.has_ticket):
            return
        sessions = self._sessions
        sessions.pop(server_hostname, None)  # to the young end
        sessions[server_hostname] = session
        if len(sessions) > self.max_sessions:
            del sessions[next(iter(sessions))]

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and isinstance(server_hostname, str):
            session = self._sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


def _upstream_context(profile: TLSProfileLike, verify: bool) -> UpstreamContext:
    ctx = UpstreamContext(ssl.PROTOCOL_TLS_CLIENT)
    apply_profile(ctx, profile)
    if not verify:
        # Opportunistic TLS (RFC 7435): encrypt whatever the certificate;
        # verification.verify_peer_certificate reports what it would have been.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if profile.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=profile.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(
                f"{profile.ca_file}: cannot load ca_file of TLS profile {profile.name!r}: {exc}",
                path=profile.ca_file,
            ) from exc
        # Trust a ca_file intermediate as an anchor, as the after-the-fact
        # verifier (cryptography's Store) does; keeps both paths consistent.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


class TLSContextCache:
    """All contexts of the running configuration; ``clear()`` on reload."""

    def __init__(self, *, max_upstream_hosts: int = 1024) -> None:
        self._lock = threading.RLock()
        self._client: dict[tuple[ProfileKey, CertificateStore, bool], ssl.SSLContext] = {}
        self._upstream: dict[tuple[ProfileKey, bool], UpstreamContext] = {}
        self._sni: dict[tuple[ProfileKey, SNICertificate], ssl.SSLContext] = {}
        # One context per outgoing host; bounded so a stream of distinct
        # names cannot grow memory without limit (leaf files stay on disk).
        self._hosts: OrderedDict[tuple[ProfileKey, CertificateStore, str], ssl.SSLContext] = (
            OrderedDict()
        )
        self._max_hosts = max_upstream_hosts

    def clear(self) -> None:
        """Forget every context (they read certificate and ca_file contents when built)."""
        with self._lock:
            self._client.clear()
            self._upstream.clear()
            self._sni.clear()
            self._hosts.clear()

    def client_leg_context(
        self, profile: TLSProfileLike, certificates: CertificateStore, *, outgoing: bool
    ) -> ssl.SSLContext:
        """Server-side context for the client leg; see the module docstring."""
        key = (profile_key(profile), certificates, outgoing)
        ctx = self._client.get(key)
        if ctx is not None:
            return ctx
        with self._lock:
            ctx = self._client.get(key)
            if ctx is None:
                ctx = _server_context(profile, certificates.server_pairs)
                ctx.sni_callback = self._sni_callback(profile, certificates, issue=outgoing)
                self._client[key] = ctx
            return ctx

    def client_leg_context_for_upstream(
        self, profile: TLSProfileLike, certificates: CertificateStore, upstream_host: str
    ) -> ssl.SSLContext:
        """Client-leg context presenting a proxy-CA leaf for ``upstream_host``.

        The first call for a host may sign and write a leaf; later calls are
        a lookup. Raises CertificateError for a name that cannot be certified.
        """
        try:
            host = str(normalize_host(upstream_host))
        except ValueError as exc:
            raise CertificateError(f"leaf certificate: {exc}") from exc
        key = (profile_key(profile), certificates, host)
        with self._lock:
            ctx = self._hosts.get(key)
            if ctx is not None:
                self._hosts.move_to_end(key)
                return ctx
            ctx = _server_context(profile, certificates.leaf_pairs_for(host))
            ctx.sni_callback = self._sni_callback(profile, certificates, issue=False)
            self._hosts[key] = ctx
            if len(self._hosts) > self._max_hosts:
                self._hosts.popitem(last=False)
            return ctx

    def upstream_leg_context(self, profile: TLSProfileLike, *, verify: bool) -> UpstreamContext:
        """Client-side context for the upstream leg (verify: CERT_REQUIRED)."""
        key = (profile_key(profile), verify)
        ctx = self._upstream.get(key)
        if ctx is not None:
            return ctx
        with self._lock:
            ctx = self._upstream.get(key)
            if ctx is None:
                ctx = self._upstream[key] = _upstream_context(profile, verify)
            return ctx

    def _sni_context(self, profile: TLSProfileLike, entry: SNICertificate) -> ssl.SSLContext:
        key = (profile_key(profile), entry)
        with self._lock:
            ctx = self._sni.get(key)
            if ctx is None:
                ctx = self._sni[key] = _server_context(profile, entry.pairs)
            return ctx

    def _sni_callback(
        self, profile: TLSProfileLike, certificates: CertificateStore, *, issue: bool
    ) -> SNICallback | None:
        if not certificates.sni_certificates and not issue:
            return None
        # Build the SNI contexts now, not during a handshake.
        for entry in certificates.sni_certificates:
            self._sni_context(profile, entry)

        def choose(obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            # Only the certificate changes: OpenSSL keeps the protocol range
            # and ciphers of the original context, which share the profile.
            if not server_name:
                return
            entry = certificates.sni_for(server_name)
            if entry is not None:
                obj.context = self._sni_context(profile, entry)
            elif issue:
                try:
                    obj.context = self.client_leg_context_for_upstream(
                        profile, certificates, server_name
                    )
                except (CertificateError, OSError) as exc:
                    # Keep the default certificate rather than abort the
                    # handshake: the client decides whether it trusts it.
                    log.warning("no leaf for SNI %r: %s", server_name, exc)

        return choose
