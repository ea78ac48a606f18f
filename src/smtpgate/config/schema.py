"""Configuration models for the TOML file of SPEC.md section 5.

Models are frozen; lists are tuples. The ``tls_profiles`` and
``proxy_actions`` fields hold what the file defines; the predefined objects
(SPEC 3, 4) are merged in by the lookups (:meth:`Config.profile`,
:attr:`Config.profiles`, ...). Cross-references are checked when a
:class:`Config` is validated and reported as a :class:`ConfigError`.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Mapping
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from smtpgate.config.errors import ConfigError, Loc, format_loc
from smtpgate.config.names import (
    DEFAULT_PROFILE_FOR_DIRECTION,
    PREDEFINED_ACTION_NAMES,
    PREDEFINED_PROFILE_NAMES,
    SMTP_INCOMING_STANDARD,
    SMTP_OUTGOING_STANDARD,
    TLS_CLIENT_STANDARD,
    TLS_SERVER_STANDARD,
    clone_name,
)
from smtpgate.config.netaddr import (
    TRANSPARENT,
    Address,
    HostPort,
    Nameserver,
    Network,
    parse_syslog_address,
)
from smtpgate.config.paths import OptionalPath, RequiredPath
from smtpgate.config.units import ByteSize, Duration
from smtpgate.config.upstream import MX, Upstream, configured_hosts
from smtpgate.policy.patterns import ANY_DOMAIN, DomainPattern, PatternError, PatternKind
from smtpgate.policy.rules import (
    EncryptionRule,
    RecipientEncryption,
    RuleSet,
    SenderEncryption,
    TLSNameFrom,
)
from smtpgate.tls.profile import pfs_contradiction

MAX_NAME_LENGTH = 100
FALLBACK_HOSTNAME = "smtpgate.local"

KNOWN_ESMTP_KEYWORDS = frozenset(
    {
        "8BITMIME",
        "PIPELINING",
        "SIZE",
        "SMTPUTF8",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "BINARYMIME",
    }
)
"""Keywords smtpgate may pass to the client. STARTTLS has its own section."""

# BINARYMIME is known but not a default: a binary message can only go on to an
# upstream that offers BINARYMIME and CHUNKING (docs/proxy.md).
DEFAULT_ESMTP_KEYWORDS = (
    "8BITMIME",
    "PIPELINING",
    "SIZE",
    "SMTPUTF8",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
)

DEFAULT_AUTH_MECHANISMS = ("PLAIN", "LOGIN")
_SASL_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}")

# Keyword -> keyword it depends on (RFC 6531: an SMTPUTF8 server also supports 8BITMIME;
# RFC 3030: BINARYMIME is sent with BDAT only).
_ESMTP_DEPENDENCIES = {"SMTPUTF8": "8BITMIME", "BINARYMIME": "CHUNKING"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def __getstate__(self) -> dict[Any, Any]:
        """Pickled (``serve`` hands its workers the configuration so) without what a
        ``cached_property`` computed: the fields only; the copy computes it again."""
        state = super().__getstate__()
        fields = type(self).model_fields
        state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k in fields}
        return state


def _custom_error(kind: str, reason: str) -> PydanticCustomError:
    # The reason goes through the context so braces in it are never a template.
    return PydanticCustomError(kind, "{reason}", {"reason": reason})


def _check_name(value: str) -> str:
    if not value:
        raise _custom_error("name", "name must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise _custom_error("name", f"name longer than {MAX_NAME_LENGTH} characters")
    if value != value.strip() or not value.isprintable():
        raise _custom_error(
            "name", f"name {value!r} has leading/trailing white space or control characters"
        )
    return value


Name = Annotated[StrictStr, AfterValidator(_check_name)]


def _pattern(value: object) -> DomainPattern:
    if isinstance(value, DomainPattern):
        return value
    if not isinstance(value, str):
        raise _custom_error("domain_pattern", "expected a domain pattern string")
    try:
        return DomainPattern.parse(value)
    except PatternError as exc:
        raise _custom_error("domain_pattern", str(exc)) from None


def _pattern_text(value: DomainPattern) -> str:
    return value.text


Pattern = Annotated[
    DomainPattern,
    PlainValidator(_pattern),
    PlainSerializer(_pattern_text),
    WithJsonSchema({"type": "string", "maxLength": 200}),
]


@lru_cache(maxsize=1)
def default_hostname() -> str:
    """``socket.getfqdn()``, or ``smtpgate.local`` when it yields nothing usable."""
    try:
        name = socket.getfqdn()
    except OSError:  # pragma: no cover - getfqdn falls back internally
        name = ""
    return name if name and name.isprintable() and " " not in name else FALLBACK_HOSTNAME


# --- gateway, logging, certificates, console -------------------------------------

#: The most ``[gateway] workers`` may ask for.
MAX_WORKERS = 256


def _workers(value: Any) -> int | Literal["auto"]:
    if value == "auto" and isinstance(value, str):
        return "auto"
    if type(value) is not int or not 1 <= value <= MAX_WORKERS:
        raise _custom_error(
            "workers", f'{value!r} is not a number of processes: 1 to {MAX_WORKERS}, or "auto"'
        )
    return value


Workers = Annotated[
    int | Literal["auto"],
    PlainValidator(_workers),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_WORKERS}, {"const": "auto"}]}
    ),
]


class Gateway(_Model):
    hostname: StrictStr = Field(default_factory=default_hostname)
    state_dir: RequiredPath = Field(default="state", validate_default=True)
    #: Saved versions kept in state_dir/versions (issue 8); the oldest go first.
    keep_versions: int = Field(default=50, ge=1, le=10_000)
    #: Client connections at once, all listeners together; past it ``421 4.7.0``.
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    #: Client connections at once from one address (Postfix's
    #: smtpd_client_connection_count_limit); past it ``421 4.7.0``.
    max_connections_per_client: int = Field(default=50, ge=1, le=1_000_000)
    #: DNS servers for ``upstream = "mx"``; empty: the system's (/etc/resolv.conf).
    resolvers: tuple[Nameserver, ...] = Field(default=(), strict=False, max_length=10)
    #: How long one DNS lookup may take, all servers and retries included.
    dns_timeout: Duration = Field(default=10.0, validate_default=True)
    #: Processes that serve connections (``serve``): ``"auto"`` is one per core this
    #: process may run on; 1 is one process, as before there were workers.
    workers: Workers = "auto"

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not value or len(value) > 253 or not value.isprintable() or " " in value:
            raise _custom_error("hostname", f"{value!r} is not a usable host name")
        return value


LogTarget = Literal["file", "stderr", "journald", "syslog"]
SyslogFacility = Literal[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7",
]  # fmt: skip


def _check_syslog_address(value: str) -> str:
    try:
        parse_syslog_address(value)
    except ValueError as exc:
        raise _custom_error("syslog_address", str(exc)) from None
    return value


SyslogAddressText = Annotated[StrictStr, AfterValidator(_check_syslog_address)]


class LoggingSettings(_Model):
    format: Literal["json", "text"] = "json"
    #: Where records go; without it, ``file`` when a file is set, else standard error.
    target: LogTarget = "stderr"
    file: OptionalPath = None
    #: Envelope sender and recipients in the records (off: domains only).
    addresses: bool = True
    #: ``target = "syslog"``: a Unix datagram socket path, or ``udp://host:port`` /
    #: ``tcp://host:port`` (RFC 5426 / RFC 6587 octet counting).
    syslog_address: SyslogAddressText = "/dev/log"
    syslog_facility: SyslogFacility = "mail"
    #: ``target = "journald"``: the journal's native socket.
    journald_socket: StrictStr = "/run/systemd/journal/socket"

    @model_validator(mode="before")
    @classmethod
    def _default_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and "target" not in data:
            data = {**data, "target": "file" if data.get("file") else "stderr"}
        return data


class SNICertificate(_Model):
    """More certificates chosen by SNI; ``names`` are stored as lower-case
    A-labels (``*.example.com`` allowed), as :mod:`smtpgate.tls` expects."""

    names: tuple[StrictStr, ...] = Field(strict=False)
    cert: RequiredPath
    key: RequiredPath
    #: An RSA certificate presented beside an ECDSA ``cert`` to clients that need RSA.
    rsa_cert: OptionalPath = None
    rsa_key: OptionalPath = None

    @field_validator("names")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise _custom_error("sni_names", "list at least one name")
        normalized = []
        for name in value:
            pattern = _pattern(name)
            if pattern.is_any:
                raise _custom_error(
                    "sni_names", "'*' is not a name; the default certificate covers it"
                )
            prefix = "*." if pattern.kind is PatternKind.SUBDOMAINS else ""
            normalized.append(prefix + pattern.domain)
        return tuple(normalized)


class Certificates(_Model):
    server_cert: OptionalPath = None
    server_key: OptionalPath = None
    #: An RSA certificate presented beside an ECDSA ``server_cert`` to clients
    #: that need RSA (static-RSA key exchange, clients without ECDSA).
    server_rsa_cert: OptionalPath = None
    server_rsa_key: OptionalPath = None
    ca_cert: OptionalPath = None
    ca_key: OptionalPath = None
    sni: tuple[SNICertificate, ...] = Field(default=(), strict=False)


class ConsoleSettings(_Model):
    enabled: bool = False
    listen: Address = Field(default=HostPort("127.0.0.1", 8443))
    #: How long the traffic store keeps transaction records (docs/api.md).
    retention: Duration = Field(default=30 * 86400.0, validate_default=True)
    #: ``postgresql://...``: the traffic store of several instances in one database;
    #: unset: an SQLite file in ``gateway.state_dir``.
    database: StrictStr | None = None

    @field_validator("database")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise _custom_error(
                "database",
                "write a PostgreSQL URL, postgresql://user:password@host:5432/name "
                "(leave it out for the SQLite file in gateway.state_dir)",
            )
        return value


class MetricsSettings(_Model):
    """Prometheus metrics on a listener of their own (docs/operations.md#metrics)."""

    enabled: bool = False
    #: Plain HTTP, ``/metrics``: loopback unless a scraper elsewhere needs it.
    listen: Address = Field(default=HostPort("127.0.0.1", 9425))
    #: A file holding the bearer token scrapers must send; empty: anonymous.
    token_file: OptionalPath = None


# --- TLS profiles (SPEC 3) ------------------------------------------------------


class TLSProfile(_Model):
    name: Name
    min_version: Literal["1.0", "1.1", "1.2", "1.3"] = "1.2"
    pfs: Literal["none", "allowed", "required"] = "allowed"
    validate_certificates: bool = True
    ca_file: OptionalPath = None
    ocsp: bool = False
    ocsp_allow_unavailable: bool = True
    tls_compliant_only: bool = False

    @property
    def read_only(self) -> bool:
        """Predefined profiles cannot be changed; the file cannot use their names."""
        return self.name in PREDEFINED_PROFILE_NAMES


# --- proxy actions (SPEC 4) --------------------------------------------------------


def _check_rule_name(value: str) -> str:
    if value.isdigit():
        raise _custom_error(
            "rule_name", "a rule name cannot be a number (numbers address rules by position)"
        )
    return value


class RuleEntry(_Model):
    """One encryption rule as written in ``[[proxy_actions.starttls.rules]]``.

    ``name`` is the rule's stable identity (unique within its action): logs
    and ``rules test`` show it beside the position, so inserting a rule does
    not change what an old log line meant. ``comment`` is free text.
    """

    name: Annotated[Name, AfterValidator(_check_rule_name)] | None = None
    comment: StrictStr | None = None
    enabled: bool = True
    sender: Pattern = ANY_DOMAIN
    recipient: Pattern = ANY_DOMAIN
    sender_encryption: SenderEncryption = Field(default=SenderEncryption.OPTIONAL, strict=False)
    recipient_encryption: RecipientEncryption = Field(
        default=RecipientEncryption.PREFERRED, strict=False
    )
    tls_name_from: TLSNameFrom = Field(default=TLSNameFrom.NEXT_HOP, strict=False)

    def to_rule(self) -> EncryptionRule:
        return EncryptionRule(
            name=self.name,
            enabled=self.enabled,
            sender=self.sender,
            recipient=self.recipient,
            sender_encryption=self.sender_encryption,
            recipient_encryption=self.recipient_encryption,
            tls_name_from=self.tls_name_from,
        )


class GeneralSettings(_Model):
    max_message_size: ByteSize = Field(default=25_000_000, validate_default=True)
    max_recipients: int = Field(default=100, ge=1, le=100_000)
    # Bytes including CRLF. RFC 5321 4.5.3.1.6: 1000 must be accepted.
    max_line_length: int = Field(default=1000, ge=1000, le=1_048_576)
    # Bytes including CRLF; RFC 5321 4.5.3.1.4 says 512, extensions may extend it.
    max_command_line: int = Field(default=2048, ge=512, le=65_536)
    #: Erroneous commands per session, then 421 (Postfix's smtpd_hard_error_limit).
    max_errors: int = Field(default=20, ge=1, le=100_000)
    #: Commands per session, then 421.
    max_commands: int = Field(default=10_000, ge=10, le=10_000_000)
    #: Silence while a command is expected (and the upstream's silence).
    command_timeout: Duration = Field(default=300.0, validate_default=True)
    #: Time for one whole command line, however it trickles in.
    command_deadline: Duration = Field(default=300.0, validate_default=True)
    #: TCP connect (and implicit-TLS handshake) to one upstream host; then the next is tried.
    connect_timeout: Duration = Field(default=30.0, validate_default=True)
    #: Silence inside DATA (and the upstream's answer to the final dot).
    data_timeout: Duration = Field(default=600.0, validate_default=True)
    #: Time for the whole DATA phase, from 354 to the final dot.
    data_deadline: Duration = Field(default=3600.0, validate_default=True)
    #: Bytes per second a client must keep up during DATA (0: off), as Postfix's
    #: smtpd_min_data_rate.
    min_data_rate: ByteSize = Field(default=500, validate_default=True)
    #: Time for the client leg's TLS handshake (STARTTLS or implicit TLS).
    tls_handshake_timeout: Duration = Field(default=60.0, validate_default=True)
    bare_newline: Literal["reject", "normalize"] = "reject"
    nul_bytes: Literal["reject", "strip"] = "reject"
    received_header: bool = True

    @field_validator("max_message_size")
    @classmethod
    def _positive_size(cls, value: int) -> int:
        if value < 1:
            raise _custom_error("size", "must be at least 1 byte")
        return value


class ESMTPSettings(_Model):
    enabled: bool = True
    keywords: tuple[StrictStr, ...] = Field(default=DEFAULT_ESMTP_KEYWORDS, strict=False)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(k.upper() for k in value)
        for keyword in upper:
            if keyword == "STARTTLS":
                raise _custom_error("esmtp_keyword", "STARTTLS is set in [starttls], not here")
            if keyword not in KNOWN_ESMTP_KEYWORDS:
                known = ", ".join(sorted(KNOWN_ESMTP_KEYWORDS))
                raise _custom_error(
                    "esmtp_keyword", f"unknown ESMTP keyword {keyword!r}; known: {known}"
                )
        if len(set(upper)) != len(upper):
            raise _custom_error("esmtp_keyword", "keywords are listed more than once")
        for keyword, needs in _ESMTP_DEPENDENCIES.items():
            if keyword in upper and needs not in upper:
                raise _custom_error("esmtp_keyword", f"{keyword} requires {needs}")
        return upper


class StartTLSSettings(_Model):
    enabled: bool = True
    tls_profile: Name = TLS_SERVER_STANDARD
    require_tls_for_envelope: bool = False
    rules: tuple[RuleEntry, ...] = Field(default=(), strict=False)


class ProxyAction(_Model):
    name: Name
    direction: Literal["incoming", "outgoing"] = "incoming"
    general: GeneralSettings = GeneralSettings()
    esmtp: ESMTPSettings = ESMTPSettings()
    starttls: StartTLSSettings = StartTLSSettings()

    @model_validator(mode="before")
    @classmethod
    def _direction_default_profile(cls, data: Any) -> Any:
        # The default profile depends on the direction (see names.py).
        if not isinstance(data, dict):
            return data
        starttls = data.get("starttls", {})
        if isinstance(starttls, dict) and "tls_profile" not in starttls:
            direction = data.get("direction", "incoming")
            # A direction of the wrong type (a list, a table) is the field's own error.
            known = isinstance(direction, str) and direction in DEFAULT_PROFILE_FOR_DIRECTION
            profile = DEFAULT_PROFILE_FOR_DIRECTION[direction] if known else TLS_SERVER_STANDARD
            data = {**data, "starttls": {**starttls, "tls_profile": profile}}
        return data

    @property
    def read_only(self) -> bool:
        return self.name in PREDEFINED_ACTION_NAMES

    @cached_property
    def rule_set(self) -> RuleSet:
        """The compiled rules (computed once; the model is frozen)."""
        return RuleSet([entry.to_rule() for entry in self.starttls.rules])


# --- policies ------------------------------------------------------------------------


class Policy(_Model):
    name: Name
    listen: Address
    implicit_tls: bool = False
    upstream: Upstream
    #: The port of the MX hosts when ``upstream = "mx"`` (25; another only for labs and tests).
    mx_port: int = Field(default=25, ge=1, le=65535)
    upstream_implicit_tls: bool = False
    proxy_action: Name = SMTP_INCOMING_STANDARD
    proxy_protocol: bool = False
    #: Listen with IP_TRANSPARENT for a TPROXY rule (``upstream = "transparent"`` only).
    tproxy: bool = False
    #: The balancers whose PROXY headers are believed; empty: any peer's.
    proxy_protocol_from: tuple[Network, ...] = Field(default=(), strict=False)
    #: ``"relay"``: AUTH offered over TLS and relayed to the upstream on an encrypted leg
    #: bound to the session (smtpgate in front of a submission server; docs/proxy.md).
    auth: Literal["off", "relay"] = "off"
    #: The SASL mechanisms the EHLO reply offers with ``auth = "relay"``.
    auth_mechanisms: tuple[StrictStr, ...] = Field(default=DEFAULT_AUTH_MECHANISMS, strict=False)

    @field_validator("auth_mechanisms")
    @classmethod
    def _auth_mechanisms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(m.upper() for m in value)
        if not upper:
            raise _custom_error("auth_mechanism", "name at least one SASL mechanism")
        for mechanism in upper:
            if not _SASL_MECHANISM.fullmatch(mechanism):
                raise _custom_error(
                    "auth_mechanism",
                    f"{mechanism!r} is not a SASL mechanism name (RFC 4422: 1-20 of A-Z 0-9 - _)",
                )
        if len(set(upper)) != len(upper):
            raise _custom_error("auth_mechanism", "mechanisms are listed more than once")
        return upper


# --- the whole file ------------------------------------------------------------------


_SECTIONS = ("gateway", "logging", "certificates", "console", "metrics")


class Config(_Model):
    format: Literal[1, 2] = 2
    # Defaults serve direct construction; validation fills {} first (below).
    gateway: Gateway = Field(default_factory=Gateway)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    certificates: Certificates = Field(default_factory=Certificates)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    policies: tuple[Policy, ...] = Field(default=(), strict=False)
    tls_profiles: tuple[TLSProfile, ...] = Field(default=(), strict=False)
    proxy_actions: tuple[ProxyAction, ...] = Field(default=(), strict=False)

    @model_validator(mode="before")
    @classmethod
    def _fill_sections(cls, data: Any) -> Any:
        # Missing sections are validated from {} so that their defaults see the
        # validation context (relative state_dir).
        if isinstance(data, dict):
            missing: dict[str, Any] = {s: {} for s in _SECTIONS if s not in data}
            if missing:
                data = {**data, **missing}
        return data

    @model_validator(mode="after")
    def _check_references(self) -> Config:
        problems = list(_cross_check(self))
        if problems:
            raise ConfigError.at(problems)
        return self

    # -- merged views (predefined first) --

    @property
    def profiles(self) -> tuple[TLSProfile, ...]:
        """Predefined and user TLS profiles."""
        return tuple(self.profiles_by_name.values())

    @property
    def actions(self) -> tuple[ProxyAction, ...]:
        """Predefined and user proxy actions."""
        return tuple(self.actions_by_name.values())

    @cached_property
    def profiles_by_name(self) -> Mapping[str, TLSProfile]:
        return MappingProxyType({p.name: p for p in (*PREDEFINED_PROFILES, *self.tls_profiles)})

    @cached_property
    def actions_by_name(self) -> Mapping[str, ProxyAction]:
        return MappingProxyType({a.name: a for a in (*PREDEFINED_ACTIONS, *self.proxy_actions)})

    @cached_property
    def policies_by_name(self) -> Mapping[str, Policy]:
        return MappingProxyType({p.name: p for p in self.policies})

    def profile(self, name: str) -> TLSProfile:
        """The TLS profile called ``name``; ``KeyError`` if there is none."""
        return self.profiles_by_name[name]

    def action(self, name: str) -> ProxyAction:
        """The proxy action called ``name``; ``KeyError`` if there is none."""
        return self.actions_by_name[name]

    def policy(self, name: str) -> Policy:
        """The policy called ``name``; ``KeyError`` if there is none."""
        return self.policies_by_name[name]

    def profile_for(self, action: ProxyAction | str) -> TLSProfile:
        """The TLS profile an action (or action name) uses."""
        if isinstance(action, str):
            action = self.action(action)
        return self.profile(action.starttls.tls_profile)

    def clone_profile(self, name: str) -> TLSProfile:
        """An editable copy of profile ``name`` under the next free ``name.N``.
        The copy is not added to this (immutable) config."""
        source = self.profile(name)
        return source.model_copy(update={"name": clone_name(self.profiles_by_name, name)})

    def clone_action(self, name: str) -> ProxyAction:
        """An editable copy of action ``name`` under the next free ``name.N``."""
        source = self.action(name)
        return source.model_copy(update={"name": clone_name(self.actions_by_name, name)})


# --- cross-reference checks ----------------------------------------------------------


def _names_problems(
    section: str, names: list[str], predefined: frozenset[str]
) -> Iterator[tuple[Loc, str]]:
    first_index: dict[str, int] = {}
    taken = set(names) | predefined
    for index, name in enumerate(names):
        if name in predefined:
            yield (
                (section, index, "name"),
                f"{name!r} is predefined and read-only; clone it "
                f"(e.g. as {clone_name(taken, name)!r}) and change the copy",
            )
        elif name in first_index:
            yield (
                (section, index, "name"),
                f"duplicate name {name!r} (also {format_loc((section, first_index[name]))})",
            )
        else:
            first_index[name] = index


def _cross_check(config: Config) -> Iterator[tuple[Loc, str]]:
    yield from _names_problems("policies", [p.name for p in config.policies], frozenset())
    yield from _names_problems(
        "tls_profiles", [p.name for p in config.tls_profiles], PREDEFINED_PROFILE_NAMES
    )
    yield from _names_problems(
        "proxy_actions", [a.name for a in config.proxy_actions], PREDEFINED_ACTION_NAMES
    )

    for k, profile in enumerate(config.tls_profiles):
        problem = pfs_contradiction(profile.min_version, profile.pfs)
        if problem is not None:
            yield ("tls_profiles", k, "pfs"), problem

    action_names = PREDEFINED_ACTION_NAMES | {a.name for a in config.proxy_actions}
    profile_names = PREDEFINED_PROFILE_NAMES | {p.name for p in config.tls_profiles}
    for i, action in enumerate(config.proxy_actions):
        if action.starttls.tls_profile not in profile_names:
            yield (
                ("proxy_actions", i, "starttls", "tls_profile"),
                f"no TLS profile named {action.starttls.tls_profile!r}",
            )

    for i, action in enumerate(config.proxy_actions):
        seen: dict[str, int] = {}
        for j, entry in enumerate(action.starttls.rules):
            if entry.name is None:
                continue
            if entry.name in seen:
                first = ("proxy_actions", i, "starttls", "rules", seen[entry.name])
                yield (
                    ("proxy_actions", i, "starttls", "rules", j, "name"),
                    f"duplicate rule name {entry.name!r} (also {format_loc(first)})",
                )
            seen.setdefault(entry.name, j)

    for i, policy in enumerate(config.policies):
        if policy.proxy_action not in action_names:
            yield (
                ("policies", i, "proxy_action"),
                f"no proxy action named {policy.proxy_action!r}",
            )
        for j, earlier in enumerate(config.policies[:i]):
            if policy.listen.overlaps(earlier.listen):
                yield (
                    ("policies", i, "listen"),
                    f"{policy.listen} collides with "
                    f"{format_loc(('policies', j, 'listen'))} ({earlier.listen})",
                )
        if policy.upstream == TRANSPARENT and policy.proxy_protocol:
            yield (
                ("policies", i, "proxy_protocol"),
                'upstream = "transparent" takes the destination from the accepted connection, '
                "which behind a PROXY-protocol proxy is the proxy's own",
            )
        if policy.tproxy and policy.upstream != TRANSPARENT:
            yield (
                ("policies", i, "tproxy"),
                f'tproxy needs upstream = "{TRANSPARENT}" '
                "(a TPROXY listener takes connections meant for other hosts)",
            )
        yield from _loop_problems(config, i, policy)
        if policy.mx_port != 25 and policy.upstream != MX:
            yield (("policies", i, "mx_port"), 'only used with upstream = "mx"')
        yield from _auth_problems(config, i, policy)
        if config.console.enabled and config.console.listen.overlaps(policy.listen):
            yield (
                ("console", "listen"),
                f"{config.console.listen} collides with "
                f"{format_loc(('policies', i, 'listen'))} ({policy.listen})",
            )

        if config.metrics.enabled and config.metrics.listen.overlaps(policy.listen):
            yield (
                ("metrics", "listen"),
                f"{config.metrics.listen} collides with "
                f"{format_loc(('policies', i, 'listen'))} ({policy.listen})",
            )
    if (
        config.metrics.enabled
        and config.console.enabled
        and config.metrics.listen.overlaps(config.console.listen)
    ):
        yield (
            ("metrics", "listen"),
            f"{config.metrics.listen} collides with console.listen ({config.console.listen})",
        )

    logging = config.logging
    if logging.target == "file" and logging.file is None:
        yield ("logging", "file"), 'target = "file" needs a file'
    elif logging.target != "file" and logging.file is not None:
        yield ("logging", "file"), f'a file is set, but target = "{logging.target}"'

    yield from _certificate_problems(config.certificates)


def _auth_problems(config: Config, i: int, policy: Policy) -> Iterator[tuple[Loc, str]]:
    """``auth = "relay"`` where it cannot work (docs/configuration.md, AUTH)."""
    if policy.auth != "relay":
        if policy.auth_mechanisms != DEFAULT_AUTH_MECHANISMS:
            yield ("policies", i, "auth_mechanisms"), 'only used with auth = "relay"'
        return
    at: Loc = ("policies", i, "auth")
    if not configured_hosts(policy.upstream):
        yield (
            at,
            f'AUTH is relayed to the configured submission server; upstream = "{policy.upstream}" '
            "chooses a server per recipient or connection, after AUTH",
        )
    action = config.actions_by_name.get(policy.proxy_action)
    if action is None:
        return  # the proxy_action's own error
    if not action.esmtp.enabled:
        yield at, f"AUTH needs EHLO, and proxy action {action.name!r} has esmtp disabled"
    elif not policy.implicit_tls and not action.starttls.enabled:
        yield (
            at,
            f"AUTH is offered over TLS only, and this listener has neither implicit_tls nor "
            f"STARTTLS (proxy action {action.name!r})",
        )


def _loop_problems(config: Config, i: int, policy: Policy) -> Iterator[tuple[Loc, str]]:
    """A configured upstream that is one of smtpgate's own listeners (a mail loop)."""
    hosts = configured_hosts(policy.upstream)
    for k, host in enumerate(hosts):
        for j, other in enumerate(config.policies):
            if host.reaches(other.listen):
                at: Loc = ("policies", i, "upstream")
                if not isinstance(policy.upstream, HostPort):
                    at += (k,)
                yield (
                    at,
                    f"{host} is smtpgate's own listener "
                    f"{format_loc(('policies', j, 'listen'))} (mail loop)",
                )
                break


def _pair_problems(
    at: Loc, table: object, cert_key: str, key_key: str
) -> Iterator[tuple[Loc, str]]:
    cert, key = getattr(table, cert_key), getattr(table, key_key)
    if (cert is None) != (key is None):
        missing = key_key if key is None else cert_key
        yield (*at, missing), f"{cert_key} and {key_key} must both be set or both be empty"


def _certificate_problems(certs: Certificates) -> Iterator[tuple[Loc, str]]:
    pairs = (("server_cert", "server_key"), ("server_rsa_cert", "server_rsa_key"))
    for cert_key, key_key in (*pairs, ("ca_cert", "ca_key")):
        yield from _pair_problems(("certificates",), certs, cert_key, key_key)
    if certs.server_rsa_cert is not None and certs.server_cert is None:
        yield (
            ("certificates", "server_rsa_cert"),
            "goes beside server_cert (an ECDSA certificate), which is not set; "
            "a lone RSA certificate goes in server_cert",
        )
    seen: dict[str, int] = {}
    for k, entry in enumerate(certs.sni):
        yield from _pair_problems(("certificates", "sni", k), entry, "rsa_cert", "rsa_key")
        for name in entry.names:
            if name in seen and seen[name] != k:
                yield (
                    ("certificates", "sni", k, "names"),
                    f"{name!r} is already in {format_loc(('certificates', 'sni', seen[name]))}",
                )
            seen.setdefault(name, k)


# -- predefined objects (SPEC.md 3, 4), merged into every configuration ------------------
# Built here, after the models, so that Config can merge them without importing
# smtpgate.config.predefined (which presents them) back: the imports point one way.

# SPEC 3: both with min_version 1.2; the client one does not insist on
# TLS-compliant traffic, the server one does.
TLS_CLIENT_STANDARD_PROFILE = TLSProfile(
    name=TLS_CLIENT_STANDARD, min_version="1.2", tls_compliant_only=False
)
TLS_SERVER_STANDARD_PROFILE = TLSProfile(
    name=TLS_SERVER_STANDARD, min_version="1.2", tls_compliant_only=True
)
PREDEFINED_PROFILES: tuple[TLSProfile, ...] = (
    TLS_CLIENT_STANDARD_PROFILE,
    TLS_SERVER_STANDARD_PROFILE,
)

# SPEC 4: default limits and ESMTP, no rules (so the default rule applies).
SMTP_INCOMING_STANDARD_ACTION = ProxyAction.model_validate(
    {"name": SMTP_INCOMING_STANDARD, "direction": "incoming"}
)
SMTP_OUTGOING_STANDARD_ACTION = ProxyAction.model_validate(
    {"name": SMTP_OUTGOING_STANDARD, "direction": "outgoing"}
)
PREDEFINED_ACTIONS: tuple[ProxyAction, ...] = (
    SMTP_INCOMING_STANDARD_ACTION,
    SMTP_OUTGOING_STANDARD_ACTION,
)
