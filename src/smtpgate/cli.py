"""Command line: the commands of SPEC.md section 6."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import uvloop

from smtpgate.config.errors import ConfigError
from smtpgate.config.loader import default_config, load_config
from smtpgate.config.schema import Config
from smtpgate.logs import EventLog
from smtpgate.tls.certificates import CertificateError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
rules_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Encryption rules.")
ca_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The proxy CA.")
app.add_typer(rules_app, name="rules")
app.add_typer(ca_app, name="ca")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML configuration file.")
]


def _load(path: Path | None) -> Config:
    try:
        return load_config(path) if path is not None else default_config()
    except ConfigError as exc:
        where = f"{path}: " if path else ""
        for key, reason in exc.errors:
            typer.echo(
                f"error: {where}{key}: {reason}" if key else f"error: {where}{reason}", err=True
            )
        raise typer.Exit(1) from exc


def run_async(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the proxy (with no --config, an embedded default)."""
    cfg = _load(config)
    run_async(_serve(cfg, config))


async def _serve(cfg: Config, path: Path | None) -> None:
    from smtpgate.proxy.gateway import Gateway

    log = EventLog.open(str(cfg.logging.file) if cfg.logging.file else None, cfg.logging.format)
    try:
        gateway = Gateway(cfg, log, reload_config=(lambda: load_config(path)) if path else None)
    except (ConfigError, CertificateError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        await gateway.start()
    except OSError as exc:
        typer.echo(f"error: cannot listen: {exc}", err=True)
        await gateway.stop()
        raise typer.Exit(1) from exc
    gateway.install_signal_handlers()
    await gateway.serve_until_stopped()
    log.close()


@app.command()
def check(config: Annotated[Path, typer.Option("--config", "-c")]) -> None:
    """Validate a configuration; print errors with key paths; exit 1 on error."""
    cfg = _load(config)
    typer.echo(
        f"{config}: ok ({len(cfg.policies)} policies, {len(cfg.proxy_actions)} proxy actions, "
        f"{len(cfg.tls_profiles)} TLS profiles)"
    )


@rules_app.command("test")
def rules_test(
    action: Annotated[str, typer.Option("--action", help="Proxy action name.")],
    sender: Annotated[str, typer.Option("--from", help="Envelope sender address or domain.")],
    recipient: Annotated[str, typer.Option("--to", help="Envelope recipient address or domain.")],
    config: ConfigOption = None,
    client_tls: Annotated[bool, typer.Option("--client-tls", help="Client leg encrypted.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Which rule matches and what each leg will do."""
    from smtpgate.explain import explain

    cfg = _load(config)
    try:
        proxy_action = cfg.action(action)
    except KeyError as exc:
        typer.echo(f"error: no proxy action named {action!r}", err=True)
        raise typer.Exit(1) from exc
    result = explain(proxy_action, sender, recipient, client_tls=client_tls)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            typer.echo(f"{key:>18}: {value}")


@ca_app.command("export")
def ca_export(config: ConfigOption = None) -> None:
    """Print the proxy CA certificate (PEM) for clients to trust."""
    from smtpgate.proxy.runtime import load_certificates

    cfg = _load(config)
    try:
        store = load_certificates(cfg)
    except CertificateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    sys.stdout.write(store.ca_pem().decode("ascii"))


@app.command()
def demo(
    keep_state: Annotated[
        Path | None, typer.Option(help="Folder for the demo's state (default: a temp dir).")
    ] = None,
) -> None:
    """A self-contained tour: local upstream, proxy, sample mail through several rules."""
    from smtpgate.demo import run_demo

    raise typer.Exit(run_async(run_demo(keep_state)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
