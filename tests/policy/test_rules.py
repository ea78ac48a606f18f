"""Rule evaluation (SPEC.md section 2, "Evaluation")."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smtpgate.policy import (
    DEFAULT_RULE,
    DomainPattern,
    EncryptionRule,
    RecipientEncryption,
    RuleMatch,
    RuleSet,
    SenderEncryption,
)

S = SenderEncryption
R = RecipientEncryption


def rule(
    sender: str = "*",
    recipient: str = "*",
    sender_encryption: S = S.OPTIONAL,
    recipient_encryption: R = R.PREFERRED,
    *,
    enabled: bool = True,
) -> EncryptionRule:
    return EncryptionRule(
        enabled=enabled,
        sender=DomainPattern.parse(sender),
        recipient=DomainPattern.parse(recipient),
        sender_encryption=sender_encryption,
        recipient_encryption=recipient_encryption,
    )


def test_enum_values_are_the_config_words() -> None:
    assert [s.value for s in S] == ["required", "none", "optional"]
    assert [r.value for r in R] == ["required", "none", "preferred", "allowed"]


def test_default_rule_is_optional_preferred() -> None:
    assert DEFAULT_RULE.sender_encryption is S.OPTIONAL
    assert DEFAULT_RULE.recipient_encryption is R.PREFERRED
    assert DEFAULT_RULE.enabled


def test_empty_rule_list_gives_default() -> None:
    match = RuleSet([]).match("a.example", "b.example")
    assert match == RuleMatch(None, DEFAULT_RULE)
    assert match.label == "default"


def test_label_is_the_position_with_the_rule_name() -> None:
    named = EncryptionRule(sender=DomainPattern.parse("partner.example"), name="partners")
    rules = RuleSet([rule("old.example"), named])
    assert rules.match("partner.example", "b.example").label == "2 (partners)"
    assert rules.match("old.example", "b.example").label == "1"


def test_no_matching_rule_gives_default() -> None:
    rules = RuleSet([rule("partner.example", "*", S.REQUIRED)])
    assert rules.match("other.example", "b.example").position is None


def test_first_matching_rule_wins_and_label_is_one_based() -> None:
    rules = RuleSet(
        [
            rule("partner.example", "x.example", S.NONE),
            rule("partner.example", "*", S.REQUIRED),
            rule("*", "*", S.OPTIONAL),
        ]
    )
    match = rules.match("partner.example", "b.example")
    assert match.position == 1
    assert match.label == "2"
    assert match.rule.sender_encryption is S.REQUIRED
    assert rules.match("partner.example", "x.example").label == "1"
    assert rules.match("other.example", "x.example").label == "3"


def test_both_patterns_must_match() -> None:
    rules = RuleSet([rule("a.example", "b.example", S.REQUIRED)])
    assert rules.match("a.example", "c.example").position is None
    assert rules.match("c.example", "b.example").position is None
    assert rules.match("a.example", "b.example").position == 0


def test_disabled_rules_are_skipped_but_keep_their_position() -> None:
    rules = RuleSet([rule("*", "*", S.NONE, enabled=False), rule("*", "*", S.REQUIRED)])
    match = rules.match("a.example", "b.example")
    assert match.label == "2"
    assert match.rule.sender_encryption is S.REQUIRED


def test_only_disabled_rules_give_default() -> None:
    rules = RuleSet([rule("*", "*", S.REQUIRED, enabled=False)])
    assert rules.match("a.example", "b.example").label == "default"


def test_null_sender_matches_only_star_rules() -> None:
    rules = RuleSet([rule("*.example", "*", S.NONE), rule("*", "*", S.REQUIRED)])
    assert rules.match("", "b.example").label == "2"


def test_cached_match_gives_same_answer_as_first_call() -> None:
    rules = RuleSet([rule("*.example", "*", S.REQUIRED)])
    first = rules.match("a.example", "b.test")
    assert rules.match("a.example", "b.test") is first
    assert rules.match("a.test", "b.test").label == "default"


def test_sender_rules_require_tls_ignores_recipient_pattern() -> None:
    rules = RuleSet(
        [
            rule("*", "*", S.OPTIONAL),  # catch-all first: required rule is shadowed
            rule("partner.example", "only.example", S.REQUIRED),
            rule("other.example", "*", S.REQUIRED, enabled=False),
        ]
    )
    assert rules.sender_rules_require_tls("partner.example")
    assert not rules.sender_rules_require_tls("other.example")  # disabled
    assert not rules.sender_rules_require_tls("third.example")


def test_sender_encryption_wanted_with_default_reachable() -> None:
    assert RuleSet([]).any_sender_encryption_wanted()
    # The only rule says none, but other pairs fall to the default (optional).
    assert RuleSet([rule("a.example", "*", S.NONE)]).any_sender_encryption_wanted()


def test_sender_encryption_not_wanted_when_catch_all_says_none() -> None:
    assert not RuleSet([rule("*", "*", S.NONE)]).any_sender_encryption_wanted()
    assert not RuleSet(
        [rule("a.example", "*", S.NONE), rule("*", "*", S.NONE)]
    ).any_sender_encryption_wanted()


def test_sender_encryption_wanted_counts_enabled_rules_only() -> None:
    assert not RuleSet(
        [rule("a.example", "*", S.REQUIRED, enabled=False), rule("*", "*", S.NONE)]
    ).any_sender_encryption_wanted()
    assert RuleSet(
        [rule("a.example", "*", S.REQUIRED), rule("*", "*", S.NONE)]
    ).any_sender_encryption_wanted()
    # A disabled catch-all does not hide the default.
    assert RuleSet([rule("*", "*", S.NONE, enabled=False)]).any_sender_encryption_wanted()


def test_rule_sets_compare_by_rules() -> None:
    assert RuleSet([rule("a.example")]) == RuleSet([rule("a.example")])
    assert RuleSet([rule("a.example")]) != RuleSet([rule("b.example")])


_domains = st.sampled_from(["", "a.example", "mx.a.example", "b.test", "xn--bcher-kva.example"])
_patterns = st.sampled_from(["*", "a.example", "*.a.example", "b.test", "*.example"])


@given(
    st.lists(st.tuples(_patterns, _patterns, st.sampled_from(list(S)), st.booleans()), max_size=6),
    _domains,
    _domains,
)
def test_match_equals_linear_first_match(
    spec: list[tuple[str, str, S, bool]], sender: str, recipient: str
) -> None:
    rules = [rule(s, r, enc, enabled=on) for s, r, enc, on in spec]
    expected = next(
        (
            i
            for i, x in enumerate(rules)
            if x.enabled and x.sender.matches(sender) and x.recipient.matches(recipient)
        ),
        None,
    )
    match = RuleSet(rules).match(sender, recipient)
    assert match.position == expected
    assert match.rule == (DEFAULT_RULE if expected is None else rules[expected])
