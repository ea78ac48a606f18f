"""Envelope paths and ESMTP parameters, per RFC 5321 section 4.1.2 and RFC 6531.

Parsing is strict where ambiguity could hurt (a path is always between angle
brackets, the domain must be a valid name or address literal) and lenient
where real MTAs differ harmlessly (a space after ``FROM:``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# atext of RFC 5322 plus any non-ASCII character (RFC 6531 UTF8-non-ascii).
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LET_DIG = r"[A-Za-z0-9\u0080-\U0010ffff]"
_LABEL = rf"{_LET_DIG}(?:[A-Za-z0-9\-\u0080-\U0010ffff]{{0,61}}{_LET_DIG})?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+|[A-Za-z0-9\-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]"
_ADL = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"

_MAILBOX_RE = re.compile(rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})")
_PATH_RE = re.compile(rf"<(?:{_ADL})?(?P<mailbox>[^<>]*)>")
# RFC 5321 Domain in ASCII: sub-domain = Let-dig [Ldh-str], at most 63 octets a label.
_HELLO_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_HELLO_DOMAIN_RE = re.compile(rf"{_HELLO_LABEL}(?:\.{_HELLO_LABEL})*")
_HELLO_LITERAL_RE = re.compile(r"(?:IPv6:)?[0-9A-Fa-f:.]+", re.IGNORECASE)
_PARAM_RE = re.compile(r"(?P<key>[A-Za-z0-9][A-Za-z0-9\-]*)(?:=(?P<value>[^=\x00-\x20\x7f]+))?")

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255


class AddressError(ValueError):
    """A malformed path or parameter; the server answers ``code text``: ``501`` for
    command syntax (5.5.x), ``553`` for a mailbox it cannot take (5.1.3)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class Address:
    """One envelope address. ``path`` is the bytes between (and with) the brackets."""

    local: str
    domain: str
    path: bytes

    @property
    def is_null(self) -> bool:
        return self.path == b"<>"

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local


NULL_SENDER = Address("", "", b"<>")


def parse_path(
    argument: bytes, *, allow_null: bool, allow_postmaster: bool = False
) -> tuple[Address, tuple[tuple[str, str | None], ...], bytes]:
    """Split ``<path> params`` into the address, parsed parameters and raw parameters."""
    try:
        text = argument.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AddressError(501, "5.5.2 Invalid UTF-8 in command") from exc
    text = text.lstrip(" ")
    match = _PATH_RE.match(text)
    if match is None:
        raise AddressError(501, "5.5.2 Syntax error in mailbox address, expected <address>")
    rest = text[match.end() :]
    if rest and not rest.startswith(" "):
        raise AddressError(501, "5.5.2 Syntax error after mailbox address")
    params = parse_params(rest)
    raw_params = rest.strip(" ").encode("utf-8")
    mailbox = match.group("mailbox")
    path = match.group(0).encode("utf-8")
    if mailbox == "":
        if not allow_null or match.group(0) != "<>":
            raise AddressError(553, "5.1.3 Null address not allowed here")
        return NULL_SENDER, params, raw_params
    if allow_postmaster and mailbox.lower() == "postmaster":
        return Address(mailbox, "", path), params, raw_params
    box = _MAILBOX_RE.fullmatch(mailbox)
    if box is None:
        raise AddressError(553, "5.1.3 Bad address syntax")
    local, domain = box.group("local"), box.group("domain")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART or len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError(553, "5.1.3 Address too long")
    return Address(local, domain, path), params, raw_params


def parse_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """``KEY=VALUE KEY2`` -> ``(("KEY", "VALUE"), ("KEY2", None))``, keys upper-cased."""
    params: list[tuple[str, str | None]] = []
    for word in text.split(" "):
        if not word:
            continue
        m = _PARAM_RE.fullmatch(word)
        if m is None:
            raise AddressError(501, f"5.5.4 Invalid parameter {word[:40]!r}")
        key = m.group("key").upper()
        if any(key == seen for seen, _ in params):
            # RFC 5321 4.1.2 allows each parameter once; which one would count is a guess.
            raise AddressError(501, f"5.5.4 Duplicate parameter {key}")
        params.append((key, m.group("value")))
    return tuple(params)


def is_hello_name(name: bytes) -> bool:
    """An EHLO/HELO argument: an RFC 5321 Domain or an IPv4 or IPv6 address literal.

    ASCII only (the greeting comes before any SMTPUTF8 negotiation), so what
    is accepted can be written into a header as it is.
    """
    if len(name) > MAX_DOMAIN or not name.isascii():
        return False
    text = name.decode("ascii")
    if _HELLO_DOMAIN_RE.fullmatch(text) is not None:
        return True
    if not (text.startswith("[") and text.endswith("]")):
        return False
    literal = text[1:-1]
    if _HELLO_LITERAL_RE.fullmatch(literal) is None:
        return False  # also what ipaddress would take but RFC 5321 does not: "%scope"
    try:
        if literal[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(literal[5:])
        else:
            ipaddress.IPv4Address(literal)
    except ValueError:
        return False
    return True
