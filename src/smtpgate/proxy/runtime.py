"""Per-policy settings compiled once, at start and on SIGHUP.

Everything a session consults per command is precomputed here (SSL
contexts, the EHLO keyword list, limits), so the hot path only reads
attributes. What is cached while the configuration runs (upstream
certificate verdicts, parsed trust anchors, DNS answers) hangs off the
runtime too, so a reload, which builds new runtimes, starts without any of
it; the idle upstream legs are the gateway's, which replaces them on reload.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from smtpgate.config.netaddr import TRANSPARENT, HostPort, IPNetwork
from smtpgate.config.schema import Config, Policy, TLSProfile
from smtpgate.config.upstream import configured_hosts
from smtpgate.policy.decisions import UpstreamTLS, advertise_starttls
from smtpgate.policy.rules import RuleSet
from smtpgate.proxy.upstream import UpstreamTarget
from smtpgate.routing.nexthops import NextHop, Route, Via, configured_route
from smtpgate.routing.resolver import NextHopResolver
from smtpgate.smtp.server import EhloOffer, ServerLimits
from smtpgate.tls.certificates import CertificateStore
from smtpgate.tls.contexts import TLSContextCache
from smtpgate.tls.trust import TrustAnchors
from smtpgate.tls.verification import UpstreamVerifier


@dataclass(frozen=True, slots=True)
class PolicyRuntime:
    name: str
    listen_host: str
    listen_port: int
    implicit_tls: bool
    proxy_protocol: bool
    #: Peers whose PROXY header is believed; empty: any peer's.
    proxy_protocol_from: tuple[IPNetwork, ...]
    #: The ``upstream`` setting as the ``listening`` record shows it.
    upstream: str
    #: The configured next hops; None with ``upstream = "mx"`` (each domain's, from DNS).
    route: Route | None
    #: Looks up MX routes; shared by the policies of one configuration (one cache).
    resolver: NextHopResolver
    #: The port of MX hosts (``upstream = "mx"``).
    mx_port: int
    upstream_implicit_tls: bool
    #: ``upstream = "transparent"``: each connection goes on to its original destination.
    transparent: bool
    #: The listener has IP_TRANSPARENT (TPROXY); the local address is the destination.
    tproxy: bool
    #: Every policy's ``listen`` of this configuration: a transparent session must not
    #: relay to one of them (a mail loop).
    own_listeners: tuple[HostPort, ...]
    hostname: str
    action_name: str
    limits: ServerLimits
    esmtp_enabled: bool
    #: The EHLO answer for a cleartext session and for an encrypted one.
    ehlo_offer_clear: EhloOffer
    ehlo_offer_tls: EhloOffer
    require_tls_for_envelope: bool
    rules: RuleSet
    received_header: bool
    command_timeout: float
    command_deadline: float
    data_timeout: float
    data_deadline: float
    #: Bytes per second during DATA, 0: no minimum.
    min_data_rate: int
    tls_handshake_timeout: float
    profile: TLSProfile
    client_tls_context: ssl.SSLContext
    #: How the upstream leg is set up, per TLS mode of SPEC 2.2, towards the first
    #: configured next hop (:meth:`UpstreamTarget.to` turns it to another).
    upstream_targets: Mapping[UpstreamTLS, UpstreamTarget]


def compile_policy(
    config: Config,
    policy: Policy,
    certificates: CertificateStore,
    contexts: TLSContextCache,
    trust: TrustAnchors,
    resolver: NextHopResolver,
) -> PolicyRuntime:
    """``trust`` and ``resolver`` are shared by the policies of one configuration
    (one parse per file, one DNS cache)."""
    action = config.action(policy.proxy_action)
    profile = config.profile_for(action)
    general = action.general
    esmtp = action.esmtp
    starttls = action.starttls
    rules = action.rule_set
    keywords = tuple(
        f"SIZE {general.max_message_size}" if k.upper() == "SIZE" else k.upper()
        for k in esmtp.keywords
    )
    offer_starttls = advertise_starttls(
        implicit_tls_listener=policy.implicit_tls,
        session_encrypted=False,
        esmtp_enabled=esmtp.enabled,
        starttls_enabled=starttls.enabled,
        rules=rules,
    )
    auth_keyword = "AUTH " + " ".join(policy.auth_mechanisms) if policy.auth == "relay" else ""
    hosts = configured_hosts(policy.upstream)
    route = configured_route(hosts) if hosts else None
    transparent = policy.upstream == TRANSPARENT
    # The first hop; with MX or transparent a stand-in that each recipient's route
    # (each session's destination) replaces.
    first = route.hops[0] if route is not None else NextHop("", policy.mx_port, via=Via.MX)
    if action.direction == "outgoing" and route is not None:
        # The client leg poses as the upstream: the primary.
        client_ctx = contexts.client_leg_context_for_upstream(profile, certificates, first.host)
    elif action.direction == "outgoing":
        # MX, transparent: no host is known before the client connects, so the leaf is
        # issued for the name the client asks for by SNI.
        client_ctx = contexts.client_leg_context(profile, certificates, outgoing=True)
    else:
        client_ctx = contexts.client_leg_context(profile, certificates, outgoing=False)
    verified = contexts.upstream_leg_context(profile, verify=True)
    unverified = contexts.upstream_leg_context(profile, verify=False)
    verifier = UpstreamVerifier(profile, trust)
    targets = {}
    for mode in UpstreamTLS:
        verify = mode is UpstreamTLS.REQUIRED and profile.validate_certificates
        targets[mode] = UpstreamTarget(
            hop=first,
            mode=mode,
            # An implicit-TLS upstream cannot be spoken to in clear, whatever the mode.
            implicit_tls=policy.upstream_implicit_tls,
            starttls=mode is not UpstreamTLS.NONE and not policy.upstream_implicit_tls,
            context=verified if verify else unverified,
            verify_in_handshake=verify,
            profile=profile,
            verifier=verifier,
            ehlo_name=config.gateway.hostname,
            timeout=general.command_timeout,
            connect_timeout=general.connect_timeout,
        )
    # Read ca_file now, as the handshake contexts do: the checks then trust
    # what this load read, a broken file fails the load, and the first
    # connection does not parse the system bundle.
    trust.anchors(profile.ca_file)
    return PolicyRuntime(
        name=policy.name,
        listen_host=policy.listen.host,
        listen_port=policy.listen.port,
        implicit_tls=policy.implicit_tls,
        proxy_protocol=policy.proxy_protocol,
        proxy_protocol_from=policy.proxy_protocol_from,
        upstream=", ".join(str(host) for host in hosts) or str(policy.upstream),
        route=route,
        resolver=resolver,
        mx_port=policy.mx_port,
        upstream_implicit_tls=policy.upstream_implicit_tls,
        transparent=transparent,
        tproxy=policy.tproxy,
        own_listeners=tuple(p.listen for p in config.policies) if transparent else (),
        hostname=config.gateway.hostname,
        action_name=action.name,
        limits=ServerLimits(
            max_command_line=general.max_command_line,
            max_data_line=general.max_line_length,
            max_message_size=general.max_message_size,
            max_recipients=general.max_recipients,
            max_errors=general.max_errors,
            max_commands=general.max_commands,
            bare_newline=general.bare_newline,
            nul_bytes=general.nul_bytes,
            auth=policy.auth == "relay",
        ),
        esmtp_enabled=esmtp.enabled,
        ehlo_offer_clear=EhloOffer.of(
            config.gateway.hostname, (*keywords, "STARTTLS") if offer_starttls else keywords
        ),
        # AUTH over TLS only: credentials never cross a clear client leg (RFC 4954 section 4).
        ehlo_offer_tls=EhloOffer.of(
            config.gateway.hostname, (*keywords, auth_keyword) if auth_keyword else keywords
        ),
        require_tls_for_envelope=starttls.require_tls_for_envelope,
        rules=rules,
        received_header=general.received_header,
        command_timeout=general.command_timeout,
        command_deadline=general.command_deadline,
        data_timeout=general.data_timeout,
        data_deadline=general.data_deadline,
        min_data_rate=general.min_data_rate,
        tls_handshake_timeout=general.tls_handshake_timeout,
        profile=profile,
        client_tls_context=client_ctx,
        upstream_targets=MappingProxyType(targets),
    )


def load_certificates(config: Config) -> CertificateStore:
    certs = config.certificates
    return CertificateStore.load(
        config.gateway.state_dir,
        server_cert=certs.server_cert,
        server_key=certs.server_key,
        server_rsa_cert=certs.server_rsa_cert,
        server_rsa_key=certs.server_rsa_key,
        ca_cert=certs.ca_cert,
        ca_key=certs.ca_key,
        sni=[(list(e.names), e.cert, e.key, e.rsa_cert, e.rsa_key) for e in certs.sni],
        hostname=config.gateway.hostname,
    )
