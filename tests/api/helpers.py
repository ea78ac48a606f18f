"""A real ``smtpgate serve`` with the console enabled, and HTTPS clients for it.

The console presents the proxy server certificate that serve generated in
``state_dir``; the clients trust the proxy CA from there, as an
administrator's browser or script would after ``smtpgate ca export``.
"""

from __future__ import annotations

import re
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx

from smtpgate.reserved_port import ReservedPort
from tests.peers.gate_config import gate_config, rule
from tests.peers.smtpgate_proc import SmtpgateProcess, smtpgate_binary

FIRST_PASSWORD = re.compile(r"created the first administrator 'admin' with the password (\S+) ")


class ConsoleUnderTest:
    """One serve process and what a client needs to reach its console."""

    def __init__(self, gate: SmtpgateProcess, port: int) -> None:
        self.gate = gate
        self.port = port
        self.base_url = f"https://127.0.0.1:{port}"
        match = FIRST_PASSWORD.search(gate.stderr())
        assert match, gate.stderr()
        self.admin_password = match[1]
        self.secrets: list[str] = [self.admin_password]

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.gate.state_dir / "tls" / "ca.pem"))
        return context

    def client(
        self, auth: tuple[str, str] | None = None, *, token: str | None = None, source: str = ""
    ) -> httpx.Client:
        """An HTTPS client; ``source`` binds it to another loopback address."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.HTTPTransport(verify=self.tls(), local_address=source or None)
        return httpx.Client(
            base_url=self.base_url, auth=auth, headers=headers, transport=transport, timeout=20
        )

    def admin(self) -> httpx.Client:
        return self.client(("admin", self.admin_password))

    def command(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """``smtpgate admin ...`` (or any command) against this serve's configuration."""
        return subprocess.run(
            [smtpgate_binary(), *args, "--config", str(self.gate.config_file)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def add_user(self, name: str, password: str, role: str = "admin") -> None:
        result = self.command(
            "admin", "add", name, "--role", role, "--password-stdin", stdin=password + "\n"
        )
        assert result.returncode == 0, result.stderr
        self.secrets.append(password)

    def add_token(self, name: str, role: str = "admin") -> str:
        result = self.command("admin", "token", name, "--role", role)
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip()
        self.secrets.append(token)
        return token


def console_config(upstream_port: int, console_port: int, **kwargs: Any) -> dict[str, Any]:
    config = gate_config(
        upstream_port,
        rules=kwargs.pop("rules", [rule()]),
        profile={"validate_certificates": False, **kwargs.pop("profile", {})},
        **kwargs,
    )
    config["console"] = {"enabled": True, "listen": f"127.0.0.1:{console_port}"}
    return config


def start_console(workdir: Path, upstream_port: int, **kwargs: Any) -> ConsoleUnderTest:
    with ReservedPort() as console:  # held until the console listens on it
        gate = SmtpgateProcess(workdir, console_config(upstream_port, console.port, **kwargs))
        gate.start()
        try:
            gate.wait_record("console_listening")
            return ConsoleUnderTest(gate, console.port)
        except BaseException:
            gate.stop()
            raise
