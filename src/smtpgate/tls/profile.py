"""The TLS profile as the tls package sees it (SPEC.md section 3).

The config package owns the profile objects, their fields and defaults
(``smtpgate.config.schema.TLSProfile``); this package only reads them through
:class:`TLSProfileLike`, so ``smtpgate.tls`` never imports ``smtpgate.config``
and the dependency points one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

MinVersion = Literal["1.0", "1.1", "1.2", "1.3"]
PFSMode = Literal["none", "allowed", "required"]


class TLSProfileError(ValueError):
    """A profile that cannot be turned into a working TLS context."""


class TLSProfileLike(Protocol):
    """Read-only view of a TLS profile; the fields of SPEC.md section 3."""

    @property
    def name(self) -> str: ...
    @property
    def min_version(self) -> MinVersion: ...
    @property
    def pfs(self) -> PFSMode: ...
    @property
    def validate_certificates(self) -> bool: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def ocsp(self) -> bool: ...
    @property
    def ocsp_allow_unavailable(self) -> bool: ...
    @property
    def tls_compliant_only(self) -> bool: ...


#: The profile's fields, in the order :class:`TLSProfileLike` declares them.
PROFILE_FIELDS: tuple[str, ...] = tuple(
    name for name, member in vars(TLSProfileLike).items() if isinstance(member, property)
)

ProfileKey = tuple[object, ...]


def profile_key(profile: TLSProfileLike) -> ProfileKey:
    """Hashable identity of everything a profile can change.

    Caches key on the values, not on the object: config objects may be
    unhashable, and a reloaded profile with new values must not hit an old
    context even if the caller forgot to clear the cache.
    """
    return tuple(getattr(profile, name) for name in PROFILE_FIELDS)


def pfs_contradiction(min_version: MinVersion, pfs: PFSMode) -> str | None:
    """Why ``pfs`` cannot be had with ``min_version``, or None when it can.

    ``pfs = "none"`` needs TLS 1.2 or lower (every TLS 1.3 suite is
    forward-secret), so it cannot be combined with ``min_version = "1.3"``.
    The one statement of this rule: the configuration reports it with its
    key path, :func:`check_profile` when a context is built.
    """
    if pfs == "none" and min_version == "1.3":
        return (
            "'none' needs TLS 1.2 or lower, but min_version is '1.3' "
            "(every TLS 1.3 cipher suite is forward-secret)"
        )
    return None


def check_profile(profile: TLSProfileLike) -> None:
    """Raise :class:`TLSProfileError` for contradictory settings."""
    problem = pfs_contradiction(profile.min_version, profile.pfs)
    if problem is not None:
        raise TLSProfileError(f"TLS profile {profile.name!r}: pfs = {problem}")
