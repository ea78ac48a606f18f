"""``smtpgate rules test --policy`` names the next hops a recipient's mail would be
tried on (issue 10 item 3): configured hosts as written, MX hosts as DNS (NSD on a
loopback port) has them now, or the reply when there is no route."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpgate.config import toml_writer
from tests.peers.dns import AuthoritativeDNS, zone

SMTPGATE = str(Path(sys.executable).with_name("smtpgate"))


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthoritativeDNS]:
    records = (
        "a MX 20 mx2.a",
        "a MX 10 mx1.a",
        "mx1.a A 192.0.2.1",
        "mx2.a A 192.0.2.2",
        "b MX 10 mx1.a",
    )
    with AuthoritativeDNS(
        tmp_path_factory.mktemp("nsd"), {"test": zone("test", *records, "null MX 0 .")}
    ) as dns:
        yield dns


def rules_test(
    tmp_path: Path,
    upstream: object,
    resolver: str,
    *args: str,
    rules: list[dict[str, str]] | None = None,
) -> str:
    config: dict[str, object] = {
        "gateway": {"state_dir": str(tmp_path / "state"), "resolvers": [resolver]},
        "policies": [{"name": "out", "listen": "127.0.0.1:2525", "upstream": upstream}],
    }
    if rules is not None:
        config["policies"][0]["proxy_action"] = "Out"  # type: ignore[index]
        config["proxy_actions"] = [
            {"name": "Out", "direction": "outgoing", "starttls": {"rules": rules}}
        ]
    path = tmp_path / "smtpgate.toml"
    path.write_text(toml_writer.dumps(config))
    command = [SMTPGATE, "rules", "test", "--config", str(path), "--policy", "out"]
    result = subprocess.run(
        [*command, "--from", "a@x.test", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_mx_hops_in_the_order_they_would_be_tried(nsd: AuthoritativeDNS, tmp_path: Path) -> None:
    report = json.loads(
        rules_test(
            tmp_path, "mx", nsd.address, "--to", "bob@a.test", "--to", "c@null.test", "--json"
        )
    )
    to_a, to_null = report["results"]
    assert to_a["next_hops"] == [
        {
            "host": "mx1.a.test",
            "port": 25,
            "address": "192.0.2.1",
            "mx_preference": 10,
            "via": "mx",
            "tls_name": "mx1.a.test",
        },
        {
            "host": "mx2.a.test",
            "port": 25,
            "address": "192.0.2.2",
            "mx_preference": 20,
            "via": "mx",
            "tls_name": "mx2.a.test",
        },
    ]
    assert (to_a["no_route"], to_null["next_hops"]) == ("", [])
    assert to_null["no_route"] == (
        "556 5.1.10 Recipient address has null MX (null.test has a null MX (RFC 7505))"
    )
    text = rules_test(tmp_path, "mx", nsd.address, "--to", "bob@a.test")
    assert "next_hops: mx1.a.test:25 [192.0.2.1] (MX 10), mx2.a.test:25 [192.0.2.2] (MX 20)" in text


def test_configured_hosts_as_written_without_dns(tmp_path: Path) -> None:
    """The resolver named does not exist: a configured list needs none."""
    report = json.loads(
        rules_test(
            tmp_path,
            ["primary.test:25", "backup.test:2525"],
            "127.0.0.1:9",
            "--to",
            "b@c.test",
            "--json",
        )
    )
    assert [(h["host"], h["port"], h["via"]) for h in report["results"][0]["next_hops"]] == [
        ("primary.test", 25, "configured"),
        ("backup.test", 2525, "configured"),
    ]


def test_the_tls_name_each_next_hop_would_be_checked_against(
    nsd: AuthoritativeDNS, tmp_path: Path
) -> None:
    """a.test is checked against its own name (``tls_name_from = "recipient_domain"``),
    b.test against each MX host name, c.test not at all (``none``: no TLS)."""
    rules = [
        {
            "recipient": "a.test",
            "recipient_encryption": "required",
            "tls_name_from": "recipient_domain",
        },
        {"recipient": "b.test", "recipient_encryption": "required"},
        {"recipient": "c.test", "recipient_encryption": "none"},
    ]
    args = ("--to", "bob@a.test", "--to", "bob@b.test", "--to", "bob@c.test")
    report = json.loads(rules_test(tmp_path, "mx", nsd.address, *args, "--json", rules=rules))
    to_a, to_b, to_c = report["results"]
    assert [h["tls_name"] for h in to_a["next_hops"]] == ["a.test", "a.test"]
    assert (to_a["tls_name_from"], to_a["checked_domain"]) == ("recipient_domain", "a.test")
    assert [h["tls_name"] for h in to_b["next_hops"]] == ["mx1.a.test"]
    assert (to_b["tls_name_from"], to_b["checked_domain"]) == ("next_hop", "")
    assert (to_c["checked_domain"], to_c["no_route"]) == (
        "",
        "550 5.1.2 Recipient domain does not exist (c.test: no such domain (NXDOMAIN))",
    )
    text = rules_test(tmp_path, "mx", nsd.address, *args, rules=rules)
    assert (
        "next_hops: mx1.a.test:25 [192.0.2.1] (MX 10) (TLS name a.test), "
        "mx2.a.test:25 [192.0.2.2] (MX 20) (TLS name a.test)"
    ) in text
    assert "checked_domain: a.test" in text
