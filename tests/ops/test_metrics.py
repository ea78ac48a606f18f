"""``[metrics]``: a real ``smtpgate serve`` scraped over HTTP after real mail went through
it (STARTTLS on both legs); the counts are the log's, the Grafana dashboard in
deploy/ uses exactly the names it exposes."""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import smtplib
import socket
import ssl
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smtpgate.config import toml_writer
from smtpgate.config.errors import ConfigError
from smtpgate.config.loader import parse_config
from smtpgate.logs import EventLog
from smtpgate.metrics import REFUSAL_KINDS, Metrics, refusal_kind, rule_position, verify_result
from smtpgate.reserved_port import ReservedPort
from tests.peers.certs import TestPKI
from tests.peers.smtpgate_proc import SmtpgateProcess, smtpgate_binary
from tests.peers.swaks import run_swaks_auth
from tests.peers.upstream import AiosmtpdUpstream

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "smtpgate-dashboard.json"
TOKEN = "s3cret-scrape-token"
USER, PASSWORD = "alice@sender.test", "s3cret-Pa55-wOrd"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[AiosmtpdUpstream]:
    pki = TestPKI(tmp_path / "upstream-pki")
    server = AiosmtpdUpstream(starttls=pki.server_context()).start()
    yield server
    server.stop()


PARTNERS = {
    "name": "partners",
    "recipient": "rcpt.example",
    "sender_encryption": "required",
    "recipient_encryption": "preferred",
}


@contextlib.contextmanager
def metrics_gate(
    tmp_path: Path,
    upstream: str | list[str],
    rule: dict[str, str],
    *,
    trust: Path | None = None,
    workers: int | str = "auto",
    **policy: str,
) -> Iterator[SmtpgateProcess]:
    """serve with ``[metrics]`` (token ``TOKEN``) and one policy ``in`` towards
    ``upstream``, its action ``incoming`` with ``rule``, running once its metrics
    listen. ``trust``: the CA that upstream certificates are checked against;
    ``workers``: ``[gateway] workers``."""
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN + "\n")
    starttls: dict[str, Any] = {"rules": [rule]}
    profiles = []
    if trust is not None:
        profiles = [{"name": "checked", "ca_file": str(trust)}]
        starttls["tls_profile"] = "checked"
    # The port held while serve runs: nothing else can take it before serve listens
    # there (see ReservedPort).
    with ReservedPort() as metrics_port:
        config = {
            "gateway": {"workers": workers},
            "metrics": {
                "enabled": True,
                "listen": f"127.0.0.1:{metrics_port.port}",
                "token_file": str(token_file),
            },
            "tls_profiles": profiles,
            "proxy_actions": [{"name": "incoming", "starttls": starttls}],
            "policies": [
                {"name": "in", "upstream": upstream, "proxy_action": "incoming", **policy}
            ],
        }
        with SmtpgateProcess(tmp_path / "gate", config) as gate:
            gate.wait_record("metrics_listening")
            yield gate


@pytest.fixture
def workers() -> int | str:
    """``[gateway] workers`` of the ``gate``; a test that needs one sets it
    (``@pytest.mark.parametrize("workers", ...)``)."""
    return "auto"


@pytest.fixture
def gate(
    tmp_path: Path, upstream: AiosmtpdUpstream, workers: int | str
) -> Iterator[SmtpgateProcess]:
    upstream_address = f"127.0.0.1:{upstream.port}"
    with metrics_gate(tmp_path, upstream_address, PARTNERS, workers=workers) as gate:
        yield gate


def metrics_url(gate: SmtpgateProcess) -> str:
    (record,) = gate.records("metrics_listening")
    url = str(record["url"])
    assert url == f"http://{gate.config['metrics']['listen']}/metrics"
    return url


