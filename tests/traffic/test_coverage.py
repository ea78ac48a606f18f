"""Coverage per domain and the suggested rules (docs/api.md, "Suggestions"), from rows
in a real SQLite store and a configuration parsed as serve parses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtpgate.config import toml_writer
from smtpgate.config.loader import parse_config
from smtpgate.config.schema import Config
from smtpgate.traffic import queries
from smtpgate.traffic.coverage import coverage
from smtpgate.traffic.database import TrafficDatabase
from smtpgate.traffic.queries import Period
from tests.peers.gate_config import ACTION, gate_config, rule
from tests.traffic.traffic_testkit import T0, insert, transaction


def config_with(tmp_path: Path, rules: list[dict[str, Any]], **starttls: Any) -> Config:
    data = gate_config(2525, rules=rules, starttls=starttls or None)
    data["policies"][0]["listen"] = "127.0.0.1:2600"
    data["gateway"]["state_dir"] = str(tmp_path / "state")
    return parse_config(toml_writer.dumps(data), tmp_path)


def covered(tmp_path: Path, config: Config, *records: dict[str, Any]) -> dict[str, Any]:
    database = TrafficDatabase(path=tmp_path / "traffic.sqlite3")
    insert(database, *records)
    with database.connect() as connection:
        senders = queries.sender_groups(connection, Period())
        recipients = queries.recipient_groups(connection, Period())
    return coverage(senders, recipients, config)


def suggestions(answer: dict[str, Any], leg: str) -> list[dict[str, Any]]:
    return [s for s in answer["suggestions"] if s["leg"] == leg]


def test_figures_per_sender_and_recipient_domain(tmp_path: Path) -> None:
    config = config_with(tmp_path, [])
    answer = covered(
        tmp_path,
        config,
        transaction(time_ms=T0, recipient_domains=["example.com", "other.example"]),
        transaction(
            time_ms=T0 + 1,
            client_tls="none",
            upstream_tls="TLSv1.2",
            upstream_verify="failed: certificate has expired",
        ),
        transaction(time_ms=T0 + 2, upstream_tls="none", outcome="tempfail"),
    )
    assert answer["senders"] == [
        {
            "domain": "partner.example",
            "messages": 3,
            "delivered": 2,
            "client": {"encrypted": 2, "share": 0.6667, "versions": {"TLSv1.3": 2, "none": 1}},
            "upstream": {
                "encrypted": 2,
                "share": 0.6667,
                "versions": {"TLSv1.2": 1, "TLSv1.3": 1, "none": 1},
                "verified": 1,
                "verify_failed": 1,
            },
        }
    ]
    assert [(r["domain"], r["messages"]) for r in answer["recipients"]] == [
        ("example.com", 3),
        ("other.example", 1),
    ]
    assert answer["recipients"][1]["upstream"] == {
        "encrypted": 1,
        "share": 1.0,
        "versions": {"TLSv1.3": 1},
        "verified": 1,
        "verify_failed": 0,
    }


def test_a_recipient_domain_always_sent_encrypted_gets_a_rule_before_the_deciding_one(
    tmp_path: Path,
) -> None:
    config = config_with(
        tmp_path,
        [
            rule(sender="never.example", recipient_encryption="none"),
            rule(sender="*.partner.example", sender_encryption="none"),
            rule(sender="*", recipient="*", recipient_encryption="preferred"),
        ],
    )
    answer = covered(
        tmp_path,
        config,
        transaction(time_ms=T0, sender_domain="a.partner.example"),
        transaction(time_ms=T0 + 1, sender_domain="a.partner.example"),
        # decided by rule 3:
        transaction(time_ms=T0 + 2, sender_domain="other.example", recipient_domains=["b.example"]),
    )
    by_domain = {s["domain"]: s for s in suggestions(answer, "recipient")}
    example = by_domain["example.com"]
    assert example == {
        "leg": "recipient",
        "domain": "example.com",
        "action": ACTION,
        "action_read_only": False,
        "policies": ["p"],
        "messages": 2,
        "decided_by": "2",
        "reason": (
            "2 messages to example.com in the period, all sent on encrypted, "
            "no certificate check failed"
        ),
        "rule": {
            "sender": "*.partner.example",
            "recipient": "example.com",
            "sender_encryption": "none",
            "recipient_encryption": "required",
            "comment": (
                "suggested by coverage: 2 messages to example.com, all sent on encrypted, "
                "no certificate check failed"
            ),
            "position": 2,
        },
    }
    assert by_domain["b.example"]["decided_by"] == "3"
    assert by_domain["b.example"]["rule"]["sender"] == "*"
    assert by_domain["b.example"]["rule"]["position"] == 3


@pytest.mark.parametrize(
    ("spoiler", "why"),
    [
        ({"upstream_tls": "none"}, "one message left in clear"),
        ({"upstream_verify": "failed: hostname mismatch"}, "one certificate check failed"),
    ],
)
def test_no_recipient_suggestion_when_one_message_would_have_been_refused(
    tmp_path: Path, spoiler: dict[str, Any], why: str
) -> None:
    config = config_with(tmp_path, [])
    answer = covered(
        tmp_path,
        config,
        transaction(time_ms=T0),
        transaction(time_ms=T0 + 1, **spoiler),
    )
    assert [s["domain"] for s in suggestions(answer, "recipient")] == [], why


def test_no_suggestion_when_the_deciding_rule_already_requires_the_leg(tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        [
            rule(
                recipient="example.com",
                recipient_encryption="required",
                sender_encryption="required",
            )
        ],
    )
    answer = covered(tmp_path, config, transaction(time_ms=T0))
    assert answer["suggestions"] == []


def test_mail_decided_by_two_rules_gets_one_suggestion_per_rule(tmp_path: Path) -> None:
    config = config_with(tmp_path, [rule(sender="a.example", recipient_encryption="allowed")])
    answer = covered(
        tmp_path,
        config,
        transaction(time_ms=T0, sender_domain="a.example"),
        transaction(time_ms=T0 + 1, sender_domain="b.example"),
    )
    to_example = [s for s in suggestions(answer, "recipient") if s["domain"] == "example.com"]
    assert [(s["decided_by"], s["rule"].get("position")) for s in to_example] == [
        ("default", None),
        ("1", 1),
    ]
    assert to_example[0]["rule"]["sender"] == "*"
    assert to_example[0]["rule"]["sender_encryption"] == "optional"
    assert to_example[1]["rule"]["sender"] == "a.example"


def test_a_sender_domain_that_always_arrived_encrypted_gets_a_sender_rule(tmp_path: Path) -> None:
    config = config_with(tmp_path, [rule(recipient="example.com", recipient_encryption="none")])
    answer = covered(
        tmp_path,
        config,
        transaction(time_ms=T0),
        transaction(time_ms=T0 + 1, sender_domain="clear.example", client_tls="none"),
        transaction(time_ms=T0 + 2, sender_domain="", recipient_domains=["example.com"]),
    )
    sender = suggestions(answer, "sender")
    assert [s["domain"] for s in sender] == ["partner.example"]
    assert sender[0]["rule"] == {
        "sender": "partner.example",
        "recipient": "example.com",
        "sender_encryption": "required",
        "recipient_encryption": "none",
        "comment": "suggested by coverage: 1 message from partner.example, all arrived encrypted",
        "position": 1,
    }


def test_a_sender_already_refused_in_clear_by_the_envelope_switch_gets_no_rule(
    tmp_path: Path,
) -> None:
    config = config_with(
        tmp_path,
        [
            rule(recipient="other.example"),
            rule(
                sender="partner.example", recipient="nobody.example", sender_encryption="required"
            ),
        ],
        require_tls_for_envelope=True,
    )
    answer = covered(tmp_path, config, transaction(time_ms=T0))
    assert suggestions(answer, "sender") == []


def test_records_of_a_policy_that_no_longer_exists_suggest_nothing(tmp_path: Path) -> None:
    config = config_with(tmp_path, [])
    answer = covered(tmp_path, config, transaction(time_ms=T0, policy="gone"))
    assert answer["suggestions"] == []
    assert answer["senders"][0]["messages"] == 1


def test_address_literals_and_odd_domains_get_no_rule(tmp_path: Path) -> None:
    config = config_with(tmp_path, [])
    answer = covered(
        tmp_path,
        config,
        transaction(time_ms=T0, sender_domain="[192.0.2.1]", recipient_domains=["[192.0.2.2]"]),
        transaction(time_ms=T0 + 1, sender_domain="under_score.example"),
    )
    assert [s["domain"] for s in answer["suggestions"]] == ["example.com"]


def test_a_failed_check_does_not_count_when_the_profile_checks_no_certificates(
    tmp_path: Path,
) -> None:
    data = gate_config(2525, profile={"validate_certificates": False})
    data["policies"][0]["listen"] = "127.0.0.1:2600"
    data["gateway"]["state_dir"] = str(tmp_path / "state")
    config = parse_config(toml_writer.dumps(data), tmp_path)
    answer = covered(
        tmp_path, config, transaction(time_ms=T0, upstream_verify="failed: unknown CA")
    )
    (suggestion,) = suggestions(answer, "recipient")
    assert suggestion["reason"] == (
        "1 message to example.com in the period, all sent on encrypted "
        "(the TLS profile does not check certificates)"
    )
