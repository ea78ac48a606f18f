"""The Traffic and Coverage routes against a real ``smtpgate serve`` (docs/api.md,
"Traffic and coverage"): a real SMTP session through the proxy shows up on all
three, and a suggested rule posted through the rules route changes what the
proxy does."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.api.helpers import ConsoleUnderTest, start_console
from tests.peers import wait_until
from tests.peers.gate_config import ACTION, HOSTNAME, rule
from tests.peers.upstream import AiosmtpdUpstream

MESSAGE = b"From: alice@partner.example\r\nSubject: traffic\r\n\r\nhello\r\n"
MUST_STARTTLS = (530, b"5.7.0 Must issue a STARTTLS command first")


@pytest.fixture
def tls_upstream() -> Iterator[AiosmtpdUpstream]:
    """An upstream that offers STARTTLS (the profile does not validate it: not-checked)."""
    leaf = trustme.CA().issue_cert("127.0.0.1", "upstream.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    with AiosmtpdUpstream(starttls=context) as server:
        yield server


@pytest.fixture
def traffic_console(tmp_path: Path, tls_upstream: AiosmtpdUpstream) -> Iterator[ConsoleUnderTest]:
    running = start_console(tmp_path / "gate", tls_upstream.port, rules=[rule()])
    try:
        yield running
    finally:
        running.gate.stop()


def send(console: ConsoleUnderTest, sender: str, recipient: str, *, tls: bool = True) -> None:
    with smtplib.SMTP("127.0.0.1", console.gate.port(), timeout=20) as client:
        client.ehlo("client.test")
        if tls:
            client.starttls(context=console.tls())
            client.ehlo("client.test")
        client.sendmail(sender, [recipient], MESSAGE)


def get(client: httpx.Client, path: str, **params: Any) -> Any:
    reply = client.get(path, params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def traffic_rows(client: httpx.Client, count: int, **params: Any) -> list[dict[str, Any]]:
    """The rows once ``count`` are there (the writer batches every half second)."""
    return wait_until(
        lambda: (
            rows
            if len(rows := get(client, "/api/v1/traffic", **params)["records"]) >= count
            else None
        ),
        lambda: f"{count} rows: {get(client, '/api/v1/traffic', **params)}",
        timeout=10,
    )


def test_a_session_through_the_proxy_shows_on_traffic_chart_and_coverage_and_a_suggestion_applies(
    traffic_console: ConsoleUnderTest, tls_upstream: AiosmtpdUpstream
) -> None:
    console = traffic_console
    send(console, "alice@partner.example", "bob@example.com")
    (record,) = console.gate.transactions(outcome="delivered")
    with console.admin() as client:
        (row,) = traffic_rows(client, 1)
        assert row["instance"] == HOSTNAME
        # The row is the record, less its event name and the addresses.
        for key, value in record.items():
            if key not in ("event", "sender", "recipients"):
                assert row[key] == value, key
        assert row["client_tls"] == "TLSv1.3" and row["upstream_tls"] == "TLSv1.3"
        assert row["upstream"] == f"127.0.0.1:{tls_upstream.port}"
        assert row["upstream_verify"] == record["upstream_verify"]

        assert len(get(client, "/api/v1/traffic", domain="Example.COM.")["records"]) == 1
        assert len(get(client, "/api/v1/traffic", domain="partner.example")["records"]) == 1
        assert get(client, "/api/v1/traffic", domain="nobody.example")["records"] == []
        assert get(client, "/api/v1/traffic", outcome="tempfail")["records"] == []
        assert (
            get(client, "/api/v1/traffic", since="2020-01-01T00:00:00Z", until="1h")["records"]
            == []
        )

        chart = get(client, "/api/v1/traffic/tls-versions", since="1h", bucket="10m")
        assert chart["bucket"] == 600 and len(chart["buckets"]) in (6, 7)
        assert sum(b["client"].get("TLSv1.3", 0) for b in chart["buckets"]) == 1
        assert sum(b["upstream"].get("TLSv1.3", 0) for b in chart["buckets"]) == 1

        coverage = client.get("/api/v1/coverage")
        assert coverage.status_code == 200, coverage.text
        shown = coverage.json()
        assert shown["etag"] == client.get(f"/api/v1/actions/{ACTION}/rules").headers["ETag"].strip(
            '"'
        )
        assert [(s["domain"], s["client"]["share"]) for s in shown["senders"]] == [
            ("partner.example", 1.0)
        ]
        suggested = {(s["leg"], s["domain"]): s for s in shown["suggestions"]}
        assert set(suggested) == {("sender", "partner.example"), ("recipient", "example.com")}
        sender_rule = suggested[("sender", "partner.example")]
        assert sender_rule["decided_by"] == "1" and sender_rule["action"] == ACTION

        # The console's button: the rule body as given, through the rules route.
        created = client.post(
            f"/api/v1/actions/{sender_rule['action']}/rules",
            json=sender_rule["rule"],
            headers={"If-Match": f'"{shown["etag"]}"'},
        )
        assert created.status_code == 201, created.text
        assert created.json()["applied"] is True
        assert created.json()["position"] == 1
        assert created.json()["sender_encryption"] == "required"

        after = get(client, "/api/v1/coverage")
        assert ("sender", "partner.example") not in {
            (s["leg"], s["domain"]) for s in after["suggestions"]
        }
        # A suggestion computed on the old file is refused, not placed at a shifted position.
        stale = client.post(
            f"/api/v1/actions/{ACTION}/rules",
            json=suggested[("recipient", "example.com")]["rule"],
            headers={"If-Match": f'"{shown["etag"]}"'},
        )
        assert stale.status_code == 409

    # The proxy now refuses partner.example in clear, and still relays it encrypted.
    with smtplib.SMTP("127.0.0.1", console.gate.port(), timeout=20) as clear:
        clear.ehlo("client.test")
        assert clear.mail("alice@partner.example")[0] == 250
        assert clear.rcpt("bob@example.com") == MUST_STARTTLS
    send(console, "alice@partner.example", "bob@example.com")
    assert len(tls_upstream.messages) == 2


def test_auditors_read_traffic_and_nobody_else(
    traffic_console: ConsoleUnderTest,
) -> None:
    console = traffic_console
    console.add_user("carol", "carol-password", role="auditor")
    send(console, "alice@partner.example", "bob@example.com")
    with console.client(("carol", "carol-password")) as auditor:
        assert len(traffic_rows(auditor, 1)) == 1
        assert get(auditor, "/api/v1/coverage")["senders"][0]["domain"] == "partner.example"
        assert get(auditor, "/api/v1/traffic/tls-versions")["bucket"] == 3600
    with console.client() as nobody:
        for path in ("/api/v1/traffic", "/api/v1/traffic/tls-versions", "/api/v1/coverage"):
            assert nobody.get(path).status_code == 401


BAD_PARAMETERS = [
    (
        "/api/v1/traffic",
        {"since": "2026-11-29T15:00:00"},
        "query.since",
        "'2026-11-29T15:00:00' has no offset: add Z (UTC) or +01:00",
    ),
    (
        "/api/v1/traffic",
        {"outcome": "lost"},
        "query.outcome",
        "'lost' is not one of delivered, tempfail, rejected, aborted",
    ),
    (
        "/api/v1/traffic",
        {"before": "yesterday"},
        "query.before",
        "'yesterday' is not a next_before value of an earlier page",
    ),
    (
        "/api/v1/traffic",
        {"since": "1h", "until": "2h"},
        "query.since",
        "since must be before until",
    ),
    (
        "/api/v1/traffic/tls-versions",
        {"since": "2d", "bucket": "1m"},
        "query.bucket",
        "2881 buckets; at most 1000: choose a larger bucket or a shorter period",
    ),
    (
        "/api/v1/coverage",
        {"until": "soon"},
        "query.until",
        "invalid duration 'soon'; write e.g. 30s, 5m, 1h or 1h30m; or an RFC 3339 time "
        "such as 2026-11-29T15:00:00Z",
    ),
]


def test_bad_parameters_are_422_naming_the_parameter(console: ConsoleUnderTest) -> None:
    with console.admin() as client:
        for path, params, key, reason in BAD_PARAMETERS:
            reply = client.get(path, params=params)
            assert reply.status_code == 422, reply.text
            assert reply.json()["errors"] == [{"key": key, "reason": reason}], params
