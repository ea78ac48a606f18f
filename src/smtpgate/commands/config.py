"""``smtpgate config show|set|unset|versions|diff|rollback|export``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import tomlkit
import typer
from pydantic import BaseModel

from smtpgate.commands.common import (
    BaseOption,
    ConfigOption,
    FileOption,
    JsonOption,
    command_user,
    die,
    fail,
    load,
    print_json,
    print_problems,
    print_table,
    report_save,
    run_edit,
)
from smtpgate.config.editing import ConfigDocument, EditError
from smtpgate.config.format1 import export_format1, format1_losses
from smtpgate.config.loader import config_from_data, dump_config
from smtpgate.config.schema import Config, Policy, ProxyAction, RuleEntry, TLSProfile
from smtpgate.config.store import ConfigStore, atomic_write

config_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The configuration file: show, set keys, versions, diff, rollback, export.",
)


# --- show -----------------------------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``key.path = value`` pairs, 1-based positions, tables and arrays of tables opened."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list) and data and all(isinstance(i, Mapping) for i in data):
        for index, item in enumerate(data, start=1):
            yield from flatten(item, f"{prefix}[{index}]")
    elif data is not None:
        yield prefix, data


def _optional_only(model: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    """Drop the keys an object must set (they have no default)."""
    fields = type(model).model_fields
    return {k: v for k, v in data.items() if not fields[k].is_required()}


def default_settings(base_dir: Path | None) -> dict[str, Any]:
    """Every key's built-in default: the sections as an empty file gets them,
    and what a new policy, TLS profile, proxy action and rule get (``[]``)."""
    empty = config_from_data({}, base_dir).model_dump(mode="json")
    for key in ("policies", "tls_profiles", "proxy_actions"):
        empty.pop(key)
    policy = Policy.model_validate({"name": "p", "listen": "127.0.0.1:1", "upstream": "[::1]:2"})
    profile = TLSProfile(name="p")
    action = ProxyAction.model_validate({"name": "a"})
    action_data = _optional_only(action, action.model_dump(mode="json"))
    action_data["starttls"].pop("rules")
    return {
        **empty,
        "policies[]": _optional_only(policy, policy.model_dump(mode="json")),
        "tls_profiles[]": _optional_only(profile, profile.model_dump(mode="json")),
        "proxy_actions[]": action_data,
        "proxy_actions[].starttls.rules[]": RuleEntry().model_dump(mode="json"),
    }


def effective_settings(cfg: Config) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["format"] = 2
    return data


@config_app.command("show")
def show(
    config: ConfigOption = None,
    defaults: Annotated[
        bool, typer.Option("--defaults", help="Built-in defaults (as postconf -d).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The effective configuration: every key with the value serve uses,
    defaults filled in (as postconf); --defaults: the built-in defaults."""
    if defaults:
        data = default_settings(config.resolve().parent if config else None)
    else:
        data = effective_settings(load(config))
    if as_json:
        print_json(data)
        return
    for key, value in flatten(data):
        typer.echo(f"{key} = {json.dumps(value)}")


# --- set / unset ----------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A TOML value (``true``, ``25``, ``"25"``, ``["a", "b"]``), else the text as a string."""
    try:
        return tomlkit.parse(f"v = {text}")["v"]
    except tomlkit.exceptions.ParseError:
        return text


