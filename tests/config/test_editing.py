"""The editing model (issue 8 item 1): edits keep the file's comments and
order, are validated by the file's schema, and a refused edit changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpgate.config.editing import (
    ACTIONS,
    PROFILES,
    ConfigDocument,
    Conflict,
    InUse,
    Invalid,
    NotFound,
    ReadOnly,
    profile_summary,
)
from smtpgate.config.errors import ConfigError
from smtpgate.config.loader import parse_config

HAND_WRITTEN = """\
# Mail relay for corp.example -- edited by hand, keep this header.
[gateway]
hostname = "mx.corp.example"   # banner name
state_dir = "state"

[[policies]]
name = "inbound"                # the MX
listen = "127.0.0.1:2525"
upstream = "127.0.0.1:2526"
proxy_action = "Inbound"

[[tls_profiles]]
name = "Strict"
pfs = "required"                # partners asked for it

[[proxy_actions]]
name = "Inbound"
[proxy_actions.starttls]
tls_profile = "Strict"

# Partners first: they insist on TLS.
[[proxy_actions.starttls.rules]]
name = "partners"
sender = "partner.example"      # the big one
sender_encryption = "required"

[[proxy_actions.starttls.rules]]
recipient = "*.legacy.example"
recipient_encryption = "none"
"""


def doc(text: str = HAND_WRITTEN) -> ConfigDocument:
    return ConfigDocument.from_text(text, Path("/srv/smtpgate"))


def test_an_added_rule_keeps_every_comment_and_the_key_order() -> None:
    document = doc()
    assert document.add_rule("Inbound", {"name": "block", "sender": "spam.example"}, 1) == 1
    text = document.text()
    for line in HAND_WRITTEN.splitlines():
        assert line in text
    assert text.index('name = "block"') < text.index('name = "partners"')
    assert text.index("# Partners first") < text.index('name = "block"')
    # what the file now says is what the model says
    reloaded = parse_config(text, Path("/srv/smtpgate"))
    assert [r.name for r in reloaded.action("Inbound").starttls.rules] == [
        "block",
        "partners",
        None,
    ]


def test_set_move_disable_remove_by_position_or_name() -> None:
    document = doc()
    document.set_rule("Inbound", 2, {"name": "legacy", "comment": "until 2027"})
    document.move_rule("Inbound", "legacy", 1)
    document.disable_rule("Inbound", "partners")
    rules = document.rules("Inbound")
    assert [(r["position"], r["name"], r["enabled"]) for r in rules] == [
        (1, "legacy", True),
        (2, "partners", False),
    ]
    assert rules[0]["comment"] == "until 2027"
    document.enable_rule("Inbound", 2)
    assert "enabled" not in document.text()  # back to the default, not `enabled = true`
    document.remove_rule("Inbound", "legacy")
    assert [r["name"] for r in document.rules("Inbound")] == ["partners"]
    assert "# the big one" in document.text()
    assert document.changes[0] == "Inbound: set rule 2: name='legacy', comment='until 2027'"


def test_an_invalid_edit_names_the_key_path_and_changes_nothing() -> None:
    document = doc()
    before = document.text()
    with pytest.raises(Invalid) as caught:
        document.add_rule("Inbound", {"sender": "bad..example"})
    assert caught.value.errors == [
        (
            "proxy_actions[1].starttls.rules[3].sender",
            "pattern 'bad..example' is not a valid domain: Empty Label",
        )
    ]
    with pytest.raises(Invalid) as caught:
        document.set_rule("Inbound", 2, {"recipient_encryption": "maybe"})
    assert caught.value.errors[0][0] == "proxy_actions[1].starttls.rules[2].recipient_encryption"
    with pytest.raises(Invalid) as caught:
        document.set_value("gateway.keep_versions", 0)
    assert caught.value.errors == [
        ("gateway.keep_versions", "Input should be greater than or equal to 1")
    ]
    assert document.text() == before
    assert document.changes == []


def test_rule_names_are_unique_within_an_action_and_not_numbers() -> None:
    document = doc()
    with pytest.raises(Invalid) as caught:
        document.add_rule("Inbound", {"name": "partners"})
    assert caught.value.errors == [
        (
            "proxy_actions[1].starttls.rules[3].name",
            "duplicate rule name 'partners' (also proxy_actions[1].starttls.rules[1])",
        )
    ]
    with pytest.raises(Invalid) as caught:
        document.add_rule("Inbound", {"name": "7"})
    assert "cannot be a number" in caught.value.errors[0][1]


def test_wrong_references_are_not_found_and_list_what_there_is() -> None:
    document = doc()
    with pytest.raises(NotFound, match="no rule at position 5; 'Inbound' has 2 rules"):
        document.remove_rule("Inbound", 5)
    with pytest.raises(NotFound, match="named rules: partners"):
        document.remove_rule("Inbound", "nope")
    with pytest.raises(NotFound, match=r"there are: SMTP-Incoming\.Standard"):
        document.add_rule("Nope", {})


def test_predefined_objects_are_read_only() -> None:
    document = doc()
    with pytest.raises(ReadOnly, match="predefined and read-only; clone it"):
        document.add_rule("SMTP-Incoming.Standard", {"sender": "a.example"})
    with pytest.raises(ReadOnly):
        document.rename(PROFILES, "TLS-Server.Standard", "Mine")
    with pytest.raises(ReadOnly):
        document.delete(ACTIONS, "SMTP-Outgoing.Standard")


def test_clone_follows_spec3_names_and_copies_comments_of_user_objects() -> None:
    document = doc()
    assert document.clone(PROFILES, "TLS-Server.Standard") == "TLS-Server.Standard.1"
    assert document.clone(PROFILES, "TLS-Server.Standard") == "TLS-Server.Standard.2"
    copy = document.config.profile("TLS-Server.Standard.1")
    assert copy.tls_compliant_only and not copy.read_only
    assert document.clone(ACTIONS, "Inbound") == "Inbound.1"
    assert document.config.action("Inbound.1").starttls.rules == (
        document.config.action("Inbound").starttls.rules
    )
    with pytest.raises(Conflict, match="'Strict' already exists"):
        document.clone(PROFILES, "TLS-Client.Standard", "Strict")


def test_rename_moves_every_reference_and_delete_names_the_users() -> None:
    document = doc()
    with pytest.raises(InUse) as caught:
        document.delete(PROFILES, "Strict")
    assert caught.value.errors == [
        ("tls_profiles[1]", "'Strict' is used by proxy_actions[1].starttls.tls_profile ('Inbound')")
    ]
    with pytest.raises(InUse, match=r"used by policies\[1\].proxy_action \('inbound'\)"):
        document.delete(ACTIONS, "Inbound")
    assert document.rename(ACTIONS, "Inbound", "MX") == ["policies[1].proxy_action"]
    assert document.rename(PROFILES, "Strict", "Partners") == [
        "proxy_actions[1].starttls.tls_profile"
    ]
    assert document.config.policy("inbound").proxy_action == "MX"
    assert document.config.action("MX").starttls.tls_profile == "Partners"
    document.clone(PROFILES, "Partners", "Spare")
    document.delete(PROFILES, "Spare")
    assert [p.name for p in document.config.tls_profiles] == ["Partners"]
    with pytest.raises(Conflict, match="use `smtpgate profiles rename`"):
        document.set_value("tls_profiles[1].name", "X")


def test_sections_and_policies_are_edited_by_key_path() -> None:
    document = doc()
    document.set_value("logging.format", "text")
    document.set_value("policies[1].upstream", "127.0.0.1:2600")
    document.set_value("proxy_actions[1].general.max_recipients", 20)
    assert document.config.logging.format == "text"
    assert str(document.config.policy("inbound").upstream) == "127.0.0.1:2600"
    document.unset_value("logging.format")
    assert document.config.logging.format == "json"
    assert (
        document.add_policy(
            {"name": "submission", "listen": "127.0.0.1:2587", "upstream": "127.0.0.1:2526"}
        )
        == 2
    )
    document.remove_policy("inbound")
    assert [p.name for p in document.config.policies] == ["submission"]
    with pytest.raises(NotFound):
        document.unset_value("policies[3].name")


def test_format1_files_edit_rules_but_not_profiles() -> None:
    text = """format = 1
