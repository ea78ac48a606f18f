"""The console listener's start (docs/api.md, "TLS")."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from smtpgate.config import toml_writer
from smtpgate.reserved_port import ReservedPort
from tests.api.helpers import console_config
from tests.peers.smtpgate_proc import smtpgate_binary


def test_a_console_address_in_use_stops_serve_naming_console_listen(tmp_path: Path) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as taken,
        ReservedPort() as upstream,  # nothing listens there
        ReservedPort() as listen,  # held until serve binds it
    ):
        port = taken.getsockname()[1]
        config = console_config(upstream.port, port)
        config["gateway"]["state_dir"] = str(tmp_path / "state")
        config["policies"][0]["listen"] = f"127.0.0.1:{listen.port}"
        path = tmp_path / "smtpgate.toml"
        path.write_text(toml_writer.dumps(config))
        result = subprocess.run(
            [smtpgate_binary(), "serve", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    # No account was made (and no password printed) for a console that never listened.
    assert not (tmp_path / "state" / "admins.json").exists()
    assert "password" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: {path}: console.listen: 127.0.0.1:{port}: address already in use"
    )
