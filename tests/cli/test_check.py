"""``smtpgate check`` is final: what it accepts, ``serve`` starts; what ``serve``
refuses, both name by key path. Run as processes, as an administrator runs them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from test_commands import SMTPGATE, free_port, release_held_ports, run

from tests.peers import complete_lines, wait_until

__all__ = ["release_held_ports"]  # autouse: the ports free_port hands out are held

T = TypeVar("T")
Records = list[dict[str, str]]

BASE = """\
[gateway]
hostname = "mx.check.test"
state_dir = "state"
[logging]
file = "smtpgate.log"
[[policies]]
name = "other"
listen = "127.0.0.1:{other}"
upstream = "127.0.0.1:{upstream}"
[[policies]]
name = "inbound"
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{upstream}"
proxy_action = "Inbound.Custom"
[[tls_profiles]]
name = "Strict"
ca_file = "{ca_file}"
[[proxy_actions]]
name = "Inbound.Custom"
[proxy_actions.starttls]
tls_profile = "Strict"
"""


def write(tmp_path: Path, extra: str = "", *, listen: int = 0, ca_file: str = "") -> Path:
    path = tmp_path / "smtpgate.toml"
    text = BASE.format(
        other=free_port(), listen=listen or free_port(), upstream=free_port(), ca_file=ca_file
    )
    path.write_text(text + extra)
    return path


def test_check_loads_certificates_keys_and_ca_files_as_serve_does(tmp_path: Path) -> None:
    missing = write(
        tmp_path,
        '[certificates]\nserver_cert = "/etc/ssl/nonexistent/gate.pem"\n'
        'server_key = "/etc/ssl/nonexistent/gate.key"\n',
    )
    for command in ("check", "serve"):
        result = run(command, "--config", str(missing))
        assert result.returncode == 1, result.stderr
        assert (
            f"error: {missing}: certificates.server_cert: /etc/ssl/nonexistent/gate.pem: "
            "cannot read certificate: No such file or directory"
        ) in result.stderr.splitlines()

    # A real certificate (one `ca init` generates), but a key file that is no key.
    assert run("ca", "init", "--config", str(write(tmp_path))).returncode == 0
    (tmp_path / "not-a-key.pem").write_text("hello\n")
    no_key = write(
        tmp_path,
        '[certificates]\nserver_cert = "state/tls/server.pem"\nserver_key = "not-a-key.pem"\n',
    )
    result = run("check", "--config", str(no_key))
    assert result.returncode == 1
    assert f"error: {no_key}: certificates.server_key: {tmp_path}/not-a-key.pem: " in result.stderr
    assert "not an unencrypted PEM private key" in result.stderr

    no_ca = write(tmp_path, ca_file="missing-ca.pem")
    for command in ("check", "serve"):
        result = run(command, "--config", str(no_ca))
        assert result.returncode == 1
        assert f"error: {no_ca}: tls_profiles[1].ca_file: {tmp_path}/missing-ca.pem: " in (
            result.stderr
        )


def test_an_unusable_log_file_is_found_by_check(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('"smtpgate.log"', '"/nonexistent/smtpgate.log"'))
    expected = (
        f"error: {path}: logging.file: /nonexistent/smtpgate.log: "
        "cannot open: No such file or directory"
    )
    for command in ("check", "serve"):
        result = run(command, "--config", str(path))
        assert result.returncode == 1
        assert expected in result.stderr.splitlines(), result.stderr


def test_a_taken_port_is_found_by_check_bind_and_named_by_serve(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write(tmp_path, listen=port)
        assert run("check", "--config", str(path)).returncode == 0
        expected = f"error: {path}: policies[2].listen: 127.0.0.1:{port}: address already in use"
        for args in (("check", "--bind"), ("serve",)):
            result = run(*args, "--config", str(path))
            assert result.returncode == 1
            assert expected in result.stderr.splitlines(), result.stderr
    # Once free, check --bind passes and leaves nothing listening.
    ok = run("check", "--bind", "--config", str(path))
    assert ok.returncode == 0, ok.stderr
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


WARNED = """\
[[tls_profiles]]
name = "Spare"
[[proxy_actions]]
name = "Unused"
[proxy_actions.starttls]
require_tls_for_envelope = true
"""


def test_check_warns_and_serve_logs_the_same_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, WARNED)
    result = run("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    keys = [line.split(": ")[2] for line in warnings]
    assert keys == [
        "proxy_actions[2].starttls.require_tls_for_envelope",
        "proxy_actions[2]",
        "tls_profiles[2]",
    ]
    assert f"warning: {path}: proxy_actions[2]: proxy action 'Unused' is used by no policy" in (
        warnings
    )
    assert "3 warnings" in result.stdout

    log = tmp_path / "smtpgate.log"
    assert not (tmp_path / "state").exists()  # check wrote nothing; serve generates, and says where
    proc = subprocess.Popen([SMTPGATE, "serve", "--config", str(path)], stderr=subprocess.PIPE)

    def records_until(holds: Callable[[Records], T | None], what: str) -> T:
        """What ``holds`` finds in the log's whole lines, once it finds something: serve
        writes its records one by one, and the one being written may end mid-line."""

        def probe() -> T | None:
            assert proc.poll() is None, proc.stderr
            return holds([json.loads(line) for line in complete_lines(log)])

        return wait_until(probe, lambda: f"no {what} in {log}", timeout=15)

    def reload_warnings(records: Records) -> Records | None:
        """The config_warning records after ``reloaded``, once all of them are there."""
        events = [r["event"] for r in records]
        if "reloaded" not in events:
            return None
        after = records[events.index("reloaded") :]
        found = [r for r in after if r["event"] == "config_warning"]
        return found if len(found) >= len(keys) else None

    try:
        started = records_until(
            lambda rs: rs if any(r["event"] == "listening" for r in rs) else None, "listening"
        )
        created = [r["file"] for r in started if r["event"] == "created"]
        assert str(tmp_path / "state/tls/ca.key") in created
        logged = [r for r in started if r["event"] == "config_warning"]
        assert [r["key"] for r in logged] == keys
        assert [f"warning: {path}: {r['key']}: {r['warning']}" for r in logged] == warnings
        # A reload logs the warnings of the new configuration.
        proc.send_signal(signal.SIGHUP)
        reloaded = records_until(reload_warnings, "config_warning records after reloaded")
        assert [r["key"] for r in reloaded] == keys
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(20)


# Root's embedded default is /var/lib/smtpgate; as nobody it is under $XDG_STATE_HOME.
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def test_ca_export_only_reads_and_says_how_to_create_the_ca(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="smtpgate-home-"))
    home.chmod(0o777)  # writable for nobody: today's bug would write keys here
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(home / "state")}
    user = AS_NOBODY if os.geteuid() == 0 else []
    try:
        result = subprocess.run(
            [*user, SMTPGATE, "ca", "export"], capture_output=True, text=True, env=env, check=False
        )
        assert list(home.iterdir()) == []  # no keys, no folders
    finally:
        shutil.rmtree(home)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: no proxy CA in {home}/state/smtpgate (gateway.state_dir) yet, and none "
        "configured (certificates.ca_cert); `smtpgate ca init` generates one there, "
        "or set certificates.ca_cert and ca_key to your own CA\n"
    )

    path = write(tmp_path)
    refused = run("ca", "export", "--config", str(path))
    assert refused.returncode == 1 and f"`smtpgate ca init --config {path}`" in refused.stderr
    assert not (tmp_path / "state").exists()
    created = run("ca", "init", "--config", str(path))
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines() == [
        f"created {tmp_path}/state/tls/{name}"
        for name in (
            "ca.key",
            "ca.pem",
            "leaves/ecdsa/leaf.key",
            "leaves/leaf.key",
            "server-ecdsa.key",
            "server-ecdsa.pem",
            "server.key",
            "server.pem",
        )
    ]
    assert run("ca", "init", "--config", str(path)).stdout == ""  # made once
    exported = run("ca", "export", "--config", str(path))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == (tmp_path / "state/tls/ca.pem").read_text()


def test_version_and_help_send_nobody_outside_the_repository() -> None:
    version = run("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("smtpgate ") and version.stdout.strip() != "smtpgate"
    helptext = run("--help").stdout
    assert "SPEC" not in helptext and "docs/configuration.md" in helptext


def test_an_unused_profile_with_an_unreadable_ca_file_is_an_error(tmp_path: Path) -> None:
    """Used or not, a profile's ca_file is read at start and by every edit, with the
    same reason; an edit that would leave it unreadable changes nothing."""
    spare = '[[tls_profiles]]\nname = "Spare"\nca_file = "missing-ca.pem"\n'
    path = write(tmp_path, spare)
    expected = (
        f"error: {path}: tls_profiles[2].ca_file: {tmp_path}/missing-ca.pem: "
        "cannot read ca_file: No such file or directory"
    )
    for command in ("check", "serve"):
        result = run(command, "--config", str(path))
        assert result.returncode == 1, result.stderr
        assert expected in result.stderr.splitlines(), result.stderr

    path = write(tmp_path, '[[tls_profiles]]\nname = "Spare"\n')
    before = path.read_text()
    edit = run("config", "set", "-c", str(path), "tls_profiles[2].ca_file", "missing-ca.pem")
    assert edit.returncode == 1
    assert edit.stderr.splitlines() == [expected]
    assert path.read_text() == before


READ_ONLY = """\
[gateway]
hostname = "mx.check.test"
state_dir = "{state_dir}"
[logging]
file = "{log}"
[[policies]]
name = "inbound"
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{upstream}"
[[policies]]
name = "outgoing"
listen = "127.0.0.1:{outgoing}"
upstream = "relay.check.test:25"
proxy_action = "SMTP-Outgoing.Standard"
"""


def test_check_writes_nothing_not_even_next_to_a_read_only_config() -> None:
    """`check --config /dev/null` wrote keys under /dev/state. Now it generates what
    serve would in a throwaway folder and names it; where serve could not, it says so."""
    base = Path(tempfile.mkdtemp(prefix="smtpgate-ro-"))
    try:
        etc, var = base / "etc", base / "var"
        etc.mkdir()
        var.mkdir()
        base.chmod(0o755)
        var.chmod(0o777)  # serve could write here; check must not
        user = AS_NOBODY if os.geteuid() == 0 else []
        if not user:
            etc.chmod(0o555)

        def check(state_dir: str, log: str) -> subprocess.CompletedProcess[str]:
            path = etc / "smtpgate.toml"
            etc.chmod(0o755)
            path.write_text(
                READ_ONLY.format(
                    state_dir=state_dir,
                    log=log,
                    listen=free_port(),
                    upstream=free_port(),
                    outgoing=free_port(),
                )
            )
            etc.chmod(0o755 if user else 0o555)
            return subprocess.run(
                [*user, SMTPGATE, "check", "--config", str(path)],
                capture_output=True,
                text=True,
                check=False,
            )

        config = etc / "smtpgate.toml"
        ok = check(f"{var}/state", f"{var}/smtpgate.log")
        assert ok.returncode == 0, ok.stderr
        assert ok.stderr.splitlines() == [
            f"note: {config}: serve would generate {var}/state/tls/{name} (gateway.state_dir)"
            for name in (
                "ca.key",
                "ca.pem",
                "leaves/ecdsa/leaf.key",
                "leaves/ecdsa/relay.check.test.pem",
                "leaves/leaf.key",
                "leaves/relay.check.test.pem",
                "server-ecdsa.key",
                "server-ecdsa.pem",
                "server.key",
                "server.pem",
            )
        ]
        assert list(var.iterdir()) == []
        # Next to the file, in the read-only folder, serve could create nothing.
        refused = check("state", f"{var}/smtpgate.log")
        assert refused.returncode == 1
        assert refused.stderr == (
            f"error: {config}: gateway.state_dir: {etc}: cannot create state/tls/ca.key: "
            "Permission denied\n"
        )
        no_log = check(f"{var}/state", "smtpgate.log")
        assert no_log.returncode == 1
        assert no_log.stderr == (
            f"error: {config}: logging.file: {etc}/smtpgate.log: cannot open: Permission denied\n"
        )
        assert sorted(p.name for p in etc.iterdir()) == ["smtpgate.toml"]
        assert list(var.iterdir()) == []
    finally:
        shutil.rmtree(base)


def test_check_reads_what_serve_generated_and_rewrites_none_of_it(tmp_path: Path) -> None:
    path = write(tmp_path)
    assert run("ca", "init", "--config", str(path)).returncode == 0
    tls = tmp_path / "state" / "tls"
    before = {p: p.read_bytes() for p in tls.rglob("*") if p.is_file()}
    # A new host name: serve would make a new server certificate; check only says so.
    path.write_text(path.read_text().replace("mx.check.test", "mx2.check.test"))
    result = run("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"note: {path}: serve would generate {tls}/{name} (gateway.state_dir)"
        for name in ("server-ecdsa.pem", "server.pem")
    ]
    assert {p: p.read_bytes() for p in tls.rglob("*") if p.is_file()} == before
    # A damaged generated key is named where it is, not where check looked.
    (tls / "ca.key").write_text("damaged\n")
    damaged = run("check", "--config", str(path))
    assert damaged.returncode == 1
    assert damaged.stderr.startswith(
        f"error: {path}: gateway.state_dir: {tls}/ca.key: not an unencrypted PEM private key"
    ), damaged.stderr