@config_app.command("set")
def set_key(
    config: FileOption,
    pairs: Annotated[
        list[str],
        typer.Argument(
            help="KEY VALUE [KEY VALUE ...]: key paths (gateway.hostname, policies[1].listen) "
            "and TOML values (anything else is taken as a string); saved as one edit."
        ),
    ],
    base: BaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set keys (validated together as a whole file; nothing is written on error)."""
    if len(pairs) % 2:
        die(f"{pairs[-1]!r} has no value: give KEY VALUE pairs")
    values = {key: parse_value(text) for key, text in zip(pairs[::2], pairs[1::2], strict=True)}

    def edit(doc: ConfigDocument) -> dict[str, Any]:
        doc.set_values(values)
        return {key: _plain(value) for key, value in values.items()}

    def describe(result: dict[str, Any]) -> str:
        return "\n".join(f"{key} = {json.dumps(value)}" for key, value in result.items())

    run_edit(config, base, as_json, edit, describe)


@config_app.command("unset")
def unset_key(
    config: FileOption,
    keys: Annotated[list[str], typer.Argument(help="Key paths; removed in one edit.")],
    base: BaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove keys from the file, so their defaults apply."""

    def edit(doc: ConfigDocument) -> list[str]:
        doc.unset_values(keys)
        return keys

    run_edit(config, base, as_json, edit, lambda done: "\n".join(f"{k} unset" for k in done))


def _plain(value: Any) -> Any:
    unwrap = getattr(value, "unwrap", None)
    return unwrap() if callable(unwrap) else value


# --- versions -------------------------------------------------------------------------------


@config_app.command("versions")
def versions(config: FileOption, as_json: JsonOption = False) -> None:
    """Saved versions, oldest first; * marks the one the file is now."""
    store = ConfigStore(config)
    try:
        kept = store.versions()
        current = store.current_etag()
    except EditError as exc:
        raise fail(config, exc) from exc
    if as_json:
        print_json(
            {"current_etag": current, "versions": [v.as_json() for v in kept]},
        )
        return
    if not kept:
        typer.echo(f"{config}: no saved versions yet (etag {current})")
        return
    print_table(
        ("", "id", "saved (UTC)", "by", "etag", "summary"),
        (
            ["*" if v.etag == current else "", v.id, v.saved_at, v.user, v.etag, v.summary]
            for v in kept
        ),
    )
    if kept[-1].etag != current:
        typer.echo(f"the file now (etag {current}) is no saved version: edited by hand since")


@config_app.command("diff")
def diff(
    config: FileOption,
    version: Annotated[int | None, typer.Argument(help="Version id (default: latest).")] = None,
    current: Annotated[
        bool, typer.Option("--current", help="From that version to the file as it is now.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """What a version changed (unified diff from the version before it)."""
    store = ConfigStore(config)
    try:
        kept = store.versions()
        if version is None:
            if not kept:
                die(f"{config}: no saved versions yet")
            version = kept[-1].id
        info = store.version(version)
        text = store.diff(version, against_current=current)
    except EditError as exc:
        raise fail(config, exc) from exc
    if as_json:
        print_json({"version": info.as_json(), "diff": text})
    else:
        sys.stdout.write(text or "(no difference)\n")


@config_app.command("rollback")
def rollback(
    config: FileOption,
    version: Annotated[int, typer.Argument(help="Version id to restore.")],
    base: BaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make an earlier version the file again (saved as a new version)."""
    store = ConfigStore(config)
    try:
        current = store.current_etag()
        state_dir = store.versions_dir.parent
        result = store.rollback(version, user=command_user(), base_etag=base or current)
    except EditError as exc:
        raise fail(config, exc) from exc
    report_save(config, state_dir, result, load(config), as_json, {"restored": version})


# --- export ---------------------------------------------------------------------------------


@config_app.command("export")
def export(
    config: FileOption,
    format_: Annotated[int, typer.Option("--format", help="1 (older installations) or 2.")] = 2,
    lossy: Annotated[
        bool, typer.Option("--lossy", help="Format 1: drop what it cannot express, with a warning.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: standard output).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write the configuration in format 1 or 2 ("save as version")."""
    cfg = load(config)
    losses: list[str] = []
    if format_ == 2:
        text = dump_config(cfg)
    elif format_ == 1:
        losses = format1_losses(cfg)
        if losses and not lossy:
            if as_json:
                print_json({"format": 1, "exported": False, "losses": losses})
                raise typer.Exit(1)
            print_problems("error", config, (("", x) for x in losses))
            typer.echo(
                "error: format 1 cannot express these; nothing exported "
                "(change them, or give --lossy to drop them)",
                err=True,
            )
            raise typer.Exit(1)
        print_problems("warning", config, (("", f"dropped: {x}") for x in losses))
        text = export_format1(cfg)
    else:
        die(f"--format {format_}: there are formats 1 and 2")
    if output is not None:
        atomic_write(output, text)
    if as_json:
        shown = {"output": str(output)} if output is not None else {"text": text}
        print_json({"format": format_, "exported": True, "losses": losses, **shown})
    elif output is None:
        sys.stdout.write(text)
    else:
        typer.echo(f"wrote {output} (format {format_})")