def scrape(gate: SmtpgateProcess) -> tuple[str, Samples]:
    response = httpx.get(
        metrics_url(gate), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of ``name`` whose labels include ``labels``."""
    return sum(
        v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(have)
    )


def send(gate: SmtpgateProcess, subject: str) -> None:
    content = f"Message-ID: <{subject}@sender.example>\r\nSubject: {subject}\r\n\r\nhi\r\n"
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", gate.port(), timeout=10) as client:
        client.starttls(context=context)
        assert client.sendmail("a@sender.example", ["b@rcpt.example"], content) == {}


# One process: the second message reuses the first one's upstream leg, parked in the
# pool, and the pools are per worker (with two, the kernel may hand the second
# connection to the other one). The counts with workers: tests/reliability/test_workers.py.
@pytest.mark.parametrize("workers", [1])
def test_a_scrape_counts_what_the_log_says(gate: SmtpgateProcess) -> None:
    send(gate, "one")
    send(gate, "two")  # its upstream leg is the first one's, parked in the pool
    with smtplib.SMTP("127.0.0.1", gate.port(), timeout=10) as client:
        client.ehlo("client.test")
        assert client.docmd("MAIL FROM:<a@sender.example>")[0] == 250
        # The rule wants an encrypted client leg: refused before any upstream.
        assert client.docmd("RCPT TO:<b@rcpt.example>")[0] == 530
    gate.wait_record("session_end", count=3)
    transactions = gate.records("transaction")
    assert [t["outcome"] for t in transactions] == ["delivered", "delivered", "rejected"]
    assert [t["upstream_reused"] for t in transactions] == [False, True, False]

    _, samples = scrape(gate)

    assert value(samples, "smtpgate_sessions_total", policy="in") == 3
    assert value(samples, "smtpgate_sessions_current") == 0
    assert value(samples, "smtpgate_sessions_ended_total", reason="client_quit") == 3
    assert value(samples, "smtpgate_transactions_total", policy="in", outcome="delivered") == 2
    assert value(samples, "smtpgate_transactions_total", policy="in", outcome="rejected") == 1
    assert value(samples, "smtpgate_senders_refused_total") == 0
    refused = {"policy": "in", "reason": "client_not_encrypted"}
    assert value(samples, "smtpgate_recipients_refused_total", **refused) == 1
    assert value(samples, "smtpgate_upstream_reused_total", policy="in") == 1
    assert value(samples, "smtpgate_upstream_pool_connections", policy="in") == 1
    assert value(samples, "smtpgate_connections_current") == 0
    by_tls = Counter(
        (leg, t[f"{leg}_tls"], t[f"{leg}_cipher"])
        for t in transactions
        for leg in ("client", "upstream")
    )
    assert by_tls[("client", "none", "none")] == 1  # the refused one
    assert sum(n for (leg, version, _), n in by_tls.items() if version.startswith("TLSv1.")) == 4
    for (leg, version, cipher), count in by_tls.items():
        labels = {"leg": leg, "version": version, "cipher": cipher}
        assert value(samples, "smtpgate_transaction_tls_total", **labels) == count
    (connected,) = gate.records("upstream_connected")
    result = verify_result(connected["upstream_verify"])
    assert value(samples, "smtpgate_upstream_verify_total", result=result) == 1
    assert value(samples, "smtpgate_upstream_connections_total",
                 mode=connected["mode"], version=connected["upstream_tls"]) == 1  # fmt: skip
    assert [t["rule"] for t in transactions] == ["1 (partners)"] * 3
    assert value(samples, "smtpgate_rule_hits_total", action="incoming", rule="1") == 3
    assert value(samples, "smtpgate_message_bytes_total", policy="in") == sum(
        t["size"] for t in transactions
    )
    # Histograms: one client handshake per session with STARTTLS, one upstream
    # handshake and setup for the one upstream connection, one relay per message.
    starttls = gate.records("starttls")
    assert value(samples, "smtpgate_tls_handshake_seconds_count", leg="client") == len(starttls)
    client_seconds = value(samples, "smtpgate_tls_handshake_seconds_sum", leg="client")
    assert client_seconds == pytest.approx(sum(r["handshake_ms"] for r in starttls) / 1000)
    assert value(samples, "smtpgate_tls_handshake_seconds_count", leg="upstream") == 1
    assert value(samples, "smtpgate_upstream_setup_seconds_count") == 1
    assert connected["setup_ms"] >= connected["handshake_ms"] > 0
    assert value(samples, "smtpgate_relay_seconds_count", policy="in") == 2
    assert value(samples, "smtpgate_relay_seconds_bucket", policy="in", le="+Inf") == 2
    assert [t["relay_ms"] > 0 for t in transactions[:2]] == [True, True]
    assert transactions[2]["relay_ms"] is None  # no body was relayed
    # Every record counted by event, as the log has them.
    logged = Counter(r["event"] for r in gate.records())
    for event in ("session_start", "transaction", "upstream_connected", "listening"):
        assert value(samples, "smtpgate_log_records_total", event=event) == logged[event]
    assert value(samples, "smtpgate_build_info", version="0.1.0") == 1


def test_a_recipient_refused_after_every_next_hop_counts_as_the_last_failure(
    tmp_path: Path,
) -> None:
    """The first next hop refuses the connection, the second does not offer STARTTLS
    that the rule requires: the refusal counts as ``upstream_no_starttls``, the last
    failure's kind (not ``other``, nor the first one's)."""
    clear = AiosmtpdUpstream().start()  # no STARTTLS
    try:
        with ReservedPort() as unreachable:  # bound, never listening: refused
            hops = [f"127.0.0.1:{unreachable.port}", f"127.0.0.1:{clear.port}"]
            rule = {
                "name": "secure",
                "recipient": "rcpt.example",
                "recipient_encryption": "required",
            }
            with metrics_gate(tmp_path, hops, rule) as gate:
                with smtplib.SMTP("127.0.0.1", gate.port(), timeout=10) as client:
                    client.ehlo("client.test")
                    assert client.docmd("MAIL FROM:<a@sender.example>")[0] == 250
                    assert client.docmd("RCPT TO:<b@rcpt.example>") == (
                        451,
                        b"4.7.5 Cannot deliver encrypted as required, try later",
                    )
                (rejected,) = gate.wait_record("rcpt_rejected")
                assert rejected["reason"].startswith(
                    f"all 2 next hops failed: 127.0.0.1:{unreachable.port}: connect "
                ), rejected["reason"]
                assert rejected["last_hop_reason"] == "upstream does not offer STARTTLS"
                _, samples = scrape(gate)
    finally:
        clear.stop()
    assert total(samples, "smtpgate_recipients_refused_total") == 1
    refused = {"policy": "in", "reason": "upstream_no_starttls"}
    assert value(samples, "smtpgate_recipients_refused_total", **refused) == 1


def test_auth_outcomes_are_counted_by_mechanism_and_outcome(tmp_path: Path) -> None:
    """swaks authenticates through smtpgate (``auth = "relay"``) to aiosmtpd as a
    submission server: once right (PLAIN), once with a wrong password (LOGIN)."""
    pki = TestPKI(tmp_path / "upstream-pki")
    submission = AiosmtpdUpstream(starttls=pki.server_context(), users={USER: PASSWORD}).start()
    try:
        rule = {"name": "any", "recipient_encryption": "none"}
        upstream = f"127.0.0.1:{submission.port}"
        with metrics_gate(tmp_path, upstream, rule, trust=pki.ca_file, auth="relay") as gate:
            assert run_swaks_auth(gate.port(), "PLAIN", USER, PASSWORD).returncode == 0
            refused = run_swaks_auth(gate.port(), "LOGIN", USER, "wrong")
            assert refused.reply_to("AUTH") is not None
            assert [r.code for r in refused.replies][-2:] == [535, 221], refused
            gate.wait_record("auth", count=2)
            _, samples = scrape(gate)
    finally:
        submission.stop()
    assert submission.auth_attempts == [("PLAIN", USER, True), ("LOGIN", USER, False)]
    authenticated = {"policy": "in", "mechanism": "PLAIN", "outcome": "authenticated"}
    assert value(samples, "smtpgate_auth_total", **authenticated) == 1
    failed = {"policy": "in", "mechanism": "LOGIN", "outcome": "failed"}
    assert value(samples, "smtpgate_auth_total", **failed) == 1
    assert total(samples, "smtpgate_auth_total") == 2
    # No user data in any label.
    assert not [labels for _, labels in samples if any(USER in v for _, v in labels)]


# With workers, the main process asks each worker when the scrape comes.
@pytest.mark.parametrize("workers", [1, 2])
def test_open_connections_are_a_gauge_read_at_scrape_time(gate: SmtpgateProcess) -> None:
    with smtplib.SMTP("127.0.0.1", gate.port(), timeout=10) as client:
        client.ehlo("client.test")
        _, samples = scrape(gate)
        assert value(samples, "smtpgate_connections_current") == 1
        assert value(samples, "smtpgate_sessions_current") == 1
    gate.wait_record("session_end")
    _, samples = scrape(gate)
    assert value(samples, "smtpgate_connections_current") == 0
    assert value(samples, "smtpgate_sessions_current") == 0


def test_reloads_and_the_config_digest_follow_sighup(gate: SmtpgateProcess) -> None:
    _, before = scrape(gate)
    assert value(before, "smtpgate_reloads_total", result="applied") == 0
    assert value(before, "smtpgate_reloads_total", result="failed") == 0
    (digest_before,) = [
        dict(labels)["digest"] for (n, labels) in before if n == "smtpgate_config_info"
    ]
    assert re.fullmatch(r"[0-9a-f]{16}", digest_before)
    loaded_before = value(before, "smtpgate_config_last_reload_success_timestamp_seconds")
    rewrite_and_hup(gate, "broken = [")
    gate.wait_record("reload_failed")
    changed = dict(gate.config, logging={**gate.config["logging"], "addresses": False})
    rewrite_and_hup(gate, toml_writer.dumps(changed))
    gate.wait_record("reloaded")
    _, after = scrape(gate)
    assert value(after, "smtpgate_reloads_total", result="applied") == 1
    assert value(after, "smtpgate_reloads_total", result="failed") == 1
    (digest_after,) = [
        dict(labels)["digest"] for (n, labels) in after if n == "smtpgate_config_info"
    ]
    assert digest_after != digest_before
    assert value(after, "smtpgate_config_last_reload_success_timestamp_seconds") > loaded_before


def rewrite_and_hup(gate: SmtpgateProcess, text: str) -> None:
    gate.config_file.write_text(text)
    assert gate.proc is not None
    gate.proc.send_signal(signal.SIGHUP)


def test_a_scrape_without_the_token_is_refused(gate: SmtpgateProcess) -> None:
    url = metrics_url(gate)
    anonymous = httpx.get(url, timeout=10)
    assert (anonymous.status_code, anonymous.headers["www-authenticate"]) == (401, "Bearer")
    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert "smtpgate_" not in anonymous.text + wrong.text
    elsewhere = httpx.get(url.replace("/metrics", "/"), timeout=10)
    assert elsewhere.status_code == 404


def test_anonymous_scrapes_without_a_token_file(tmp_path: Path, upstream: AiosmtpdUpstream) -> None:
    with ReservedPort() as port:  # held while serve runs, as in metrics_gate
        config = {
            "metrics": {"enabled": True, "listen": f"127.0.0.1:{port.port}"},
            "policies": [{"name": "in", "upstream": f"127.0.0.1:{upstream.port}"}],
        }
        with SmtpgateProcess(tmp_path / "gate", config) as gate:
            gate.wait_record("metrics_listening")
            response = httpx.get(metrics_url(gate), timeout=10)
    assert response.status_code == 200
    assert "smtpgate_sessions_total" in response.text


# -- the dashboard ---------------------------------------------------------------------------


def exposed_names(text: str) -> set[str]:
    """Every sample name the exposition has or would have once its series exist."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "info": ("_info",),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return {n for n in names if n.startswith(("smtpgate_", "process_"))}


