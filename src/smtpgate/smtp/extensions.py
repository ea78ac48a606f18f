"""Which EHLO keyword each MAIL/RCPT parameter belongs to, for both legs.

The client leg refuses a parameter whose extension smtpgate did not offer
(RFC 1869 section 6: ``555``); the upstream leg never sends a parameter whose
extension the upstream did not offer, and says which ones it left out.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from types import MappingProxyType

#: MAIL parameter -> the EHLO keyword that must have been offered for it.
MAIL_PARAMETERS: Mapping[str, str] = MappingProxyType(
    {
        "SIZE": "SIZE",  # RFC 1870
        "BODY": "8BITMIME",  # RFC 6152
        "SMTPUTF8": "SMTPUTF8",  # RFC 6531
        "RET": "DSN",  # RFC 3461
        "ENVID": "DSN",
        "AUTH": "AUTH",  # RFC 4954
    }
)

#: BODY values whose extension is not 8BITMIME's: BINARYMIME needs its own keyword.
_BODY_VALUE_KEYWORDS: Mapping[str, str] = MappingProxyType({"BINARYMIME": "BINARYMIME"})  # RFC 3030

#: RCPT parameter -> the EHLO keyword that must have been offered for it.
RCPT_PARAMETERS: Mapping[str, str] = MappingProxyType({"NOTIFY": "DSN", "ORCPT": "DSN"})


def required_keyword(table: Mapping[str, str], name: str, value: str | None) -> str | None:
    """The EHLO keyword parameter ``name=value`` of ``table`` needs (None: unknown)."""
    if name == "BODY" and table is MAIL_PARAMETERS and value is not None:
        keyword = _BODY_VALUE_KEYWORDS.get(value.upper())
        if keyword is not None:
            return keyword
    return table.get(name)


def offered_parameters(
    raw: bytes, table: Mapping[str, str], offered: Container[str]
) -> tuple[bytes, list[tuple[str, str]]]:
    """Split verbatim parameters into those whose extension is ``offered`` and the rest.

    Returns the kept parameters (verbatim, space-separated) and, for each one
    left out, ``(parameter, keyword it needs)``.
    """
    if not raw:
        return raw, []
    kept: list[bytes] = []
    dropped: list[tuple[str, str]] = []
    for word in raw.split(b" "):
        if not word:
            continue
        name, _, value = word.decode("ascii", "replace").partition("=")
        name = name.upper()
        keyword = required_keyword(table, name, value or None) or ""
        if keyword and keyword in offered:
            kept.append(word)
        else:
            dropped.append((name, keyword))
    return b" ".join(kept), dropped
