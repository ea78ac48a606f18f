"""smtpgate: an SMTP proxy that enforces encryption on both legs of a mail hop.

Configuration reference: docs/configuration.md; examples: examples/*.toml
(both in the smtpgate repository).
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer
import uvloop

from smtpgate.commands.common import ConfigOption, fail, load, print_problems
from smtpgate.commands.config import config_app
from smtpgate.commands.objects import actions_app, profiles_app
from smtpgate.commands.rules import rules_app
from smtpgate.config.errors import ConfigError
from smtpgate.config.files import CERTIFICATE_FILE_KEYS, file_key
from smtpgate.config.loader import load_config
from smtpgate.config.schema import Config
from smtpgate.config.warnings import config_warnings
from smtpgate.console.admin_cli import admin_app
from smtpgate.logs import EventLog
from smtpgate.logtargets import destination, open_error, open_sink
from smtpgate.pidfile import pid_file, remove_pid_file, write_pid_file
from smtpgate.proxy.limits import raise_open_files_limit
from smtpgate.tls.certificates import CertificateError, CertificateStore

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
ca_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The proxy CA.")
app.add_typer(rules_app, name="rules")
app.add_typer(actions_app, name="actions")
app.add_typer(profiles_app, name="profiles")
app.add_typer(config_app, name="config")
app.add_typer(ca_app, name="ca")
app.add_typer(admin_app, name="admin")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"smtpgate {package_version('smtpgate')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # Options before the command; the help text is the module's docstring.
    pass


def run_async(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the proxy (with no --config, an embedded default)."""
    cfg = load(config)
    run_async(_serve(cfg, config))


async def _serve(cfg: Config, path: Path | None) -> None:
    # Imported here, not at the top: the proxy and the console (FastAPI) cost about
    # 0.7 s of imports that `rules list` and the other editing commands never need.
    # (No cycle hides here: tests/proxy/test_import_graph.py counts these imports too.)
    from smtpgate.console.server import start_console
    from smtpgate.metrics_server import count_metrics, start_metrics
    from smtpgate.proxy.gateway import Gateway
    from smtpgate.proxy.supervisor import Supervisor, worker_count
    from smtpgate.traffic.store import open_store

    log = _open_log(cfg, path)
    # Sessions hold two descriptors each; the default soft limit (often 1024) would
    # cut max_connections in half. Past what the limit allows, clients get 421.
    raise_open_files_limit()
    for warning in config_warnings(cfg):
        log.emit("config_warning", key=warning.key, warning=warning.reason)
    before = _files_under(cfg.gateway.state_dir)
    reload_config = (lambda: load_config(path)) if path else None
    workers = worker_count(cfg)
    try:
        # One process, or a supervisor of worker processes: the same start, reload and stop.
        gateway: Gateway | Supervisor = (
            Gateway(cfg, log, reload_config=reload_config)
            if workers == 1
            else Supervisor(cfg, log, workers=workers, reload_config=reload_config)
        )
    except ConfigError as exc:
        raise fail(path, exc) from exc
    for created in sorted(_files_under(cfg.gateway.state_dir) - before):
        log.emit("created", file=str(created), key="gateway.state_dir")
    metrics = count_metrics(gateway, log)
    # Before anything listens: whoever sees the `listening` record may signal at once,
    # and a SIGHUP without a handler would end the process.
    gateway.install_signal_handlers()
    # Observing before anything listens: every transaction gets its row.
    traffic = open_store(cfg, log)
    if traffic is not None:
        traffic.start()
    console = None
    try:
        await gateway.start()
        console = await start_console(
            gateway, path, log, traffic.database if traffic is not None else None
        )
        metrics_server = await start_metrics(metrics, log)
    except ConfigError as exc:
        if console is not None:
            await console.stop()
        await gateway.stop()
        if traffic is not None:
            await traffic.stop()
        raise fail(path, exc) from exc
    # The pid file lets `smtpgate rules add ...` on this file signal us (SIGHUP).
    # Without it serve runs on; only that signal is lost (commands say so).
    try:
        write_pid_file(cfg.gateway.state_dir, path)
    except OSError as exc:
        log.emit(
            "pid_file_failed",
            file=str(pid_file(cfg.gateway.state_dir)),
            reason=f"cannot write: {exc.strerror or exc}",
        )
    try:
        await gateway.serve_until_stopped()
    finally:
        remove_pid_file(cfg.gateway.state_dir)
        if console is not None:
            await console.stop()
        if traffic is not None:
            await traffic.stop()  # after the drain: the last sessions' rows are written
        if metrics_server is not None:
            await metrics_server.stop()
    log.close()


