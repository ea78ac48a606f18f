"""Which key of a configuration names a file, for start-up errors.

Certificates, keys and CA files are read when ``serve`` (or ``check``)
builds its TLS contexts, after the file has loaded; an error there names the
file, and :func:`file_key` finds the key path that set it, so the message
reads like any other configuration error.
"""

from __future__ import annotations

from pathlib import Path

from smtpgate.config.errors import Loc
from smtpgate.config.schema import Config
from smtpgate.tls.certificates import CertificateError
from smtpgate.tls.trust import read_ca_file

#: The keys of ``[certificates]`` that name one file each (``sni`` entries name two).
CERTIFICATE_FILE_KEYS = (
    "server_cert",
    "server_key",
    "server_rsa_cert",
    "server_rsa_key",
    "ca_cert",
    "ca_key",
)


def file_keys(config: Config) -> dict[Path, Loc]:
    """Every file path the configuration sets, with the key that sets it
    (the first key, when two keys name the same file)."""
    keys: dict[Path, Loc] = {}
    certs = config.certificates
    for name in CERTIFICATE_FILE_KEYS:
        path = getattr(certs, name)
        if path is not None:
            keys.setdefault(path, ("certificates", name))
    for k, entry in enumerate(certs.sni):
        keys.setdefault(entry.cert, ("certificates", "sni", k, "cert"))
        keys.setdefault(entry.key, ("certificates", "sni", k, "key"))
        for name in ("rsa_cert", "rsa_key"):
            path = getattr(entry, name)
            if path is not None:
                keys.setdefault(path, ("certificates", "sni", k, name))
    for k, profile in enumerate(config.tls_profiles):
        if profile.ca_file is not None:
            keys.setdefault(profile.ca_file, ("tls_profiles", k, "ca_file"))
    if config.logging.file is not None:
        keys.setdefault(config.logging.file, ("logging", "file"))
    return keys


def file_key(config: Config, path: Path | None, fallback: Loc) -> Loc:
    """The key path behind ``path``: the key that names it, ``gateway.state_dir``
    for what smtpgate generates there, else ``fallback``."""
    if path is None:
        return fallback
    named = file_keys(config).get(path)
    if named is not None:
        return named
    if path.is_relative_to(config.gateway.state_dir):
        return ("gateway", "state_dir")
    return fallback


def profile_file_errors(config: Config) -> list[tuple[Loc, str]]:
    """``(tls_profiles[N].ca_file, reason)`` for each profile whose ``ca_file`` cannot
    be used, whether an action uses the profile or not: a profile nobody uses yet is
    one an edit may point an action at next, and it must not fail only then."""
    errors: list[tuple[Loc, str]] = []
    for k, profile in enumerate(config.tls_profiles):
        if profile.ca_file is None:
            continue
        try:
            read_ca_file(profile.ca_file)
        except CertificateError as exc:
            errors.append((("tls_profiles", k, "ca_file"), str(exc)))
    return errors
