"""deploy/: each file checked by the tool of its ecosystem, and against smtpgate itself.

- the systemd unit: ``systemd-analyze verify`` and ``systemd-analyze security
  --offline=yes`` under a threshold, plus what the issue asks of it;
- the logrotate snippet: ``logrotate -d``, and a real rotation of a running
  serve's log with SIGUSR1;
- the container file: BuildKit's own parser (the ``dockerfile`` package) and a
  structured check (hadolint is not on Debian 12, and no base image can be
  pulled here, so nothing is built);
- the Kubernetes manifests: ``kubernetes-validate --strict`` (the Kubernetes
  OpenAPI schemas), and their consistency with the configuration they carry.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import re
import shutil
import smtplib
import subprocess
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml

from smtpgate.config.loader import parse_config
from tests.peers import require_binary, wait_until
from tests.peers.smtpgate_proc import SmtpgateProcess, smtpgate_binary
from tests.peers.upstream import AiosmtpdUpstream

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "smtpgate.service"
LOGROTATE = DEPLOY / "logrotate" / "smtpgate"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
KUBERNETES = DEPLOY / "kubernetes"
#: `systemd-analyze security` exposure, 0-10 (the threshold is given x10): the unit
#: scores 1.6 ("OK"); anything that loosens it past 2.0 fails.
SECURITY_THRESHOLD = 20
#: SIGTERM's drain (30 s) plus the cut of what is left (5 s): the gateway's bounds.
STOP_SECONDS = 35


# -- systemd -----------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """Each ``Key=value`` of the unit, every value of repeated keys, in order."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture
def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary where this checkout installed it (verify wants
    an executable there); nothing else is changed."""
    require_binary("systemd-analyze", "systemd")
    text = UNIT.read_text().replace("/opt/smtpgate/bin/smtpgate", smtpgate_binary())
    copy = tmp_path / "smtpgate.service"
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify_passes(unit_here: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit_here)], capture_output=True, text=True, check=False
    )
    assert (proc.returncode, proc.stderr) == (0, "")


def test_systemd_analyze_security_is_under_the_threshold(unit_here: Path) -> None:
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--threshold={SECURITY_THRESHOLD}",
            "--no-pager",
            str(unit_here),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exposure = re.search(r"Overall exposure level for smtpgate\.service: (\d+\.\d+)", proc.stdout)
    assert exposure and float(exposure[1]) * 10 <= SECURITY_THRESHOLD, proc.stdout


def test_the_unit_is_hardened_as_the_issue_asks() -> None:
    unit = unit_settings()
    assert unit["User"] == ["smtpgate"] and unit["Group"] == ["smtpgate"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    # state_dir writable under ProtectSystem=strict: StateDirectory= is /var/lib/smtpgate.
    assert unit["StateDirectory"] == ["smtpgate"]
    assert 'state_dir = "/var/lib/smtpgate"' in UNIT.read_text()
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert int(unit["TimeoutStopSec"][0]) > STOP_SECONDS
    assert unit["ExecStart"] == [
        "/opt/smtpgate/bin/smtpgate serve --config /etc/smtpgate/smtpgate.toml"
    ]


# -- logrotate ---------------------------------------------------------------------------------


def logrotate_here(tmp_path: Path, postrotate: str | None = None) -> Path:
    """The snippet for a log folder under ``tmp_path``, rotated as the running user (the
    snippet's own user may not exist here); ``postrotate`` replaces its command."""
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    text = LOGROTATE.read_text().replace("/var/log/smtpgate", str(tmp_path / "log"))
    text = text.replace("su smtpgate smtpgate", f"su {user} {group}")
    if postrotate is not None:
        text, count = re.subn(r"(?m)^        systemctl kill .*$", f"        {postrotate}", text)
        assert count == 1
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    conf.chmod(0o644)
    (tmp_path / "log").mkdir(exist_ok=True)
    (tmp_path / "log").chmod(0o750)
    return conf


def test_logrotate_reads_the_snippet_without_errors(tmp_path: Path) -> None:
    logrotate = require_binary("logrotate", "logrotate")
    conf = logrotate_here(tmp_path)
    (tmp_path / "log" / "smtpgate.log").write_text('{"event":"x"}\n')
    proc = subprocess.run(
        [logrotate, "-d", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower(), proc.stderr
    assert "considering log" in proc.stderr


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        content = f"Message-ID: <{subject}@sender.example>\r\n\r\nhi\r\n"
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], content) == {}


def test_logrotate_rotates_a_running_serves_log_and_sigusr1_reopens_it(
    tmp_path: Path, upstream: AiosmtpdUpstream
) -> None:
    logrotate = require_binary("logrotate", "logrotate")
    log_file = tmp_path / "log" / "smtpgate.log"
    (tmp_path / "log").mkdir()
    config = {
        "logging": {"file": str(log_file)},
        "policies": [{"name": "in", "upstream": f"127.0.0.1:{upstream.port}"}],
    }
    with SmtpgateProcess(tmp_path / "gate", config) as gate:
        assert gate.proc is not None
        conf = logrotate_here(tmp_path, postrotate=f"kill -USR1 {gate.proc.pid}")
        send(gate.port(), "before")
        gate.wait_record("session_end")
        proc = subprocess.run(
            [logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: log_file.exists() or None, lambda: "no new log file", timeout=10)
        send(gate.port(), "after")
        gate.wait_record("session_end")
    rotated = tmp_path / "log" / "smtpgate.log.1"  # delaycompress: not yet compressed
    old = [json.loads(line) for line in rotated.read_text().splitlines()]
    new = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [r["message_id"] for r in old if r["event"] == "transaction"] == [
        "<before@sender.example>"
    ]
    assert [r["message_id"] for r in new if r["event"] == "transaction"] == [
        "<after@sender.example>"
    ]
    assert not any(r["event"].startswith("reload") for r in old + new)


# -- the container file ------------------------------------------------------------------------


def stages() -> list[list[Any]]:
    """The Containerfile's instructions, parsed by BuildKit's parser, by stage."""
    found: list[list[Any]] = []
    for command in dockerfile.parse_file(str(CONTAINERFILE)):
        if command.cmd == "FROM":
            found.append([])
        found[-1].append(command)
    return found


def test_the_container_runs_unprivileged_with_a_health_check() -> None:
    *_, final = stages()
    cmds = [c.cmd for c in final]
    user = [c.value[0] for c in final if c.cmd == "USER"]
    assert user, "the final stage sets no USER"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can check it
    assert cmds.index("USER") < cmds.index("ENTRYPOINT")
    assert cmds.index("USER") > max(i for i, c in enumerate(cmds) if c == "RUN")
    (healthcheck,) = [c for c in final if c.cmd == "HEALTHCHECK"]
    assert healthcheck.value[0] == "CMD"
    entrypoint = next(c for c in final if c.cmd == "ENTRYPOINT")
    assert entrypoint.json and entrypoint.value == ("/opt/smtpgate/bin/smtpgate",)
    assert "ADD" not in cmds  # COPY only: nothing fetched at build time
    # Runtime settings for a read-only root file system: no byte-code written.
    env = " ".join(" ".join(c.value) for c in final if c.cmd == "ENV")
    assert "PYTHONDONTWRITEBYTECODE 1" in env
    volumes = [v for c in final if c.cmd == "VOLUME" for v in c.value]
    assert volumes == ["/var/lib/smtpgate"]


def test_the_container_file_follows_hadolint_s_main_rules() -> None:
    """The rules of hadolint that apply to this file (DL3006/DL3007 pinned base
    images, DL3042 no pip cache, DL3020 COPY not ADD, DL3025 exec form), checked
    on BuildKit's parse."""
    for stage in stages():
        base = stage[0].value[0]
        assert ":" in base and not base.endswith(":latest"), base
        for command in stage:
            if command.cmd == "RUN" and "pip install" in command.original:
                assert "--no-cache-dir" in command.original
            if command.cmd in ("CMD", "ENTRYPOINT"):
                assert command.json, command.original
            if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
                for source in command.value[:-1]:
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_the_container_s_configuration_passes_check_and_matches_exposed_ports(
    tmp_path: Path,
) -> None:
    *_, final = stages()
    copied = next(c for c in final if c.cmd == "COPY" and c.value[-1].endswith(".toml"))
    text = (ROOT / copied.value[0]).read_text()
    config = parse_config(text, tmp_path)
    assert str(config.gateway.state_dir) == "/var/lib/smtpgate"
    exposed = {int(p) for c in final if c.cmd == "EXPOSE" for p in c.value}
    assert exposed == {config.metrics.listen.port, *(p.listen.port for p in config.policies)}
    health = next(c for c in final if c.cmd == "HEALTHCHECK").value[-1]
    assert "2525), 5)" in health and config.policies[0].listen.port == 2525
    # As serve would start it, with state_dir somewhere writable here.
    here = tmp_path / "smtpgate.toml"
    here.write_text(text.replace("/var/lib/smtpgate", str(tmp_path / "state")))
    proc = subprocess.run(
        [smtpgate_binary(), "check", "--config", str(here)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("ok (1 policies, 0 proxy actions, 0 TLS profiles, 0 warnings)\n")


# -- Kubernetes --------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    """``kind/name`` -> the resource, from every file in deploy/kubernetes."""
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for resource in yaml.safe_load_all(path.read_text()):
            found[f"{resource['kind']}/{resource['metadata']['name']}"] = resource
    return found


def test_the_manifests_pass_the_kubernetes_schemas_strictly() -> None:
    resources = manifests()
    assert set(resources) == {
        "ConfigMap/smtpgate",
        "Secret/smtpgate-tls",
        "Deployment/smtpgate",
        "Service/smtpgate",
        "Service/smtpgate-metrics",
        "PodDisruptionBudget/smtpgate",
    }
    for name, resource in resources.items():
        try:
            kubernetes_validate.validate(resource, "1.30.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message} at {list(exc.path)}")


def test_the_command_line_validator_accepts_the_files() -> None:
    binary = shutil.which("kubernetes-validate", path=str(Path(smtpgate_binary()).parent))
    assert binary is not None
    files = sorted(str(p) for p in KUBERNETES.glob("*.yaml"))
    proc = subprocess.run(
        [binary, "--strict", "-k", "1.30.0", *files], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_manifests_agree_with_the_configuration_they_carry(tmp_path: Path) -> None:
    resources = manifests()
    config_map = resources["ConfigMap/smtpgate"]
    config = parse_config(config_map["data"]["smtpgate.toml"], tmp_path)
    pod = resources["Deployment/smtpgate"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (policy,) = config.policies
    # Readiness on the SMTP port: the policy's listener, which takes PROXY headers.
    assert container["readinessProbe"]["tcpSocket"]["port"] == "smtp"
    assert ports == {"smtp": policy.listen.port, "metrics": config.metrics.listen.port}
    assert policy.proxy_protocol and policy.proxy_protocol_from and config.metrics.enabled
    service = resources["Service/smtpgate"]
    assert service["spec"]["ports"][0]["targetPort"] == "smtp"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert any("proxy-protocol" in key for key in service["metadata"]["annotations"])
    # The configuration and keys are where the configuration says.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_file = container["args"][container["args"].index("--config") + 1]
    assert config_file == f"{mounts['config']}/smtpgate.toml"
    assert str(config.gateway.state_dir) == mounts["state"]
    secret = resources["Secret/smtpgate-tls"]["stringData"]
    certs = config.certificates
    for path in (certs.server_cert, certs.server_key, certs.ca_cert, certs.ca_key):
        assert path is not None and str(path.parent) == mounts["tls"] and path.name in secret
    # Unprivileged, read-only root, as the container file is built for.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"]
    *_, final = stages()
    user = [c.value[0] for c in final if c.cmd == "USER"][-1]
    assert str(pod["spec"]["securityContext"]["runAsUser"]) == user.split(":")[0]
    assert pod["spec"]["terminationGracePeriodSeconds"] > STOP_SECONDS
    # The budget covers the pods.
    budget = resources["PodDisruptionBudget/smtpgate"]["spec"]
    labels = pod["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert resources["Service/smtpgate"]["spec"]["selector"].items() <= labels.items()


def test_a_manifest_with_a_mistake_is_refused() -> None:
    """The check has teeth: a misspelt field fails strict validation."""
    deployment = json.loads(json.dumps(manifests()["Deployment/smtpgate"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


def test_prometheus_scrape_annotations_match_the_metrics_listener(tmp_path: Path) -> None:
    resources = manifests()
    config = parse_config(resources["ConfigMap/smtpgate"]["data"]["smtpgate.toml"], tmp_path)
    annotations = resources["Deployment/smtpgate"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.metrics.listen.port)
    assert annotations["prometheus.io/path"] == "/metrics"
