"""`smtpgate demo` is the README's first command: it must run and tell the truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SMTPGATE = Path(sys.executable).with_name("smtpgate")


def test_demo_runs_each_rule_and_exits_zero() -> None:
    result = subprocess.run(
        [str(SMTPGATE), "demo"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "530 5.7.0 Must issue a STARTTLS command first" in out
    # One transaction re-encrypted with a verified upstream, one delivered in clear.
    assert "rule=1" in out and "upstream_verify=ok" in out
    assert "rule=2" in out and "upstream_tls=none" in out
    assert "The upstream received 3 message(s)" in out
