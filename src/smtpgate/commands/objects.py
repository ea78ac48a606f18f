"""``smtpgate actions|profiles list|show|clone|rename|delete``.

The two groups differ only in the kind of object and in what ``show`` and
``list`` print, so both are built by :func:`_object_app`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from smtpgate.commands.common import (
    BaseOption,
    ConfigOption,
    FileOption,
    JsonOption,
    die,
    load,
    print_fields,
    print_json,
    print_rules,
    print_table,
    run_edit,
)
from smtpgate.config.editing import (
    ACTIONS,
    PROFILES,
    ConfigDocument,
    Kind,
    action_summary,
    profile_summary,
)
from smtpgate.config.schema import Config

NameArgument = Annotated[str, typer.Argument(help="Name.")]


def _action_rows(cfg: Config) -> tuple[Sequence[str], list[list[Any]]]:
    rows = []
    for action in cfg.actions:
        summary = action_summary(cfg, action)
        rows.append(
            [
                action.name,
                "predefined" if action.read_only else "",
                action.direction,
                action.starttls.tls_profile,
                len(action.starttls.rules),
                ", ".join(summary["used_by"]),
            ]
        )
    return ("name", "kind", "direction", "TLS profile", "rules", "used by policies"), rows


def _profile_rows(cfg: Config) -> tuple[Sequence[str], list[list[Any]]]:
    rows = []
    for profile in cfg.profiles:
        used_by = [a.name for a in cfg.actions if a.starttls.tls_profile == profile.name]
        rows.append(
            [
                profile.name,
                "predefined" if profile.read_only else "",
                profile.min_version + "+",
                profile.pfs,
                profile.validate_certificates,
                profile.ocsp,
                ", ".join(used_by),
            ]
        )
    return ("name", "kind", "TLS", "PFS", "validate", "OCSP", "used by actions"), rows


def _show_action(cfg: Config, name: str, as_json: bool) -> None:
    summary = action_summary(cfg, cfg.action(name))
    if as_json:
        print_json(summary)
        return
    general = summary["settings"]["general"]
    print_fields(
        [
            ("name", summary["name"]),
            ("predefined", summary["read_only"]),
            ("direction", summary["direction"]),
            ("TLS profile", summary["tls_profile"]),
            ("STARTTLS", summary["starttls"]),
            ("envelope needs TLS", summary["require_tls_for_envelope"]),
            ("max message size", general["max_message_size"]),
            ("max recipients", general["max_recipients"]),
            ("ESMTP keywords", " ".join(summary["settings"]["esmtp"]["keywords"])),
            ("used by policies", ", ".join(summary["used_by"]) or None),
        ]
    )
    typer.echo("")
    if summary["rules"]:
        print_rules(summary["rules"])
    else:
        typer.echo("no rules: the default applies (sender optional, recipient preferred)")


def _show_profile(cfg: Config, name: str, as_json: bool) -> None:
    summary = profile_summary(cfg.profile(name))
    if as_json:
        print_json(summary)
        return
    print_fields(
        [
            ("name", summary["name"]),
            ("predefined", summary["read_only"]),
            ("versions", summary["versions"]),
            ("PFS", summary["pfs"]),
            ("validation", summary["validation"]),
            ("CA", summary["ca"]),
            ("OCSP", summary["ocsp"]),
            ("TLS-compliant only", summary["tls_compliant_only"]),
        ]
    )


def _object_app(
    kind: Kind,
    word: str,
    rows: Callable[[Config], tuple[Sequence[str], list[list[Any]]]],
    show: Callable[[Config, str, bool], None],
) -> typer.Typer:
    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        help=f"{word[0].upper()}{word[1:]}s (predefined ones are read-only: clone them).",
    )
    merged = "actions_by_name" if kind == ACTIONS else "profiles_by_name"

    def known(cfg: Config, name: str) -> None:
        names = getattr(cfg, merged)
        if name not in names:
            die(f"no {word} named {name!r}; there are: {', '.join(names)}")

    @app.command("list")
    def list_command(config: ConfigOption = None, as_json: JsonOption = False) -> None:
        cfg = load(config)
        headers, table = rows(cfg)
        if as_json:
            print_json([dict(zip(headers, row, strict=True)) for row in table])
        else:
            print_table(headers, table)

    list_command.__doc__ = f"Every {word}, predefined first."

    @app.command("show")
    def show_command(
        name: NameArgument, config: ConfigOption = None, as_json: JsonOption = False
    ) -> None:
        cfg = load(config)
        known(cfg, name)
        show(cfg, name, as_json)

    show_command.__doc__ = f"One {word}'s settings."

    @app.command("clone")
    def clone_command(
        config: FileOption,
        name: NameArgument,
        new_name: Annotated[
            str | None, typer.Argument(help="Name of the copy (default: NAME.1, NAME.2, ...).")
        ] = None,
        base: BaseOption = None,
        as_json: JsonOption = False,
    ) -> None:
        def edit(doc: ConfigDocument) -> str:
            return doc.clone(kind, name, new_name)

        run_edit(config, base, as_json, edit, lambda made: f"cloned {name} as {made}")

    clone_command.__doc__ = f"Copy a {word} (predefined or not) under a new name."

    @app.command("rename")
    def rename_command(
        config: FileOption,
        name: NameArgument,
        new_name: Annotated[str, typer.Argument(help="New name.")],
        base: BaseOption = None,
        as_json: JsonOption = False,
    ) -> None:
        def edit(doc: ConfigDocument) -> list[str]:
            return doc.rename(kind, name, new_name)

        def describe(changed: list[str]) -> str:
            follows = f"; references changed: {', '.join(changed)}" if changed else ""
            return f"renamed {name} to {new_name}{follows}"

        run_edit(config, base, as_json, edit, describe)

    rename_command.__doc__ = f"Rename a {word}; every reference to it follows."

    @app.command("delete")
    def delete_command(
        config: FileOption, name: NameArgument, base: BaseOption = None, as_json: JsonOption = False
    ) -> None:
        def edit(doc: ConfigDocument) -> str:
            doc.delete(kind, name)
            return name

        run_edit(config, base, as_json, edit, lambda _: f"deleted {name}")

    delete_command.__doc__ = f"Delete a {word} that nothing uses (else: who uses it)."
    return app


actions_app = _object_app(ACTIONS, "proxy action", _action_rows, _show_action)
profiles_app = _object_app(PROFILES, "TLS profile", _profile_rows, _show_profile)
