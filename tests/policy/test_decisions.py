"""The leg decisions, one test per clause of SPEC.md 2.1 and 2.2."""

from __future__ import annotations

import pytest

from smtpgate.policy import (
    REPLY_MUST_STARTTLS,
    REPLY_OTHER_TRANSACTION,
    REPLY_UPSTREAM_TLS_UNAVAILABLE,
    DomainPattern,
    EncryptionRule,
    RecipientEncryption,
    RuleSet,
    SenderEncryption,
    UpstreamTLS,
    advertise_starttls,
    reject_mail_from_in_clear,
    reject_rcpt_in_clear,
    upstream_tls,
)

S = SenderEncryption
R = RecipientEncryption


def rule(
    sender: str, recipient: str, sender_encryption: S, *, enabled: bool = True
) -> EncryptionRule:
    return EncryptionRule(
        enabled=enabled,
        sender=DomainPattern.parse(sender),
        recipient=DomainPattern.parse(recipient),
        sender_encryption=sender_encryption,
    )


PARTNER_REQUIRED = RuleSet([rule("partner.example", "secret.example", S.REQUIRED)])


def advertise(
    *,
    implicit_tls_listener: bool = False,
    session_encrypted: bool = False,
    esmtp_enabled: bool = True,
    starttls_enabled: bool = True,
    rules: RuleSet | None = None,
) -> bool:
    return advertise_starttls(
        implicit_tls_listener=implicit_tls_listener,
        session_encrypted=session_encrypted,
        esmtp_enabled=esmtp_enabled,
        starttls_enabled=starttls_enabled,
        rules=RuleSet([]) if rules is None else rules,
    )


# --- 2.1 first bullet: when STARTTLS is advertised --------------------------------


def test_starttls_advertised_on_plain_listener_with_default_rules() -> None:
    assert advertise()


def test_starttls_not_advertised_on_implicit_tls_listener() -> None:
    assert not advertise(implicit_tls_listener=True)


def test_starttls_not_advertised_once_session_is_encrypted() -> None:
    assert not advertise(session_encrypted=True)


def test_starttls_not_advertised_without_esmtp() -> None:
    # SPEC 4: with ESMTP disabled, STARTTLS is off whatever its own setting says.
    assert not advertise(esmtp_enabled=False, starttls_enabled=True)


def test_starttls_not_advertised_when_disabled() -> None:
    assert not advertise(starttls_enabled=False)


def test_starttls_not_advertised_when_every_pair_has_sender_none() -> None:
    assert not advertise(rules=RuleSet([rule("*", "*", S.NONE)]))


def test_starttls_advertised_when_one_rule_wants_sender_encryption() -> None:
    rules = RuleSet([rule("partner.example", "*", S.REQUIRED), rule("*", "*", S.NONE)])
    assert advertise(rules=rules)


# --- 2.1 optional / none ---------------------------------------------------------------


@pytest.mark.parametrize("encryption", [S.OPTIONAL, S.NONE])
@pytest.mark.parametrize("client_encrypted", [False, True])
@pytest.mark.parametrize("switch", [False, True])
def test_optional_and_none_accept_both_clear_and_encrypted(
    encryption: S, client_encrypted: bool, switch: bool
) -> None:
    rules = RuleSet([rule("*", "*", encryption)])
    match = rules.match("a.example", "b.example")
    assert not reject_mail_from_in_clear(
        rules=rules,
        sender_domain="a.example",
        client_encrypted=client_encrypted,
        require_tls_for_envelope=switch,
    )
    assert not reject_rcpt_in_clear(
        match=match, client_encrypted=client_encrypted, require_tls_for_envelope=switch
    )


# --- 2.1 required, switch off: 530 per RCPT ------------------------------------------


def test_switch_off_clear_mail_from_is_accepted() -> None:
    assert not reject_mail_from_in_clear(
        rules=PARTNER_REQUIRED,
        sender_domain="partner.example",
        client_encrypted=False,
        require_tls_for_envelope=False,
    )


def test_switch_off_rcpt_matching_required_rule_is_rejected_in_clear() -> None:
    match = PARTNER_REQUIRED.match("partner.example", "secret.example")
    assert reject_rcpt_in_clear(match=match, client_encrypted=False, require_tls_for_envelope=False)


def test_switch_off_other_recipients_of_same_transaction_unaffected() -> None:
    match = PARTNER_REQUIRED.match("partner.example", "public.example")
    assert match.label == "default"
    assert not reject_rcpt_in_clear(
        match=match, client_encrypted=False, require_tls_for_envelope=False
    )


