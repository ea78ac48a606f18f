"""``host:port`` addresses for listeners and upstreams (SPEC.md 5)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Final, Literal, NamedTuple

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from smtpgate.policy.patterns import DomainPattern, PatternError

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*", ""})
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


class HostPort(NamedTuple):
    """A parsed address; ``host`` is an IP address text (IPv6 without
    brackets) or a lower-case host name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        """Listens on every address of its family (``0.0.0.0`` or ``::``)."""
        return self.host in _WILDCARD_HOSTS

    def overlaps(self, other: HostPort) -> bool:
        """Whether binding both would collide (same port; same or wildcard host)."""
        return self.port == other.port and (
            self.host == other.host or self.is_wildcard or other.is_wildcard
        )

    @property
    def is_local(self) -> bool:
        """Names this machine whatever its addresses: loopback, localhost, wildcard."""
        if self.is_wildcard or self.host in _LOCAL_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def reaches(self, listener: HostPort) -> bool:
        """Whether connecting here certainly lands on ``listener`` (a mail loop).

        A wildcard listener is reached through this machine's own names only;
        another host on the same port (smtpgate on ``0.0.0.0:25`` in front of
        ``mail.internal:25``) is the normal case, and which names are this
        machine's cannot be known without DNS.
        """
        if self.port != listener.port:
            return False
        return self.host == listener.host or (listener.is_wildcard and self.is_local)


def parse_host_port(text: str) -> HostPort:
    """Parse ``host:port`` / ``[v6]:port``; raise ``ValueError`` when invalid."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"invalid address {text!r}; write [IPv6]:port, e.g. [::1]:2525")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid address {text!r}; write host:port, e.g. 127.0.0.1:2525")
        if ":" in host:
            raise ValueError(f"IPv6 address in {text!r} must be in brackets, e.g. [::1]:2525")
        host = _check_host(host, text)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port in {text!r}; expected 1-65535")
    return HostPort(host, int(port_text))


class SyslogAddress(NamedTuple):
    """Where syslog messages go: a Unix datagram socket (``path``), or ``udp``/``tcp``
    to ``address``."""

    transport: Literal["unix", "udp", "tcp"]
    path: str = ""
    address: HostPort | None = None


def parse_syslog_address(text: str) -> SyslogAddress:
    """``/dev/log`` (an absolute path), ``udp://host:port`` or ``tcp://host:port``;
    raise ``ValueError`` when invalid."""
    for transport in ("udp", "tcp"):
        prefix = f"{transport}://"
        if text.startswith(prefix):
            address = parse_host_port(text[len(prefix) :])
            return SyslogAddress("udp" if transport == "udp" else "tcp", address=address)
    if text.startswith("/") and "\0" not in text:
        return SyslogAddress("unix", path=text)
    raise ValueError(
        f"invalid syslog address {text!r}; write a socket path (/dev/log), "
        "udp://host:port or tcp://host:port"
    )


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> IPNetwork:
    """``192.0.2.10`` (one address) or ``10.0.0.0/8``; ``ValueError`` when invalid."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an IP address or network ({exc}); "
            "write e.g. 192.0.2.10, 10.0.0.0/8 or 2001:db8::/32"
        ) from None


def in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether ``address`` (an IPv4-mapped IPv6 address counts as its IPv4 one) is
    in one of ``networks``; False for what is no IP address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _validate_network(value: object) -> IPNetwork:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("ip_network", "expected an IP address or network string")
    try:
        return parse_network(value)
    except ValueError as exc:
        raise PydanticCustomError("ip_network", "{reason}", {"reason": str(exc)}) from None


Network = Annotated[
    IPNetwork,
    PlainValidator(_validate_network),
    PlainSerializer(str),
    WithJsonSchema({"type": "string", "examples": ["192.0.2.10", "10.0.0.0/8"]}),
]
"""A validated IP network (or address: a /32 or /128), written back as text."""


def _check_host(host: str, text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        pattern = DomainPattern.parse(host)
    except PatternError:
        raise ValueError(f"{host!r} in {text!r} is not an IPv4 address or host name") from None
    if pattern.is_any or pattern.text.startswith("*"):
        raise ValueError(f"{host!r} in {text!r} is not an IPv4 address or host name")
    return pattern.domain


def _validate(value: object) -> HostPort:
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("host_port", 'expected a "host:port" string')
    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise PydanticCustomError("host_port", "{reason}", {"reason": str(exc)}) from None


Address = Annotated[
    HostPort,
    PlainValidator(_validate),
    PlainSerializer(str),
    WithJsonSchema({"type": "string", "examples": ["127.0.0.1:2525", "[::1]:2525"]}),
]
"""A validated ``host:port`` field, written back as text."""


TRANSPARENT: Final = "transparent"
"""``upstream = "transparent"``: the original destination of the intercepted connection
(docs/deployment.md)."""


DNS_PORT = 53


def parse_nameserver(text: str) -> HostPort:
    """A DNS server: an IP address, with ``:port`` (``[v6]:port``) when not 53."""
    try:
        return HostPort(str(ipaddress.ip_address(text)), DNS_PORT)
    except ValueError:
        pass
    try:
        address = parse_host_port(text)
        ipaddress.ip_address(address.host)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a DNS server address; write an IP address, "
            "optionally with a port (192.0.2.53, 127.0.0.1:5353, [::1]:5353)"
        ) from None
    return address


def _validate_nameserver(value: object) -> HostPort:
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("nameserver", "expected an IP address string")
    try:
        return parse_nameserver(value)
    except ValueError as exc:
        raise PydanticCustomError("nameserver", "{reason}", {"reason": str(exc)}) from None


def _nameserver_text(value: HostPort) -> str:
    return value.host if value.port == DNS_PORT and ":" not in value.host else str(value)


Nameserver = Annotated[
    HostPort,
    PlainValidator(_validate_nameserver),
    PlainSerializer(_nameserver_text),
    WithJsonSchema({"type": "string", "examples": ["192.0.2.53", "127.0.0.1:5353"]}),
]
"""A DNS server for ``[gateway] resolvers``, written back without ``:53``."""
