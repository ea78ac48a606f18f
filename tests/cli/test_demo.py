"""`smtpgate demo` is the README's first command: it must run and tell the truth."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from smtpgate.demo import CONFIG_FILE_LABEL, CONFIG_HEADING

SMTPGATE = Path(sys.executable).with_name("smtpgate")


def demo(*args: str) -> str:
    result = subprocess.run(
        [str(SMTPGATE), "demo", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def printed_config(out: str) -> str:
    """The configuration as the demo prints it, indentation removed."""
    shown = out.split(CONFIG_HEADING + "\n", 1)[1].split(CONFIG_FILE_LABEL, 1)[0]
    return textwrap.dedent(shown)


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SMTPGATE), "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_demo_runs_each_rule_and_exits_zero(tmp_path: Path) -> None:
    out = demo()
    assert "530 5.7.0 Must issue a STARTTLS command first" in out
    # One transaction re-encrypted with a verified upstream, one delivered in clear.
    assert "rule=1" in out and "upstream_verify=ok" in out
    assert "rule=2" in out and "upstream_tls=none" in out
    assert "The upstream received 3 message(s)" in out
    # What it prints loads when pasted into a file, and it says its own file goes away.
    pasted = tmp_path / "pasted.toml"
    pasted.write_text(printed_config(out))
    result = check(pasted)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert "(deleted when the demo ends; `smtpgate demo --keep-state DIR` keeps it" in out


def test_demo_keep_state_keeps_a_configuration_that_checks(tmp_path: Path) -> None:
    out = demo("--keep-state", str(tmp_path / "demo"))
    kept = tmp_path / "demo" / "smtpgate.toml"
    assert f"{CONFIG_FILE_LABEL} {kept} (kept; try `smtpgate check --config {kept}`)" in out
    assert kept.read_text().strip() == printed_config(out).strip()
    assert check(kept).returncode == 0