[[proxy_actions]]
name = "Old"
[proxy_actions.starttls]
min_version = "1.2"   # inline TLS, format 1
"""
    document = doc(text)
    document.add_rule("Old", {"sender": "a.example", "sender_encryption": "required"})
    assert "# inline TLS, format 1" in document.text()
    with pytest.raises(Invalid, match="format 1 file has no"):
        document.clone(PROFILES, "TLS-Client.Standard")


def test_a_file_that_does_not_load_is_invalid_with_its_key_path() -> None:
    with pytest.raises(Invalid) as caught:
        doc(HAND_WRITTEN.replace('proxy_action = "Inbound"', 'proxy_action = "Gone"'))
    assert caught.value.errors == [("policies[1].proxy_action", "no proxy action named 'Gone'")]
    with pytest.raises(ConfigError):
        parse_config("x = [", Path("/"))


def test_profile_summary_is_what_the_console_shows() -> None:
    summary = profile_summary(doc().config.profile("Strict"))
    assert summary["versions"] == "TLS 1.2 and later"
    assert summary["pfs"] == "required (forward-secret key exchange only)"
    assert summary["validation"] == "on (chain and host name checked)"
    assert summary["ca"] == "system trust store"
    assert summary["ocsp"] == "off"


def test_rules_are_added_to_dotted_and_inline_starttls_tables() -> None:
    text = """\
