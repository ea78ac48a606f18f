"""Sizes and durations as written in the configuration file (SPEC.md 5).

Sizes: plain integer bytes, or a number with a unit: ``B``, SI ``KB``/``MB``/
``GB``/``TB`` (powers of 1000) or IEC ``KiB``/``MiB``/``GiB``/``TiB`` (powers
of 1024), case-insensitive, optional space: ``"10MB"``, ``"512 KiB"``. Bare
``K``/``M``/``G`` are refused because mail software disagrees on their base.

Durations: plain number of seconds, or number-unit parts with units ``ms``,
``s``, ``m``, ``h``, ``d``: ``"30s"``, ``"5m"``, ``"1h30m"``, ``"1.5m"``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# Spelling used when writing sizes back; largest exact unit wins.
_SIZE_SPELLING = {"kb": "KB", "mb": "MB", "gb": "GB", "tb": "TB"} | {
    u: u[0].upper() + "i" + u[2].upper() for u in ("kib", "mib", "gib", "tib")
}

_POWER = {"kb": 1, "kib": 1, "mb": 2, "mib": 2, "gb": 3, "gib": 3, "tb": 4, "tib": 4}

DURATION_UNITS: dict[str, Decimal] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_RE = re.compile(rf"\s*(?:{_DURATION_PART_RE.pattern}\s*)+", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from an int or a size string; raise ``ValueError`` when invalid."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 25MB or a number of bytes, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 25MB or a number of bytes")
    m = _SIZE_RE.fullmatch(value)
    if m is None:
        raise ValueError(f"invalid size {value!r}; write e.g. 25MB, 512KiB or 1048576")
    unit = m.group(2).lower() or "b"
    if unit not in SIZE_UNITS:
        raise ValueError(
            f"unknown size unit {m.group(2)!r} in {value!r}; use B, KB, MB, GB, TB, "
            "KiB, MiB, GiB or TiB"
        )
    return int(Decimal(m.group(1)) * SIZE_UNITS[unit])


def parse_duration(value: object) -> float:
    """Seconds from a number or a duration string; raise ``ValueError`` when invalid."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s or 5m, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        if _DURATION_RE.fullmatch(value) is None:
            raise ValueError(f"invalid duration {value!r}; write e.g. 30s, 5m, 1h or 1h30m")
        try:
            total = sum(
                (
                    Decimal(n) * DURATION_UNITS[u.lower()]
                    for n, u in _DURATION_PART_RE.findall(value)
                ),
                Decimal(0),
            )
        except InvalidOperation:  # pragma: no cover - the regex admits only digits
            raise ValueError(f"invalid duration {value!r}") from None
        seconds = float(total)
    else:
        raise ValueError("expected a duration such as 30s or 5m, or a number of seconds")
    if not seconds > 0:  # also refuses NaN
        raise ValueError("duration must be greater than zero")
    if seconds == float("inf"):
        raise ValueError("duration must be finite")
    return seconds


def format_size(size: int) -> str | int:
    """A compact exact spelling of ``size`` (``"25MB"``), or the int itself.

    The highest exact power wins; between KB and KiB of the same power, SI."""
    best: str | int = size
    best_rank = (0, 0)
    for unit, factor in SIZE_UNITS.items():
        if unit == "b" or not size or size % factor:
            continue
        power = _POWER[unit]
        rank = (power, 0 if "i" in unit else 1)
        if rank > best_rank:
            best, best_rank = f"{size // factor}{_SIZE_SPELLING[unit]}", rank
    return best


def format_duration(seconds: float) -> str | float | int:
    """``"5m"``-style text when ``seconds`` is a whole number of one unit."""
    for unit in ("d", "h", "m", "s"):
        factor = float(DURATION_UNITS[unit])
        count = seconds / factor
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return seconds


def _size(value: object) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise PydanticCustomError("size", "{reason}", {"reason": str(exc)}) from None


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", "{reason}", {"reason": str(exc)}) from None


ByteSize = Annotated[
    int,
    PlainValidator(_size),
    PlainSerializer(format_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}),
]
"""A size in bytes; accepts ``"25MB"``-style text; written back as text when exact."""

Duration = Annotated[
    float,
    PlainValidator(_duration),
    PlainSerializer(format_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}]}),
]
"""A positive duration in seconds; accepts ``"30s"``/``"5m"``-style text."""
