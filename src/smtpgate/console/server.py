"""The console listener inside ``smtpgate serve``: HTTPS, same process and event loop.

uvicorn serves the API as one more task of serve's event loop (no thread,
no second process); smtpgate keeps its own signal handlers (SIGHUP reload,
SIGTERM drain) and stops the console itself. The listener presents the
proxy server certificate, the one the client leg presents without SNI; a
reload that changes it (SIGHUP, or an upload through the API) applies to
the next HTTPS handshake.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from smtpgate.config.errors import ConfigError
from smtpgate.config.predefined import TLS_CLIENT_STANDARD_PROFILE
from smtpgate.config.schema import Config
from smtpgate.console.admins import AdminError, AdminStore, Role, new_password
from smtpgate.console.api import create_app
from smtpgate.console.audit import AuditLog
from smtpgate.console.auth import Authenticator
from smtpgate.console.backend import Backend, RunningProxy
from smtpgate.console.browser import add_pages
from smtpgate.console.throttle import LoginThrottle
from smtpgate.embedded_http import EmbeddedHTTP, bind, url_host
from smtpgate.logs import EventLog, describe_error
from smtpgate.proxy.runtime import load_certificates
from smtpgate.tls.certificates import CertificateError
from smtpgate.tls.contexts import TLSContextCache
from smtpgate.traffic.database import TrafficDatabase

#: The first administrator's name, when serve creates one.
FIRST_ADMIN = "admin"
#: Told the first administrator's name and password, once.
FirstAdminAnnounce = Callable[[str, str], None]


class Console:
    """The API of one ``serve``: accounts, back-off, audit, TLS and the uvicorn task."""

    def __init__(
        self,
        proxy: RunningProxy,
        config_path: Path | None,
        log: EventLog,
        *,
        throttle: LoginThrottle | None = None,
        traffic: TrafficDatabase | None = None,
    ) -> None:
        self.proxy = proxy
        self.log = log
        state_dir = proxy.config.gateway.state_dir
        self.admins = AdminStore(state_dir)
        self.audit = AuditLog(state_dir, log)
        self.authenticator = Authenticator(self.admins, log, throttle or LoginThrottle())
        self.app = create_app(self.authenticator, Backend(proxy, config_path, self.audit), traffic)
        add_pages(self.app)
        self._tls_for: Config | None = None
        self._tls: ssl.SSLContext | None = None
        self._http = EmbeddedHTTP()
        self.port = 0

    # -- the first administrator -----------------------------------------------------------

    def ensure_first_admin(self, announce: FirstAdminAnnounce) -> None:
        """With no user (tokens do not count), create ``admin`` with a random password and
        hand the name and password to ``announce`` (serve: standard error), nowhere else."""
        if self.admins.users():
            return
        password = new_password()
        try:
            self.admins.add_user(FIRST_ADMIN, password, Role.ADMIN)
        except AdminError as exc:
            raise ConfigError.at([(("gateway", "state_dir"), str(exc))]) from exc
        self.audit.record(
            who="smtpgate",
            via="serve",
            address="local",
            action="admin.add",
            target=FIRST_ADMIN,
            role=str(Role.ADMIN),
        )
        announce(FIRST_ADMIN, password)

    # -- TLS ------------------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        """The context for the running configuration's server certificate,
        rebuilt after a reload; on failure the previous one stays."""
        config = self.proxy.config
        if self._tls is None or self._tls_for is not config:
            try:
                self._tls = _server_context(config)
            except (CertificateError, OSError) as exc:
                if self._tls is None:
                    raise
                self.log.emit("console_tls_failed", reason=describe_error(exc))
            self._tls_for = config
        return self._tls

    def _listening_context(self) -> ssl.SSLContext:
        """What uvicorn listens with: each handshake switches to :meth:`tls_context`."""
        self.tls_context()
        outer = _server_context(self.proxy.config)  # a fresh cache: this object is ours

        def switch(obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            obj.context = self.tls_context()

        outer.sni_callback = switch
        return outer

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, announce: FirstAdminAnnounce) -> None:
        """Listen on ``[console] listen``; a ConfigError naming it if that fails.
        The first administrator is made once the address is ours (:meth:`ensure_first_admin`)."""
        listen = self.proxy.config.console.listen
        sock = bind(listen, "console", backlog=128)
        try:
            context = self._listening_context()
        except (CertificateError, OSError, ssl.SSLError) as exc:
            sock.close()
            raise ConfigError.at([(("certificates", "server_cert"), describe_error(exc))]) from exc
        self.port = sock.getsockname()[1]
        try:
            self.ensure_first_admin(announce)
        except ConfigError:
            sock.close()
            raise
        await self._http.start(
            sock,
            self.app,
            section="console",
            concurrency=64,
            graceful_seconds=5,
            tls=context,
        )
        host = url_host(listen.host)
        self.log.emit(
            "console_listening",
            listen=f"{host}:{self.port}",
            url=f"https://{host}:{self.port}/api/v1/",
        )

    async def stop(self) -> None:
        if not self._http.started:
            return
        await self._http.stop()
        self.log.emit("console_stopped")


def _server_context(config: Config) -> ssl.SSLContext:
    """The client leg's context without SNI: the proxy server certificate,
    TLS 1.2 or later, the predefined profile's ciphers."""
    store = load_certificates(config)
    return TLSContextCache().client_leg_context(TLS_CLIENT_STANDARD_PROFILE, store, outgoing=False)


async def start_console(
    proxy: RunningProxy,
    config_path: Path | None,
    log: EventLog,
    traffic: TrafficDatabase | None = None,
) -> Console | None:
    """Start the console if ``[console] enabled``; the first administrator is
    created (and its password printed to standard error) before it listens."""
    if not proxy.config.console.enabled:
        return None
    console = Console(proxy, config_path, log, traffic=traffic)
    await console.start(print_first_admin)
    return console


def print_first_admin(name: str, password: str) -> None:
    """serve's announcement of the first administrator: one plain line on standard
    error (not a log record, so the password is written nowhere else)."""
    print(
        f"smtpgate: console: created the first administrator {name!r} with the "
        f"password {password} (shown only this once; change it with "
        f"`smtpgate admin passwd {name}`)",
        file=sys.stderr,
        flush=True,
    )


__all__ = ["Console", "RunningProxy", "start_console"]