def test_switch_off_required_rcpt_accepted_when_encrypted() -> None:
    match = PARTNER_REQUIRED.match("partner.example", "secret.example")
    assert not reject_rcpt_in_clear(
        match=match, client_encrypted=True, require_tls_for_envelope=False
    )


# --- 2.1 required, switch on: 530 at MAIL ------------------------------------------------


def test_switch_on_clear_mail_from_rejected_whatever_the_recipient_pattern() -> None:
    # The rule only covers secret.example, but MAIL has no recipient yet.
    assert reject_mail_from_in_clear(
        rules=PARTNER_REQUIRED,
        sender_domain="partner.example",
        client_encrypted=False,
        require_tls_for_envelope=True,
    )


def test_switch_on_mail_from_other_sender_accepted() -> None:
    assert not reject_mail_from_in_clear(
        rules=PARTNER_REQUIRED,
        sender_domain="other.example",
        client_encrypted=False,
        require_tls_for_envelope=True,
    )


def test_switch_on_encrypted_mail_from_accepted() -> None:
    assert not reject_mail_from_in_clear(
        rules=PARTNER_REQUIRED,
        sender_domain="partner.example",
        client_encrypted=True,
        require_tls_for_envelope=True,
    )


def test_switch_on_disabled_required_rule_does_not_reject() -> None:
    rules = RuleSet([rule("partner.example", "*", S.REQUIRED, enabled=False)])
    assert not reject_mail_from_in_clear(
        rules=rules,
        sender_domain="partner.example",
        client_encrypted=False,
        require_tls_for_envelope=True,
    )


def test_switch_on_rcpt_check_is_a_second_line_of_defence() -> None:
    match = PARTNER_REQUIRED.match("partner.example", "secret.example")
    assert reject_rcpt_in_clear(match=match, client_encrypted=False, require_tls_for_envelope=True)


# --- 2.1 last bullet: implicit TLS counts as encrypted -----------------------------------


def test_implicit_tls_session_counts_as_encrypted() -> None:
    # The proxy passes client_encrypted=True for implicit-TLS listeners.
    match = PARTNER_REQUIRED.match("partner.example", "secret.example")
    for switch in (False, True):
        assert not reject_rcpt_in_clear(
            match=match, client_encrypted=True, require_tls_for_envelope=switch
        )
    assert not advertise(implicit_tls_listener=True, session_encrypted=True)


def test_must_starttls_reply_text() -> None:
    assert REPLY_MUST_STARTTLS == (530, "5.7.0 Must issue a STARTTLS command first")


# --- 2.2 upstream leg ---------------------------------------------------------------------


@pytest.mark.parametrize("client_encrypted", [False, True])
def test_recipient_required_means_upstream_required(client_encrypted: bool) -> None:
    assert upstream_tls(R.REQUIRED, client_encrypted=client_encrypted) is UpstreamTLS.REQUIRED


@pytest.mark.parametrize("client_encrypted", [False, True])
def test_recipient_preferred_means_opportunistic(client_encrypted: bool) -> None:
    result = upstream_tls(R.PREFERRED, client_encrypted=client_encrypted)
    assert result is UpstreamTLS.OPPORTUNISTIC


@pytest.mark.parametrize("client_encrypted", [False, True])
def test_recipient_none_means_no_upstream_tls(client_encrypted: bool) -> None:
    assert upstream_tls(R.NONE, client_encrypted=client_encrypted) is UpstreamTLS.NONE


def test_recipient_allowed_mirrors_encrypted_client_as_required() -> None:
    # Encrypted mail is never silently downgraded.
    assert upstream_tls(R.ALLOWED, client_encrypted=True) is UpstreamTLS.REQUIRED


def test_recipient_allowed_mirrors_clear_client_as_none() -> None:
    assert upstream_tls(R.ALLOWED, client_encrypted=False) is UpstreamTLS.NONE


def test_upstream_failure_reply_is_temporary_4_7_5() -> None:
    code, text = REPLY_UPSTREAM_TLS_UNAVAILABLE
    assert code == 451
    assert text.startswith("4.7.5 ")


def test_other_transaction_reply_is_452_4_5_3() -> None:
    code, text = REPLY_OTHER_TRANSACTION
    assert code == 452
    assert text.startswith("4.5.3 ")


def test_upstream_modes_have_stable_values() -> None:
    assert [m.value for m in UpstreamTLS] == ["required", "opportunistic", "none"]