def dashboard_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert exprs
    return set(re.findall(r"\b(?:smtpgate|process)_[a-z_]+", " ".join(exprs)))


def test_the_grafana_dashboard_uses_exactly_the_names_serve_exposes(
    gate: SmtpgateProcess,
) -> None:
    send(gate, "for-the-dashboard")
    gate.wait_record("session_end")
    text, _ = scrape(gate)
    exposed = exposed_names(text)
    used = dashboard_names()
    assert used - exposed == set(), "the dashboard asks for metrics serve does not expose"
    families = {
        re.sub(r"_(total|bucket|count|sum|info|created)$", "", n)
        for n in exposed
        if n.startswith("smtpgate_")
    }
    shown = {re.sub(r"_(total|bucket|count|sum|info|created)$", "", n) for n in used}
    assert families - shown == set(), "metrics the dashboard does not show"


# -- the pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("the rule requires an encrypted client leg", "client_not_encrypted"),
        ("needs upstream TLS required, the transaction's leg is none", "upstream_mode_differs"),
        ("upstream connection lost earlier in this transaction", "upstream_lost"),
        ("upstream failed during MAIL/RCPT: timed out", "upstream_failed"),
        ("upstream refused RCPT: 550 5.1.1 no such user", "upstream_refused"),
        ("upstream refused MAIL: 451 4.3.0 later", "upstream_refused"),
        ("connect mx.example:25: connection refused", "upstream_unreachable"),
        ("TLS handshake failed: wrong version number", "upstream_tls_failed"),
        ("upstream does not offer STARTTLS", "upstream_no_starttls"),
        ("STARTTLS refused: 454 4.7.0 not now", "upstream_no_starttls"),
        ("certificate check: hostname mismatch", "upstream_certificate"),
        ("upstream greeting 554 go away", "upstream_unreachable"),
        ("upstream dialogue failed: timed out", "upstream_unreachable"),
        ("something new", "other"),
    ],
)
def test_refusal_reasons_of_docs_logs_md_map_to_bounded_kinds(reason: str, kind: str) -> None:
    assert refusal_kind(reason) == kind


