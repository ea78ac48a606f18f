"""Reading configuration files (SPEC.md 5) into :class:`Config`.

Every problem becomes a :class:`ConfigError` whose entries name the key path,
``proxy_actions[1].starttls.rules[2].sender`` (1-based positions), so that ``smtpgate check`` can
report them before anything listens.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from smtpgate.config.errors import ConfigError, Loc
from smtpgate.config.format1 import FORMAT1_TLS_KEYS, migrate_format1
from smtpgate.config.names import SMTP_INCOMING_STANDARD
from smtpgate.config.paths import BASE_DIR_CONTEXT_KEY
from smtpgate.config.schema import Config
from smtpgate.config.toml_writer import dumps
from smtpgate.config.upstream import UPSTREAM_FORMS

_TOML_POSITION = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_MAX_SHOWN_INPUT = 60

DEFAULT_LISTEN = "127.0.0.1:2525"
DEFAULT_UPSTREAM = "127.0.0.1:2526"


def load_config(path: Path) -> Config:
    """Read, migrate (format 1) and validate the TOML file at ``path``;
    relative paths inside are relative to its folder."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([(str(path), f"not UTF-8 text: {exc.reason}")]) from None
    return parse_config(text, path.resolve().parent)


def parse_config(text: str, base_dir: Path) -> Config:
    """Parse and validate configuration text; ``base_dir`` anchors relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_error(exc)]) from None
    return config_from_data(data, base_dir)


def config_from_data(data: Mapping[str, Any], base_dir: Path | None) -> Config:
    """Validate already-parsed data (e.g. from the console's API)."""
    remap: Callable[[Loc], Loc] = _same_loc
    payload = dict(data)
    fmt = payload.get("format", 2)
    if type(fmt) is int and fmt == 1:
        migration = migrate_format1(payload)
        if migration.problems:
            raise ConfigError.at(migration.problems)
        payload = migration.data
        remap = migration.original_loc
    context = {BASE_DIR_CONTEXT_KEY: base_dir} if base_dir is not None else None
    try:
        return Config.model_validate(payload, context=context)
    except ValidationError as exc:
        raise ConfigError.at(_validation_errors(exc, remap, format1=fmt == 1)) from None
    except ConfigError as exc:
        raise ConfigError.at((remap(loc), reason) for loc, reason in exc.located) from None


def default_state_dir() -> Path:
    """Where the embedded default keeps its state: ``/var/lib/smtpgate`` for
    root, else ``$XDG_STATE_HOME/smtpgate`` (``~/.local/state/smtpgate``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/smtpgate")
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "smtpgate"


def default_config_data() -> dict[str, Any]:
    """The embedded default configuration as data (also printable as TOML)."""
    return {
        "gateway": {"state_dir": str(default_state_dir())},
        "policies": [
            {
                "name": "default",
                "listen": DEFAULT_LISTEN,
                "upstream": DEFAULT_UPSTREAM,
                "proxy_action": SMTP_INCOMING_STANDARD,
            }
        ],
    }


def default_config() -> Config:
    """What ``smtpgate serve`` runs without ``--config`` (SPEC 6)."""
    return config_from_data(default_config_data(), None)


def dump_config(config: Config) -> str:
    """The configuration as format 2 TOML (user objects only; paths absolute)."""
    data = config.model_dump(mode="json")
    data["format"] = 2
    return dumps(data, header=["smtpgate configuration"])


# --- error translation -----------------------------------------------------------------


def _same_loc(loc: Loc) -> Loc:
    return loc


def _toml_error(exc: tomllib.TOMLDecodeError) -> tuple[str, str]:
    match = _TOML_POSITION.match(str(exc))
    if match is None:
        return ("", f"TOML syntax error: {exc}")
    return (
        f"line {match['line']}, column {match['col']}",
        f"TOML syntax error: {match['msg']}",
    )


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_INPUT else text[: _MAX_SHOWN_INPUT - 3] + "..."


def _without_union_tag(loc: Loc) -> Loc:
    """``policies[1].upstream[2]``: the key path without the form pydantic tried."""
    if len(loc) > 3 and loc[0] == "policies" and loc[2] == "upstream" and loc[3] in UPSTREAM_FORMS:
        return loc[:3] + loc[4:]
    return loc


def _validation_errors(
    exc: ValidationError, remap: Callable[[Loc], Loc], *, format1: bool
) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    for error in exc.errors(include_url=False):
        loc = _without_union_tag(tuple(error["loc"]))
        kind = error["type"]
        if kind == "extra_forbidden":
            reason = "unknown key"
            if (
                not format1
                and len(loc) == 4
                and loc[0] == "proxy_actions"
                and loc[2] == "starttls"
                and loc[3] in FORMAT1_TLS_KEYS
            ):
                reason += (
                    "; in format 2 TLS settings live in [[tls_profiles]] "
                    "(or put format = 1 at the top of an old file)"
                )
        elif kind == "missing":
            reason = "required key is missing"
        elif kind.endswith("_type") or kind in {"literal_error", "enum"}:
            reason = f"{error['msg']}, got {_shown(error['input'])}"
        else:
            reason = error["msg"]
        out.append((remap(loc), reason))
    return out
