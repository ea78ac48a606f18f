"""What every command shares: the ``--config`` option, error lines, tables,
``--json``, and saving an edit (version, then a signal to a running server)."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from smtpgate.config.editing import ConfigDocument, EditError
from smtpgate.config.errors import ConfigError
from smtpgate.config.loader import default_config, load_config
from smtpgate.config.schema import Config
from smtpgate.config.store import ConfigStore, SaveResult, stale
from smtpgate.config.warnings import config_warnings
from smtpgate.console.audit import AuditLog
from smtpgate.pidfile import signal_reload

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML configuration file.")
]
FileOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="TOML configuration file (the one edited)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
BaseOption = Annotated[
    str | None,
    typer.Option(
        "--base",
        help="Refuse unless the file is still this version (an etag from `config versions`).",
    ),
]


def print_problems(kind: str, path: Path | None, lines: Iterable[tuple[str, str]]) -> None:
    """``kind: FILE: key.path: reason`` on standard error, one line each."""
    where = f"{path}: " if path else ""
    for key, reason in lines:
        typer.echo(
            f"{kind}: {where}{key}: {reason}" if key else f"{kind}: {where}{reason}", err=True
        )


def fail(path: Path | None, exc: ConfigError | EditError) -> typer.Exit:
    print_problems("error", path, exc.errors)
    return typer.Exit(1)


def load(path: Path | None) -> Config:
    try:
        return load_config(path) if path is not None else default_config()
    except ConfigError as exc:
        raise fail(path, exc) from exc


def editing(path: Path, base: str | None) -> tuple[ConfigStore, ConfigDocument]:
    """The store and the document a command edits; ``base`` (an etag) must match."""
    store = ConfigStore(path)
    try:
        document = store.open()
    except EditError as exc:
        raise fail(path, exc) from exc
    if base is not None and base != document.etag:
        raise fail(path, stale(base, document.etag))
    return store, document


def command_user() -> str:
    """Who saves through a command, as versions record it: ``cli:<login>``,
    or ``cli:<login> (sudo)`` for the administrator behind a ``sudo``."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and os.geteuid() == 0:
        return f"cli:{sudo_user} (sudo)"
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"


def run_edit(
    path: Path,
    base: str | None,
    as_json: bool,
    edit: Callable[[ConfigDocument], Any],
    describe: Callable[[Any], str] | None = None,
) -> None:
    """Load, apply ``edit`` (its return value is shown), save as a new
    version, signal a running server of this file; errors change nothing."""
    store, document = editing(path, base)
    state_dir = document.config.gateway.state_dir
    try:
        outcome = edit(document)
        result = store.save(document, user=command_user())
    except EditError as exc:
        raise fail(path, exc) from exc
    report_save(path, state_dir, result, document.config, as_json, outcome, describe)


def report_save(
    path: Path,
    state_dir: Path,
    result: SaveResult,
    saved: Config,
    as_json: bool,
    outcome: Any = None,
    describe: Callable[[Any], str] | None = None,
) -> None:
    """What a save did: the version, whether a server was signalled, and the
    warnings of the saved configuration (as ``check`` prints them)."""
    signal = None if result.unchanged else signal_reload(state_dir, path)
    if not result.unchanged:
        _audit(state_dir, path, result, signalled=signal is not None and signal.pid is not None)
    warnings = config_warnings(saved)
    if as_json:
        payload: dict[str, Any] = {
            "result": outcome,
            "saved": not result.unchanged,
            "version": result.version.as_json(),
            "warnings": [{"key": w.key, "warning": w.reason} for w in warnings],
            "server": {
                "signalled": signal is not None and signal.pid is not None,
                "pid": signal.pid if signal else None,
                "note": signal.note if signal else "unchanged; nothing to apply",
            },
        }
        print_json(payload)
        return
    if describe is not None:
        typer.echo(describe(outcome))
    print_problems("warning", path, ((w.key, w.reason) for w in warnings))
    version = result.version
    if result.unchanged:
        typer.echo(f"{path}: unchanged (version {version.id}, etag {version.etag})")
        return
    typer.echo(f"{path}: saved as version {version.id} (etag {version.etag}): {version.summary}")
    assert signal is not None
    typer.echo(signal.describe())


def _audit(state_dir: Path, path: Path, result: SaveResult, *, signalled: bool) -> None:
    """The audit record of a save through a command, as the API writes one for its own;
    the action is the command's own words (``smtpgate rules add`` -> ``rules.add``: every
    saving command is a group and a verb, before any option)."""
    words = [word for word in sys.argv[1:3] if not word.startswith("-")]
    version = result.version
    AuditLog(state_dir).record(
        who=version.user,
        via="command",
        address="local",
        action=".".join(words) or "config.save",
        target=str(path),
        summary=version.summary,
        version=version.id,
        signalled=signalled,
    )


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; ``None`` shows as ``-``."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [list(headers), *cells]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_fields(data: Iterable[tuple[str, Any]]) -> None:
    """``key: value`` lines, keys right-aligned."""
    pairs = [(k, _cell(v)) for k, v in data]
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        typer.echo(f"{key:>{width}}: {value}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


RULE_HEADERS = (
    "#",
    "name",
    "on",
    "sender",
    "recipient",
    "sender enc.",
    "recipient enc.",
    "comment",
)


def print_rules(rules: Sequence[dict[str, Any]]) -> None:
    """Rules (as :func:`smtpgate.config.editing.rule_summary` gives them) as a table."""
    print_table(
        RULE_HEADERS,
        (
            [
                r["position"],
                r["name"],
                r["enabled"],
                r["sender"],
                r["recipient"],
                r["sender_encryption"],
                r["recipient_encryption"],
                r["comment"],
            ]
            for r in rules
        ),
    )


def rule_ref(text: str) -> int | str:
    """A RULE argument: a 1-based position, or a rule name."""
    return int(text) if text.isdigit() else text


def die(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
