"""Format 1 migration and export (SPEC.md 4, last paragraph)."""

from __future__ import annotations

from pathlib import Path

from smtpgate.config import export_format1, format1_losses, load_config
from tests.config.config_testkit import BASE, error_paths, errors_of, load

SAMPLE = Path(__file__).with_name("spec_sample.toml")

FORMAT1 = """
format = 1

[[policies]]
name = "inbound"
listen = "127.0.0.1:2525"
upstream = "127.0.0.1:2526"
proxy_action = "Legacy"

[[proxy_actions]]
name = "Legacy"
[proxy_actions.starttls]
min_version = "1.3"
pfs = "required"
validate_certificates = false
ca_file = "legacy-ca.pem"
require_tls_for_envelope = true
[[proxy_actions.starttls.rules]]
sender = "partner.example"
sender_encryption = "required"

[[proxy_actions]]
name = "Plain"
direction = "outgoing"
"""


def test_format1_tls_settings_become_a_generated_profile() -> None:
    config = load(FORMAT1)
    assert config.format == 1
    legacy = config.action("Legacy")
    assert legacy.starttls.tls_profile == "Legacy.TLS"
    assert legacy.starttls.require_tls_for_envelope
    profile = config.profile_for(legacy)
    assert (profile.min_version, profile.pfs, profile.validate_certificates) == (
        "1.3",
        "required",
        False,
    )
    assert profile.ca_file == BASE / "legacy-ca.pem"
    assert not profile.read_only
    assert legacy.rule_set.match("partner.example", "x.example").label == "1"


def test_format1_action_without_tls_keys_uses_direction_default() -> None:
    config = load(FORMAT1)
    assert config.action("Plain").starttls.tls_profile == "TLS-Client.Standard"
    assert [p.name for p in config.tls_profiles] == ["Legacy.TLS"]


def test_format1_errors_point_into_the_original_file() -> None:
    text = FORMAT1.replace('min_version = "1.3"', 'min_version = "1.4"')
    assert error_paths(text) == ["proxy_actions[1].starttls.min_version"]


def test_format1_has_no_tls_profiles() -> None:
    assert error_paths(FORMAT1 + '[[tls_profiles]]\nname = "X"\n') == ["tls_profiles"]
    text = FORMAT1.replace("require_tls_for_envelope = true", 'tls_profile = "X"')
    assert error_paths(text) == ["proxy_actions[1].starttls.tls_profile"]


def test_format2_with_format1_keys_explains_the_difference() -> None:
    text = FORMAT1.replace("format = 1", "format = 2")
    errors = errors_of(text)
    assert {p for p, _ in errors} == {
        f"proxy_actions[1].starttls.{key}"
        for key in ("min_version", "pfs", "validate_certificates", "ca_file")
    }
    assert all("format = 1" in reason for _, reason in errors)


def test_export_round_trips_a_format1_config() -> None:
    config = load(FORMAT1)
    exported = export_format1(config)
    assert "tls_profile" not in exported
    assert "[[tls_profiles]]" not in exported
    assert format1_losses(config) == []
    assert load(exported) == config


def test_export_of_format2_config_keeps_user_objects_when_representable() -> None:
    text = """
[[tls_profiles]]
name = "A.TLS"
min_version = "1.3"
pfs = "required"

[[proxy_actions]]
name = "A"
[proxy_actions.starttls]
tls_profile = "A.TLS"
[[proxy_actions.starttls.rules]]
recipient = "*.example"
recipient_encryption = "required"

[[proxy_actions]]
name = "B"
"""
    config = load(text)
    again = load(export_format1(config))
    assert again.format == 1
    assert again.tls_profiles == config.tls_profiles
    assert again.proxy_actions == config.proxy_actions
    assert again.policies == config.policies
    assert again.gateway == config.gateway


def test_export_lists_what_format1_cannot_express() -> None:
    config = load_config(SAMPLE)  # action "Inbound.Custom" uses profile "Strict"
    text = """
[[tls_profiles]]
name = "Unused"
[[tls_profiles]]
name = "A.TLS"
ocsp = true
[[proxy_actions]]
name = "A"
starttls.tls_profile = "A.TLS"
[[proxy_actions]]
name = "B"
direction = "outgoing"
starttls.tls_profile = "TLS-Server.Standard"
"""
    losses = format1_losses(load(text))
    assert any("'Unused' is used by no action" in loss for loss in losses)
    assert any("sets ocsp = true" in loss for loss in losses)
    assert any("tls_compliant_only" in loss and "TLS-Server.Standard" in loss for loss in losses)
    sample_losses = format1_losses(config)
    assert len(sample_losses) == 1
    assert "reads back as 'Inbound.Custom.TLS'" in sample_losses[0]
    exported = export_format1(config)
    assert "# Not representable in format 1:" in exported
    # Lossy but still loadable, with the same TLS settings inline.
    again = load(exported)
    assert again.profile_for("Inbound.Custom").pfs == "required"
    assert again.profile_for("Inbound.Custom").ca_file == config.profile("Strict").ca_file


def test_a_rule_checking_the_recipient_domain_is_a_loss_in_format1() -> None:
    """Format 1 checked the next hop's name: tls_name_from = "recipient_domain" is named
    as lost and not written; the default is not a loss."""
    text = """
[[proxy_actions]]
name = "A"
[[proxy_actions.starttls.rules]]
recipient = "a.example"
tls_name_from = "recipient_domain"
[[proxy_actions.starttls.rules]]
recipient = "b.example"
"""
    config = load(text)
    assert format1_losses(config) == [
        "proxy_actions[1].starttls.rules[1].tls_name_from: "
        "tls_name_from = 'recipient_domain' is not part of format 1"
    ]
    exported = export_format1(config)
    body = [line for line in exported.splitlines() if not line.startswith("#")]
    assert not any("tls_name_from" in line for line in body)
    assert [r.tls_name_from for r in load(exported).action("A").starttls.rules] == [
        "next_hop",
        "next_hop",
    ]


def test_export_escapes_strings() -> None:
    config = load('[gateway]\nhostname = "mx.example"\n[logging]\nfile = "dir \\"x\\"\\\\log"\n')
    assert load(export_format1(config)).logging.file == config.logging.file
