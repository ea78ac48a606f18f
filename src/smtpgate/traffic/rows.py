"""A traffic row: the fields of one ``transaction`` record the pages show, and times.

Times are kept as integer milliseconds since the epoch (UTC), the resolution
of the log's ``time`` field, so that ranges and buckets are integer sums in
either database.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smtpgate.config.units import parse_duration

#: The columns of a row, in the order the database stores and returns them.
COLUMNS = (
    "time_ms",
    "instance",
    "session",
    "client",
    "policy",
    "sender_domain",
    "recipient_domains",
    "rule",
    "client_tls",
    "client_cipher",
    "upstream",
    "upstream_tls",
    "upstream_cipher",
    "upstream_verify",
    "upstream_verified",
    "upstream_fallback",
    "next_hop_address",
    "mx_preference",
    "next_hop_via",
    "tls_name",
    "outcome",
    "reply",
    "upstream_reply",
    "size",
    "body_transfer",
    "message_id",
    "relay_ms",
    "upstream_reused",
)

#: What a leg in clear says in ``client_tls`` / ``upstream_tls``.
CLEAR = "none"


def verify_class(upstream_verify: str) -> str:
    """``ok``, ``failed`` or ``not-checked``: what ``upstream_verify`` (docs/logs.md) says
    in one word, kept beside it so that counting needs no text matching in SQL."""
    if upstream_verify.startswith("ok"):
        return "ok"
    if upstream_verify.startswith("failed"):
        return "failed"
    return "not-checked"


@dataclass(frozen=True, slots=True)
class TrafficRow:
    time_ms: int
    instance: str
    session: str
    client: str
    policy: str
    sender_domain: str
    recipient_domains: tuple[str, ...]
    rule: str
    client_tls: str
    client_cipher: str
    upstream: str
    upstream_tls: str
    upstream_cipher: str
    upstream_verify: str
    upstream_fallback: str
    next_hop_address: str
    mx_preference: int | None
    next_hop_via: str
    tls_name: str
    outcome: str
    reply: int
    upstream_reply: str
    size: int
    body_transfer: str
    message_id: str
    relay_ms: float | None
    upstream_reused: bool

    @classmethod
    def from_record(cls, record: dict[str, Any], instance: str) -> TrafficRow:
        """The row of a ``transaction`` record; fields it lacks are empty (never raises
        for a missing field: a record of an older build still makes a row)."""

        def text(key: str) -> str:
            value = record.get(key)
            return "" if value is None else str(value)

        def number(key: str) -> int:
            value = record.get(key)
            return value if isinstance(value, int) else 0

        def number_or_none(key: str) -> int | None:
            value = record.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        relay_ms = record.get("relay_ms")

        domains = record.get("recipient_domains") or ()
        return cls(
            time_ms=parse_log_time(text("time")),
            instance=instance,
            session=text("session"),
            client=text("client"),
            policy=text("policy"),
            sender_domain=text("sender_domain"),
            recipient_domains=tuple(str(d) for d in domains),
            rule=text("rule"),
            client_tls=text("client_tls") or CLEAR,
            client_cipher=text("client_cipher") or CLEAR,
            upstream=text("upstream"),
            upstream_tls=text("upstream_tls") or CLEAR,
            upstream_cipher=text("upstream_cipher") or CLEAR,
            upstream_verify=text("upstream_verify"),
            upstream_fallback=text("upstream_fallback"),
            next_hop_address=text("next_hop_address"),
            mx_preference=number_or_none("mx_preference"),
            next_hop_via=text("next_hop_via"),
            tls_name=text("tls_name"),
            outcome=text("outcome"),
            reply=number("reply"),
            upstream_reply=text("upstream_reply"),
            size=number("size"),
            body_transfer=text("body_transfer"),
            message_id=text("message_id"),
            relay_ms=float(relay_ms) if isinstance(relay_ms, int | float) else None,
            upstream_reused=record.get("upstream_reused") is True,
        )

    def values(self) -> tuple[Any, ...]:
        """The column values in :data:`COLUMNS` order (recipient domains space-separated:
        a domain has no space; ``upstream_reused`` as 0 or 1, for either database)."""
        return (
            self.time_ms,
            self.instance,
            self.session,
            self.client,
            self.policy,
            self.sender_domain,
            " ".join(self.recipient_domains),
            self.rule,
            self.client_tls,
            self.client_cipher,
            self.upstream,
            self.upstream_tls,
            self.upstream_cipher,
            self.upstream_verify,
            verify_class(self.upstream_verify),
            self.upstream_fallback,
            self.next_hop_address,
            self.mx_preference,
            self.next_hop_via,
            self.tls_name,
            self.outcome,
            self.reply,
            self.upstream_reply,
            self.size,
            self.body_transfer,
            self.message_id,
            self.relay_ms,
            int(self.upstream_reused),
        )


def row_json(row_id: int, values: tuple[Any, ...]) -> dict[str, Any]:
    """A stored row (``id`` then :data:`COLUMNS`) as ``GET /traffic`` shows it."""
    data = dict(zip(COLUMNS, values, strict=True))
    shown: dict[str, Any] = {
        "id": row_id,
        "time": format_time(data.pop("time_ms")),
        "instance": data.pop("instance"),
    }
    data.pop("upstream_verified")
    recipients = data["recipient_domains"]
    data["recipient_domains"] = recipients.split(" ") if recipients else []
    data["upstream_reused"] = bool(data["upstream_reused"])
    shown.update(data)
    return shown


def parse_log_time(text: str) -> int:
    """``2026-11-29T14:51:51.123Z`` (the log's form) as epoch milliseconds; now if
    it is not in that form."""
    try:
        seconds = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
        millis = int(text[20:23]) if text[19:20] == "." else 0
    except ValueError:
        return int(time.time() * 1000)
    return seconds * 1000 + millis


def format_time(time_ms: int) -> str:
    """Epoch milliseconds in the log's form, ``2026-11-29T14:51:51.123Z``."""
    seconds, millis = divmod(time_ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def parse_time_parameter(text: str, now_ms: int) -> int:
    """A ``since``/``until`` value: an RFC 3339 time with an offset, or a duration
    (``24h``) meaning that long before ``now_ms``. ValueError says what is wrong."""
    value = text.strip()
    if value[:1].isdigit() and ("T" in value or "t" in value or "-" in value[:5]):
        try:
            moment = datetime.fromisoformat(value.replace("z", "Z"))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time: write e.g. 2026-11-29T15:00:00Z, or a duration "
                "such as 24h for that long ago"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(f"{text!r} has no offset: add Z (UTC) or +01:00")
        return int(moment.timestamp() * 1000)
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; or an RFC 3339 time such as 2026-11-29T15:00:00Z") from None
    return now_ms - int(seconds * 1000)
