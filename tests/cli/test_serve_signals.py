"""``smtpgate serve`` takes SIGHUP and SIGTERM from the moment it reports listening."""

from __future__ import annotations

import signal
from pathlib import Path

from smtpgate.reserved_port import ReservedPort
from tests.api.helpers import console_config
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream


def test_sighup_right_after_listening_reloads_while_the_console_still_starts(
    tmp_path: Path, upstream: AiosmtpdUpstream
) -> None:
    """The console starts after the SMTP listeners report `listening` (and on a first
    start hashes a new administrator's password): a SIGHUP sent at once, as a test or a
    deployment script does, must be a reload, not the default action that ends serve."""
    with ReservedPort() as console:
        gate = SmtpgateProcess(tmp_path, console_config(upstream.port, console.port))
        with gate:
            assert gate.proc is not None
            gate.proc.send_signal(signal.SIGHUP)
            gate.wait_record("reloaded")
            gate.wait_record("console_listening")
            assert gate.proc.poll() is None, gate.diagnostics()
        assert gate.returncode == 0, gate.diagnostics()
