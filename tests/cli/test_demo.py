"""`smtpgate demo` is the README's first command: it must run and tell the truth."""

from __future__ import annotations

import re
import signal
import smtplib
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from smtpgate.demo import CONFIG_FILE_LABEL, CONFIG_HEADING, CONSOLE_LABEL, RUNNING_LABEL

SMTPGATE = Path(sys.executable).with_name("smtpgate")


def demo(*args: str) -> str:
    """The demo as the tests run it: --exit stops it after the sample mail."""
    result = subprocess.run(
        [str(SMTPGATE), "demo", "--exit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
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


def test_demo_keeps_the_proxy_and_the_console_running_until_ctrl_c(tmp_path: Path) -> None:
    """`make demo`: the console's address and one-time password are printed, logging in
    with them works, mail sent meanwhile is shown, and Ctrl-C (SIGINT) ends it cleanly."""
    state = tmp_path / "demo"
    process = subprocess.Popen(
        [str(SMTPGATE), "demo", "--keep-state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        out = ""
        while RUNNING_LABEL not in out:
            line = process.stdout.readline()
            assert line, out + (process.stderr.read() if process.stderr else "")
            out += line
        address = re.search(rf"{CONSOLE_LABEL} (https://127\.0\.0\.1:\d+)/\n", out)
        password = re.search(
            r"log in as admin with the password (\S+) \(shown only this once\)", out
        )
        assert address and password, out
        trust = ssl.create_default_context(cafile=str(state / "state" / "tls" / "ca.pem"))
        with httpx.Client(base_url=address[1], verify=trust, timeout=10) as client:
            login = client.post("/api/v1/session", json={"name": "admin", "password": password[1]})
            assert login.status_code == 200, login.text
            actions = client.get("/api/v1/actions").json()
            assert "Inbound.Demo" in [a["name"] for a in actions]
            assert client.get("/console/").status_code == 200
        # Mail sent now goes through the running proxy and is shown as it happens.
        proxy = re.search(r"proxy on 127\.0\.0\.1:(\d+) ", out)
        assert proxy, out
        with smtplib.SMTP("127.0.0.1", int(proxy[1]), timeout=10) as smtp:
            smtp.sendmail("dave@later.example", ["erin@corp.example"], b"Subject: hi\r\n\r\nhi\r\n")
        shown = ""
        while not shown.strip():
            shown = process.stdout.readline()
        assert " transaction " in shown and "recipients=erin@corp.example" in shown, shown
        assert "outcome=delivered" in shown
        # The samples and that mail are on the Traffic and Coverage pages' routes.
        with httpx.Client(base_url=address[1], verify=trust, timeout=10) as client:
            client.post("/api/v1/session", json={"name": "admin", "password": password[1]})
            deadline = time.monotonic() + 20
            while True:
                records = client.get("/api/v1/traffic").json()["records"]
                if len(records) == 5 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            coverage = client.get("/api/v1/coverage").json()
        assert records[0]["sender_domain"] == "later.example"
        assert [r["outcome"] for r in records].count("delivered") == 4
        senders = {entry["domain"]: entry for entry in coverage["senders"]}
        assert senders["partner.example"]["messages"] == 2
        assert senders["partner.example"]["client"]["encrypted"] == 1
        # The password is printed once, and nowhere in the state.
        assert out.count(password[1]) == 1
        assert not any(password[1] in p.read_text(errors="replace") for p in state.rglob("*.*"))
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 0, rest
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
