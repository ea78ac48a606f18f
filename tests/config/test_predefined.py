"""Predefined profiles and actions, read-only, and clone (SPEC.md 3 and 4)."""

from __future__ import annotations

import pytest

from smtpgate.config import PREDEFINED_ACTIONS, PREDEFINED_PROFILES, clone_name
from tests.config.config_testkit import error_paths, errors_of, load


def test_predefined_profiles() -> None:
    config = load("")
    client = config.profile("TLS-Client.Standard")
    server = config.profile("TLS-Server.Standard")
    assert client.min_version == server.min_version == "1.2"
    assert not client.tls_compliant_only
    assert server.tls_compliant_only
    assert client.read_only and server.read_only
    assert {p.name for p in PREDEFINED_PROFILES} == {"TLS-Client.Standard", "TLS-Server.Standard"}


def test_predefined_actions() -> None:
    config = load("")
    incoming = config.action("SMTP-Incoming.Standard")
    outgoing = config.action("SMTP-Outgoing.Standard")
    assert incoming.direction == "incoming"
    assert outgoing.direction == "outgoing"
    assert incoming.read_only and outgoing.read_only
    assert config.profile_for(incoming).name == "TLS-Server.Standard"
    assert config.profile_for("SMTP-Outgoing.Standard").name == "TLS-Client.Standard"
    assert len(PREDEFINED_ACTIONS) == 2


def test_predefined_objects_are_merged_but_not_user_objects() -> None:
    config = load('[[tls_profiles]]\nname = "Mine"\n')
    assert [p.name for p in config.tls_profiles] == ["Mine"]
    assert [p.name for p in config.profiles] == [
        "TLS-Client.Standard",
        "TLS-Server.Standard",
        "Mine",
    ]
    assert not config.profile("Mine").read_only


def test_predefined_objects_cannot_be_changed() -> None:
    profile = load("").profile("TLS-Server.Standard")
    with pytest.raises(ValueError, match="frozen"):
        profile.__setattr__("min_version", "1.0")


@pytest.mark.parametrize(
    ("text", "path", "suggestion"),
    [
        (
            '[[tls_profiles]]\nname = "TLS-Server.Standard"\nmin_version = "1.3"\n',
            "tls_profiles[1].name",
            "'TLS-Server.Standard.1'",
        ),
        (
            '[[proxy_actions]]\nname = "SMTP-Incoming.Standard"\n',
            "proxy_actions[1].name",
            "'SMTP-Incoming.Standard.1'",
        ),
    ],
)
def test_file_redefining_predefined_name_is_refused_with_clone_hint(
    text: str, path: str, suggestion: str
) -> None:
    [(where, reason)] = errors_of(text)
    assert where == path
    assert "read-only" in reason
    assert "clone" in reason
    assert suggestion in reason


def test_clone_hint_skips_taken_names() -> None:
    text = (
        '[[tls_profiles]]\nname = "TLS-Server.Standard.1"\n'
        '[[tls_profiles]]\nname = "TLS-Server.Standard"\n'
    )
    [(_, reason)] = errors_of(text)
    assert "'TLS-Server.Standard.2'" in reason


def test_read_only_cannot_be_set_from_the_file() -> None:
    assert error_paths('[[tls_profiles]]\nname = "T"\nread_only = true\n') == [
        "tls_profiles[1].read_only"
    ]


def test_clone_name() -> None:
    assert clone_name([], "Base") == "Base.1"
    assert clone_name({"Base.1", "Base.2"}, "Base") == "Base.3"
    assert clone_name({"Base.2"}, "Base") == "Base.1"


def test_clone_profile_is_an_editable_copy() -> None:
    config = load('[[tls_profiles]]\nname = "TLS-Server.Standard.1"\n')
    clone = config.clone_profile("TLS-Server.Standard")
    assert clone.name == "TLS-Server.Standard.2"
    assert not clone.read_only
    assert clone.tls_compliant_only  # settings are copied
    assert clone.model_copy(update={"min_version": "1.3"}).min_version == "1.3"
    # The original and the config are untouched.
    assert config.profile("TLS-Server.Standard").read_only
    assert [p.name for p in config.tls_profiles] == ["TLS-Server.Standard.1"]


def test_clone_action_keeps_settings_and_rules() -> None:
    config = load(
        '[[proxy_actions]]\nname = "A"\ndirection = "outgoing"\n'
        '[[proxy_actions.starttls.rules]]\nsender = "x.example"\nsender_encryption = "required"\n'
    )
    clone = config.clone_action("A")
    assert clone.name == "A.1"
    assert clone.direction == "outgoing"
    assert clone.rule_set.match("x.example", "y.example").label == "1"
    incoming = config.clone_action("SMTP-Incoming.Standard")
    assert incoming.name == "SMTP-Incoming.Standard.1"
    assert not incoming.read_only


def test_unknown_names_raise_key_error() -> None:
    config = load("")
    with pytest.raises(KeyError):
        config.action("nope")
    with pytest.raises(KeyError):
        config.profile("nope")
    with pytest.raises(KeyError):
        config.policy("nope")