@app.command()
def check(
    config: Annotated[Path, typer.Option("--config", "-c")],
    bind: Annotated[
        bool, typer.Option("--bind", help="Also listen on each policy's address, then close.")
    ] = False,
) -> None:
    """Validate a configuration as serve would start it; exit 1 on error.

    Reads every certificate, key and CA file and builds the TLS contexts
    exactly as serve does, and writes nothing: files serve would generate in
    state_dir (the proxy CA, the server certificate) are made in a temporary
    folder, used, thrown away and named (`smtpgate ca init` makes them for
    good). Errors and warnings go to standard error, one line each, naming the
    key path; warnings (settings without effect) do not change the exit code.
    """
    cfg = load(config)
    _check_log(cfg, config)
    state_dir = cfg.gateway.state_dir
    with _stand_in_state_dir(state_dir) as stand_in:
        try:
            run_async(_build(_with_state_dir(cfg, stand_in), bind=bind))
            unreachable = _unreachable_database(cfg)
            generated = [
                state_dir / made.relative_to(stand_in)
                for made in sorted(stand_in.rglob("*"))
                if made.is_file() and not made.is_symlink()
            ]
            _check_creatable(generated)
        except ConfigError as exc:
            raise fail(config, _named_in(exc, stand_in, state_dir)) from exc
    for made in generated:
        typer.echo(f"note: {config}: serve would generate {made} (gateway.state_dir)", err=True)
    found = [(w.key, w.reason) for w in config_warnings(cfg)] + unreachable
    print_problems("warning", config, found)
    typer.echo(
        f"{config}: ok ({len(cfg.policies)} policies, {len(cfg.proxy_actions)} proxy actions, "
        f"{len(cfg.tls_profiles)} TLS profiles, {len(found)} warnings)"
    )


def _unreachable_database(cfg: Config) -> list[tuple[str, str]]:
    """The traffic database serve would write to, asked a query that writes nothing.

    A PostgreSQL server that cannot be reached is a warning: serve starts without it
    and retries, and systemd runs check before serve (a database that is down must
    not keep mail from flowing). An SQLite file that is not a database is an error:
    that stays so until someone moves it away."""
    from smtpgate.traffic.store import DEFAULT_CAPACITY, traffic_database

    database = traffic_database(cfg)
    if database is None or (problem := database.unusable()) is None:
        return []
    if database.url is None:
        raise ConfigError([("gateway.state_dir", f"{database.where}: cannot reach: {problem}")])
    return [
        (
            "console.database",
            f"{database.where}: cannot reach: {problem} "
            f"(serve starts without it and retries; up to {DEFAULT_CAPACITY} "
            "transaction records wait in memory meanwhile)",
        )
    ]


def _check_log(cfg: Config, path: Path) -> None:
    """Whether serve can open its log, without creating the file: ``check`` writes nothing."""
    settings = cfg.logging
    if settings.target == "file" and settings.file is not None and not settings.file.exists():
        folder = settings.file.parent
        problem = _why_not_writable(folder) if folder.is_dir() else errno.ENOENT
        if problem is not None:
            key, reason = open_error(settings, OSError(problem, os.strerror(problem))).split(
                ": ", 1
            )
            raise fail(path, ConfigError([(key, reason)]))
        return
    _open_log(cfg, path).close()  # an existing file is opened for appending: nothing written


@contextmanager
def _stand_in_state_dir(state_dir: Path) -> Iterator[Path]:
    """A temporary stand-in for ``state_dir`` for ``check``: its folders made anew, its
    files linked (read through, never written: a generated file replaces the link),
    so what serve would generate is generated here and thrown away."""
    with tempfile.TemporaryDirectory(prefix="smtpgate-check-") as scratch:
        stand_in = Path(scratch, "state")
        stand_in.mkdir(mode=0o700)
        if state_dir.is_dir():
            for existing in sorted(state_dir.rglob("*")):
                copy = stand_in / existing.relative_to(state_dir)
                if existing.is_dir() and not existing.is_symlink():
                    copy.mkdir(mode=0o700)
                else:
                    copy.symlink_to(existing)
        yield stand_in


def _with_state_dir(cfg: Config, stand_in: Path) -> Config:
    """``cfg`` with ``stand_in`` for its state_dir, in it and in every file key that
    names a file there (a ca_file may trust the CA serve generates, say)."""
    state_dir = cfg.gateway.state_dir

    def moved(path: Path | None) -> Path | None:
        if path is None or not path.is_relative_to(state_dir):
            return path
        return stand_in / path.relative_to(state_dir)

    certs = cfg.certificates
    certificates = certs.model_copy(
        update={
            **{name: moved(getattr(certs, name)) for name in CERTIFICATE_FILE_KEYS},
            "sni": tuple(
                entry.model_copy(update={"cert": moved(entry.cert), "key": moved(entry.key)})
                for entry in certs.sni
            ),
        }
    )
    # Constructed anew rather than copied: Config caches lookups by name.
    return Config.model_construct(
        **{
            **dict(cfg),
            "gateway": cfg.gateway.model_copy(update={"state_dir": stand_in}),
            "certificates": certificates,
            "tls_profiles": tuple(
                p.model_copy(update={"ca_file": moved(p.ca_file)}) for p in cfg.tls_profiles
            ),
        }
    )


