"""Format 1 configurations (SPEC.md 4, last paragraph).

In format 1 a proxy action kept its TLS settings inside ``[proxy_actions.starttls]``
(``min_version``, ``pfs``, ``validate_certificates``, ``ca_file``); there were no
``[[tls_profiles]]`` and no ``tls_profile`` key. On load, each action that has
any of those keys gets a generated profile ``<action name>.TLS``; an action
without them uses the default profile of its direction, as in format 2.

Export writes each action's profile back inline. It is exact for any
configuration format 1 can express (one loaded from format 1 round-trips);
:func:`format1_losses` lists what it cannot express.
"""

from __future__ import annotations

from typing import Any

from smtpgate.config.errors import Loc, format_loc
from smtpgate.config.names import DEFAULT_PROFILE_FOR_DIRECTION
from smtpgate.config.schema import Config, ProxyAction, RuleEntry, TLSProfile
from smtpgate.config.toml_writer import dumps

FORMAT1_TLS_KEYS = ("min_version", "pfs", "validate_certificates", "ca_file")
"""The TLS settings a format 1 ``[proxy_actions.starttls]`` table carried."""

_PROFILE_ONLY_FIELDS = tuple(
    field for field in TLSProfile.model_fields if field not in ("name", *FORMAT1_TLS_KEYS)
)
"""What a format 2 profile has and format 1 could not say."""
_TLS_SUFFIX = ".TLS"


def generated_profile_name(action_name: str) -> str:
    return action_name + _TLS_SUFFIX


class Migration:
    """Result of :func:`migrate_format1`: the format 2 data, problems found,
    and where each generated profile came from (for error paths)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.problems: list[tuple[Loc, str]] = []
        self.profile_origin: dict[int, int] = {}  # tls_profiles index -> proxy_actions index

    def original_loc(self, loc: Loc) -> Loc:
        """Map a path in the migrated data back to the format 1 file."""
        if len(loc) >= 2 and loc[0] == "tls_profiles" and loc[1] in self.profile_origin:
            action_index = self.profile_origin[int(loc[1])]
            rest = loc[2:]
            if rest[:1] == ("name",):
                return ("proxy_actions", action_index, "name")
            return ("proxy_actions", action_index, "starttls", *rest)
        return loc


def migrate_format1(data: dict[str, Any]) -> Migration:
    """Turn parsed format 1 TOML into format 2 data (the input is not changed)."""
    result = Migration()
    if "tls_profiles" in data:
        result.problems.append(
            (("tls_profiles",), "not part of format 1; remove it or set format = 2")
        )
    actions = data.get("proxy_actions")
    profiles: list[dict[str, Any]] = []
    new_actions: list[Any] = []
    for index, action in enumerate(actions if isinstance(actions, list) else []):
        starttls = action.get("starttls") if isinstance(action, dict) else None
        if not isinstance(starttls, dict):
            new_actions.append(action)
            continue
        if "tls_profile" in starttls:
            result.problems.append(
                (
                    ("proxy_actions", index, "starttls", "tls_profile"),
                    "not part of format 1; set format = 2 to use TLS profiles",
                )
            )
        tls = {k: v for k, v in starttls.items() if k in FORMAT1_TLS_KEYS}
        name = action.get("name")
        if not tls or not isinstance(name, str):
            new_actions.append(action)
            continue
        profile_name = generated_profile_name(name)
        result.profile_origin[len(profiles)] = index
        profiles.append({"name": profile_name, **tls})
        rest = {k: v for k, v in starttls.items() if k not in FORMAT1_TLS_KEYS}
        new_actions.append({**action, "starttls": {**rest, "tls_profile": profile_name}})
    result.data = dict(data)
    if isinstance(actions, list):
        result.data["proxy_actions"] = new_actions
    if profiles:
        result.data["tls_profiles"] = profiles
    return result


def _inline_profile(action: ProxyAction, config: Config) -> TLSProfile | None:
    """The profile to write inline for ``action``, or None to write none."""
    profile = config.profile_for(action)
    if profile.name == DEFAULT_PROFILE_FOR_DIRECTION[action.direction]:
        return None
    return profile


_FORMAT2_RULE_FIELDS = ("name", "comment")
"""Rule keys format 1 did not have, unset by default."""

_FORMAT2_RULE_SETTINGS = ("tls_name_from",)
"""Rule keys format 1 did not have, with a default that format 1 behaves as."""


def format1_losses(config: Config) -> list[str]:
    """What :func:`export_format1` cannot express, one sentence each."""
    losses: list[str] = []
    used: set[str] = set()
    for i, action in enumerate(config.proxy_actions):
        profile = _inline_profile(action, config)
        if profile is None:
            continue
        used.add(profile.name)
        where = format_loc(("proxy_actions", i, "starttls", "tls_profile"))
        if profile.name != generated_profile_name(action.name):
            losses.append(
                f"{where}: profile {profile.name!r} is written inline and reads back "
                f"as {generated_profile_name(action.name)!r}"
            )
        defaults = TLSProfile(name=profile.name)
        for field in _PROFILE_ONLY_FIELDS:
            if getattr(profile, field) != getattr(defaults, field):
                losses.append(
                    f"{where}: {profile.name!r} sets {field} = "
                    f"{str(getattr(profile, field)).lower()}, which format 1 cannot express"
                )
    for i, action in enumerate(config.proxy_actions):
        for j, entry in enumerate(action.starttls.rules):
            for field in _FORMAT2_RULE_FIELDS:
                if getattr(entry, field) is not None:
                    losses.append(
                        f"{format_loc(('proxy_actions', i, 'starttls', 'rules', j, field))}: "
                        f"rule {field}s are not part of format 1"
                    )
            for field in _FORMAT2_RULE_SETTINGS:
                value = getattr(entry, field)
                if value != RuleEntry.model_fields[field].default:
                    losses.append(
                        f"{format_loc(('proxy_actions', i, 'starttls', 'rules', j, field))}: "
                        f"{field} = {str(value)!r} is not part of format 1"
                    )
    for k, profile in enumerate(config.tls_profiles):
        if profile.name not in used:
            losses.append(
                f"{format_loc(('tls_profiles', k))}: {profile.name!r} is used by no action; dropped"
            )
    return losses


def export_format1(config: Config) -> str:
    """The configuration as format 1 TOML (see the module docstring)."""
    data = config.model_dump(mode="json")
    data["format"] = 1
    data.pop("tls_profiles", None)
    for action, dumped in zip(config.proxy_actions, data["proxy_actions"], strict=True):
        starttls = dumped["starttls"]
        del starttls["tls_profile"]
        for rule in starttls["rules"]:
            for field in (*_FORMAT2_RULE_FIELDS, *_FORMAT2_RULE_SETTINGS):
                rule.pop(field, None)
        profile = _inline_profile(action, config)
        if profile is not None:
            inline = profile.model_dump(mode="json", include=set(FORMAT1_TLS_KEYS))
            if not inline["ca_file"]:
                del inline["ca_file"]
            # Keep the TLS keys ahead of the rules for readability.
            dumped["starttls"] = {**inline, **starttls}
    header = ["smtpgate configuration, format 1 (exported)"]
    losses = format1_losses(config)
    if losses:
        header += ["", "Not representable in format 1:", *(f"  {loss}" for loss in losses)]
    return dumps(data, header=header)
