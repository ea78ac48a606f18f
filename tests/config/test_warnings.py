"""Settings that load but do nothing: ``config_warnings`` (what ``check`` prints
and ``serve`` logs), with key paths as users count (1-based)."""

from __future__ import annotations

import pytest

from smtpgate.config.warnings import config_warnings, covers
from smtpgate.policy.patterns import DomainPattern
from tests.config.config_testkit import load

POLICY = """
[[policies]]
name = "in"
listen = "127.0.0.1:2525"
upstream = "127.0.0.1:2526"
proxy_action = "A"
implicit_tls = {implicit}
"""


def warnings_of(text: str, *, implicit: bool = False) -> dict[str, str]:
    config = load(POLICY.format(implicit=str(implicit).lower()) + text)
    return {w.key: w.reason for w in config_warnings(config)}


def test_a_plain_configuration_has_no_warnings() -> None:
    assert warnings_of('[[proxy_actions]]\nname = "A"\n') == {}
    assert config_warnings(load("")) == []  # predefined objects are never "unused"


def test_envelope_switch_without_a_sender_required_rule() -> None:
    action = """
[[proxy_actions]]
name = "A"
[proxy_actions.starttls]
require_tls_for_envelope = true
[[proxy_actions.starttls.rules]]
sender = "partner.example"
sender_encryption = "{sender}"
enabled = {enabled}
"""
    key = "proxy_actions[1].starttls.require_tls_for_envelope"
    assert "no enabled rule" in warnings_of(action.format(sender="optional", enabled="true"))[key]
    assert key in warnings_of(action.format(sender="required", enabled="false"))
    assert warnings_of(action.format(sender="required", enabled="true")) == {}


@pytest.mark.parametrize("section", ["esmtp", "starttls"])
def test_sender_required_with_esmtp_or_starttls_off(section: str) -> None:
    action = f"""
[[proxy_actions]]
name = "A"
[proxy_actions.{section}]
enabled = false
[[proxy_actions.starttls.rules]]
recipient = "corp.example"
[[proxy_actions.starttls.rules]]
sender = "partner.example"
sender_encryption = "required"
"""
    found = warnings_of(action)
    assert found == {
        "proxy_actions[1].starttls.rules[2].sender_encryption": (
            f'"required" while {section}.enabled = false: STARTTLS is never offered, '
            "so every matching sender in clear is refused"
        )
    }
    # On an implicit-TLS listener every session is encrypted: the rule works.
    assert warnings_of(action, implicit=True) == {}


def test_an_enabled_console_is_no_warning() -> None:
    """The console listens since issue 8: ``enabled = true`` has its effect."""
    assert warnings_of('[console]\nenabled = true\n[[proxy_actions]]\nname = "A"\n') == {}


def test_unused_profiles_and_actions() -> None:
    text = """
[[tls_profiles]]
name = "Used"
[[tls_profiles]]
name = "Spare"
[[proxy_actions]]
name = "A"
[proxy_actions.starttls]
tls_profile = "Used"
[[proxy_actions]]
name = "Old"
"""
    assert warnings_of(text) == {
        "proxy_actions[2]": "proxy action 'Old' is used by no policy",
        "tls_profiles[2]": "TLS profile 'Spare' is used by no proxy action",
    }


@pytest.mark.parametrize(
    ("earlier", "later", "covered"),
    [
        ("*", "*", True),
        ("*", "x.example", True),
        ("*", "*.example", True),
        ("x.example", "*", False),
        ("*.x.example", "*", False),
        ("*.a.example", "x.a.example", True),
        ("*.a.example", "*.x.a.example", True),
        ("*.a.example", "*.a.example", True),
        ("*.a.example", "a.example", False),
        ("*.a.example", "xa.example", False),
        ("*.x.a.example", "*.a.example", False),
        ("a.example", "a.example", True),
        ("A.Example", "a.example.", True),
        ("a.example", "x.a.example", False),
        ("a.example", "*.a.example", False),
        ("bücher.example", "xn--bcher-kva.example", True),
    ],
)
def test_pattern_coverage(earlier: str, later: str, covered: bool) -> None:
    assert covers(DomainPattern.parse(earlier), DomainPattern.parse(later)) is covered


def rules(*lines: str) -> str:
    text = '[[proxy_actions]]\nname = "A"\n'
    for line in lines:
        text += "[[proxy_actions.starttls.rules]]\n" + line.replace("; ", "\n") + "\n"
    return text


def test_a_rule_covered_by_an_earlier_enabled_rule_never_matches() -> None:
    found = warnings_of(
        rules(
            'sender = "*.a.example"; recipient_encryption = "required"',
            'sender = "x.a.example"; recipient = "b.example"',
            'recipient = "b.example"',
            'sender = "a.example"; recipient = "b.example"',
            'recipient = "c.example"; enabled = false',
            'sender = "*"',
            'sender = "z.example"',
        )
    )
    assert found == {
        "proxy_actions[1].starttls.rules[2]": (
            "never matches: rules[1] (*.a.example -> *) comes first and matches "
            "every sender and recipient this rule would"
        ),
        "proxy_actions[1].starttls.rules[4]": (
            "never matches: rules[3] (* -> b.example) comes first and matches "
            "every sender and recipient this rule would"
        ),
        "proxy_actions[1].starttls.rules[7]": (
            "never matches: rules[6] (* -> *) comes first and matches "
            "every sender and recipient this rule would"
        ),
    }


def test_both_patterns_must_be_covered_and_disabled_rules_shadow_nothing() -> None:
    assert (
        warnings_of(
            rules(
                'sender = "a.example"',
                'recipient = "b.example"',
                'sender = "*"; enabled = false',
                'sender = "c.example"; recipient = "d.example"',
            )
        )
        == {}
    )