def _named_in(exc: ConfigError, stand_in: Path, state_dir: Path) -> ConfigError:
    """The errors as serve would give them: paths in ``state_dir``, not the stand-in."""
    return ConfigError(
        (key, reason.replace(str(stand_in), str(state_dir))) for key, reason in exc.errors
    )


def _check_creatable(files: list[Path]) -> None:
    """A ConfigError naming ``gateway.state_dir`` if serve could not create ``files``."""
    for path in files:
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        problem = _why_not_writable(folder) if folder.is_dir() else errno.ENOTDIR
        if problem is not None:
            reason = f"{folder}: cannot create {path.relative_to(folder)}: {os.strerror(problem)}"
            raise ConfigError([("gateway.state_dir", reason)])


def _why_not_writable(folder: Path) -> int | None:
    """``EACCES`` when this process may not create files in ``folder`` (a read-only
    mount included), else None."""
    return None if os.access(folder, os.W_OK | os.X_OK) else errno.EACCES


def _open_log(cfg: Config, path: Path | None) -> EventLog:
    """The event log as serve opens it; an error names the key (``logging.file``)."""
    settings = cfg.logging
    try:
        sink = open_sink(settings)
    except OSError as exc:
        key, reason = open_error(settings, exc).split(": ", 1)
        raise fail(path, ConfigError([(key, reason)])) from exc
    return EventLog(fmt=settings.format, sink=sink, destination=destination(settings))


async def _build(cfg: Config, *, bind: bool) -> None:
    """What serve builds before it accepts connections; with ``bind``, its listeners too."""
    from smtpgate.metrics_server import read_token
    from smtpgate.proxy.gateway import Gateway

    gateway = Gateway(cfg, EventLog(io.StringIO(), fmt=cfg.logging.format))
    if cfg.metrics.enabled and cfg.metrics.token_file:
        read_token(cfg.metrics.token_file)  # serve reads it when the listener starts
    if bind:
        try:
            await gateway.start()
        finally:
            await gateway.stop()


def _files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.is_dir() else set()


@ca_app.command("init")
def ca_init(config: ConfigOption = None) -> None:
    """Generate in state_dir what serve's first start would (the proxy CA, the
    server certificate) where it is missing, and name each file made.

    For a CA to hand to clients (`smtpgate ca export`) before serve first runs;
    `check` only reads.
    """
    from smtpgate.proxy.runtime import load_certificates

    cfg = load(config)
    state_dir = cfg.gateway.state_dir
    before = _files_under(state_dir)
    try:
        load_certificates(cfg)
    except CertificateError as exc:
        key = file_key(cfg, exc.path, ("gateway", "hostname"))
        raise fail(config, ConfigError.at([(key, str(exc))])) from exc
    except OSError as exc:  # writing a generated file
        reason = f"{exc.filename}: cannot write: {exc.strerror or exc}"
        raise fail(config, ConfigError([("gateway.state_dir", reason)])) from exc
    for created in sorted(_files_under(state_dir) - before):
        if created.is_file():
            typer.echo(f"created {created}")


@ca_app.command("export")
def ca_export(config: ConfigOption = None) -> None:
    """Print the proxy CA certificate (PEM) for clients to trust.

    Only reads: when the CA is to be generated and has not been yet, says
    how to create it and exits 1.
    """
    cfg = load(config)
    state_dir, ca_cert = cfg.gateway.state_dir, cfg.certificates.ca_cert
    try:
        pem = CertificateStore.existing_ca_pem(state_dir, ca_cert)
    except CertificateError as exc:
        raise fail(config, ConfigError([("certificates.ca_cert", str(exc))])) from exc
    if pem is None:
        start = f"smtpgate ca init --config {config}" if config else "smtpgate ca init"
        typer.echo(
            f"error: no proxy CA in {state_dir} (gateway.state_dir) yet, and none configured "
            f"(certificates.ca_cert); `{start}` generates one there, "
            "or set certificates.ca_cert and ca_key to your own CA",
            err=True,
        )
        raise typer.Exit(1)
    sys.stdout.write(pem.decode("ascii"))


@app.command()
def demo(
    keep_state: Annotated[
        Path | None, typer.Option(help="Folder for the demo's state (default: a temp dir).")
    ] = None,
    exit_after: Annotated[
        bool,
        typer.Option("--exit", help="Stop after the sample mail instead of running until Ctrl-C."),
    ] = False,
) -> None:
    """A self-contained tour: local upstream, proxy and web console, sample mail through
    several rules; then both keep running until Ctrl-C (--exit: stop after the samples)."""
    from smtpgate.demo import run_demo

    raise typer.Exit(run_async(run_demo(keep_state, stay=not exit_after)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