[[proxy_actions]]
name = "Dotted"
starttls.tls_profile = "TLS-Server.Standard"
[[proxy_actions]]
name = "Inline"
starttls = { tls_profile = "TLS-Server.Standard" }
"""
    document = doc(text)
    document.add_rule("Dotted", {"sender": "a.example"})
    document.add_rule("Inline", {"sender": "b.example"})
    # what is written reads back as what was validated
    reread = parse_config(document.text(), Path("/srv/smtpgate"))
    assert [r.sender.text for r in reread.action("Dotted").starttls.rules] == ["a.example"]
    assert [r.sender.text for r in reread.action("Inline").starttls.rules] == ["b.example"]
    assert reread.action("Dotted").starttls.tls_profile == "TLS-Server.Standard"
    assert 'rules = [{sender = "b.example"}]' in document.text()


def test_replacing_the_rules_keeps_the_tables_and_comments_of_unchanged_rules() -> None:
    """The console saves its rules table whole: rules it did not change keep their
    comments; new ones are [[...]] tables; errors name the rule's new position."""
    document = doc()
    document.replace_rules(
        "Inbound",
        [
            {"recipient": "*.legacy.example", "recipient_encryption": "none"},
            {
                "recipient": "new.example",
                "sender": "*",
                "sender_encryption": "required",
                "recipient_encryption": "preferred",
                "enabled": False,
                "comment": None,
            },
            {
                "name": "partners",
                "enabled": True,
                "sender": "partner.example",
                "recipient": "*",
                "sender_encryption": "required",
            },
        ],
    )
    text = document.text()
    assert 'sender = "partner.example"      # the big one' in text
    assert text.count("[[proxy_actions.starttls.rules]]") == 3
    # The new rule is written with the keys that say something, nothing else.
    new_rule = text.split('recipient = "new.example"')[0].rsplit("[[", 1)[1]
    assert new_rule.strip() == "proxy_actions.starttls.rules]]"
    assert 'recipient = "new.example"\nsender_encryption = "required"\nenabled = false' in text
    rules = document.rules("Inbound")
    assert [r["recipient"] for r in rules] == ["*.legacy.example", "new.example", "*"]
    assert rules[1]["enabled"] is False
    assert document.changes == ["Inbound: set the rules (3 rules)"]
    with pytest.raises(Invalid) as refused:
        document.replace_rules("Inbound", [{"recipient": "ok.example"}, {"recipient": "a" * 201}])
    assert refused.value.errors[0][0] == "proxy_actions[1].starttls.rules[2].recipient"
    assert document.text() == text
    with pytest.raises(Invalid) as unknown:
        document.replace_rules("Inbound", [{"recipients": "x.example"}])
    assert unknown.value.errors[0][0] == "proxy_actions[1].starttls.rules[1].recipients"