def test_every_refusal_kind_is_documented() -> None:
    operations = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for _, kind in REFUSAL_KINDS:
        assert f"`{kind}`" in operations


def test_verify_results_and_rule_positions() -> None:
    assert [
        verify_result(v) for v in ("ok", "ok: OCSP good", "failed: expired", "not-checked")
    ] == [
        "ok",
        "ok",
        "failed",
        "not-checked",
    ]
    assert [rule_position(r) for r in ("3 (partners)", "12", "default")] == ["3", "12", "default"]


def test_refused_connections_count_what_each_rate_limited_record_stands_for(
    tmp_path: Path,
) -> None:
    """``connection_refused`` (the connection limits) is logged at most once a while,
    with ``refused``: how many it stands for; the counter adds them all."""
    config = parse_config(
        '[[policies]]\nname = "in"\nlisten = "127.0.0.1:2525"\nupstream = "10.0.0.1:25"\n',
        tmp_path,
    )
    gateway = SimpleNamespace(config=config, pools={}, open_connections=0)
    metrics = Metrics(gateway)
    log = EventLog(io.StringIO())
    log.observe(metrics.observe)
    log.emit("connection_refused", policy="in", client="192.0.2.1:4000",
             reason="max_connections", connections=100, refused=1)  # fmt: skip
    log.emit("connection_refused", policy="in", client="192.0.2.1:4001",
             reason="max_connections", connections=100, refused=7)  # fmt: skip
    labels = {"policy": "in", "limit": "max_connections"}
    refused = metrics.registry.get_sample_value("smtpgate_connections_refused_total", labels)
    assert refused == 8


