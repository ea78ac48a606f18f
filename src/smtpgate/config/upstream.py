"""A policy's ``upstream`` (SPEC.md 5, "Next hops"): where its upstream leg goes.

One of these forms, each a member of the :data:`Upstream` union, told apart
by :func:`upstream_form` before validation:

- ``"host:port"``: one server (:class:`HostPort`);
- ``["primary:25", "backup:25"]``: servers tried in order (a tuple of them);
- ``"mx"``: the recipient domain's MX hosts (:data:`MX`), on the policy's
  ``mx_port``;
- ``"transparent"``: the original destination of each intercepted connection
  (:data:`~smtpgate.config.netaddr.TRANSPARENT`).

Each form is tagged; :data:`UPSTREAM_FORMS` names the tags so the loader can
leave them out of key paths (``policies[1].upstream[2]``, not
``policies[1].upstream.hosts[2]``).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, cast

from pydantic import Discriminator, Field, PlainSerializer, Strict, Tag

from smtpgate.config.netaddr import TRANSPARENT, Address, HostPort

MX: Final = "mx"
"""``upstream = "mx"``: next hops from the recipient domain's MX records."""

MAX_UPSTREAM_HOSTS = 10
"""A longer list of backups is a mistake, and waiting for each costs a connect timeout."""

UPSTREAM_FORMS: Final = frozenset({"host", "hosts", "mx", "transparent"})


def upstream_form(value: Any) -> str:
    """Which member of :data:`Upstream` ``value`` is written as."""
    if isinstance(value, list | tuple) and not isinstance(value, HostPort):
        return "hosts"
    if value in (MX, TRANSPARENT):
        return str(value)
    return "host"


def _upstream_text(value: HostPort | tuple[HostPort, ...] | str) -> str | list[str]:
    if isinstance(value, tuple) and not isinstance(value, HostPort):
        return [str(host) for host in value]
    return str(value)


Upstream = Annotated[
    Annotated[Address, Tag("host")]
    | Annotated[
        tuple[Address, ...],
        Tag("hosts"),
        Strict(False),
        Field(min_length=1, max_length=MAX_UPSTREAM_HOSTS),
    ]
    | Annotated[Literal["mx"], Tag("mx")]
    | Annotated[Literal["transparent"], Tag("transparent")],
    Discriminator(upstream_form),
    PlainSerializer(_upstream_text),
]
"""A validated ``upstream``, written back as it was given."""

UpstreamValue = HostPort | tuple[HostPort, ...] | str


def configured_hosts(upstream: UpstreamValue) -> tuple[HostPort, ...]:
    """The servers named in the configuration, in order; none for ``"mx"`` and
    ``"transparent"``."""
    if isinstance(upstream, HostPort):
        return (upstream,)
    if isinstance(upstream, tuple):
        return cast(tuple[HostPort, ...], upstream)  # a HostPort is a tuple too
    return ()