# -- configuration ---------------------------------------------------------------------------


def run_smtpgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [smtpgate_binary(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_check_and_serve_name_a_token_file_they_cannot_read(tmp_path: Path) -> None:
    config = tmp_path / "smtpgate.toml"
    config.write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[metrics]\nenabled = true\nlisten = "127.0.0.1:1"\ntoken_file = "missing.token"\n'
    )
    for command in ("check", "serve"):
        proc = run_smtpgate(command, "--config", str(config))
        assert proc.returncode == 1, proc.stderr
        assert (
            f"metrics.token_file: {tmp_path / 'missing.token'}: cannot read: "
            "No such file or directory"
        ) in proc.stderr
    (tmp_path / "empty.token").write_text("\n")
    config.write_text(config.read_text().replace("missing.token", "empty.token"))
    proc = run_smtpgate("check", "--config", str(config))
    assert f"metrics.token_file: {tmp_path / 'empty.token'}: is empty" in proc.stderr


def test_serve_names_a_metrics_address_it_cannot_have(tmp_path: Path) -> None:
    with ReservedPort() as taken:
        blocker = socket.create_server(("127.0.0.1", taken.port))
    try:
        config = tmp_path / "smtpgate.toml"
        config.write_text(
            f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n'
            f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{taken.port}"\n'
        )
        proc = run_smtpgate("serve", "--config", str(config))
    finally:
        blocker.close()
    assert proc.returncode == 1
    assert f"metrics.listen: 127.0.0.1:{taken.port}: address already in use" in proc.stderr


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (
            '[[policies]]\nname = "in"\nlisten = "127.0.0.1:9425"\nupstream = "10.0.0.1:25"\n',
            "metrics.listen: 127.0.0.1:9425 collides with policies[1].listen (127.0.0.1:9425)",
        ),
        (
            '[console]\nenabled = true\nlisten = "0.0.0.0:9425"\n',
            "metrics.listen: 127.0.0.1:9425 collides with console.listen (0.0.0.0:9425)",
        ),
    ],
)
def test_the_metrics_address_may_not_collide(tmp_path: Path, extra: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[metrics]\nenabled = true\n" + extra, tmp_path)
    assert str(caught.value) == error
