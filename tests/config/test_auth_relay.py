"""``auth = "relay"`` and ``auth_mechanisms``: what loads, and the combinations that
cannot work, refused by key path with the reason (docs/configuration.md)."""

from __future__ import annotations

import pytest
from config_testkit import errors_of, load

from smtpgate.config import dump_config


def config(policy: str, action: str = "") -> str:
    text = f"""
[[policies]]
name = "p"
listen = "127.0.0.1:2525"
{policy}
"""
    if action:
        text += f"""proxy_action = "A"

[[proxy_actions]]
name = "A"
{action}
"""
    return text


def test_off_by_default_relay_loads_with_mechanisms_upper_case() -> None:
    plain = load(config('upstream = "mail.internal:587"')).policies[0]
    assert (plain.auth, plain.auth_mechanisms) == ("off", ("PLAIN", "LOGIN"))
    relay = load(
        config('upstream = "mail.internal:587"\nauth = "relay"\nauth_mechanisms = ["plain"]')
    )
    assert (relay.policies[0].auth, relay.policies[0].auth_mechanisms) == ("relay", ("PLAIN",))
    assert 'auth = "relay"' in dump_config(relay)


@pytest.mark.parametrize(
    ("policy", "action", "path", "reason"),
    [
        (
            'upstream = "mx"\nauth = "relay"',
            "",
            "policies[1].auth",
            'AUTH is relayed to the configured submission server; upstream = "mx" chooses a '
            "server per recipient or connection, after AUTH",
        ),
        (
            'upstream = "transparent"\nauth = "relay"',
            "",
            "policies[1].auth",
            'AUTH is relayed to the configured submission server; upstream = "transparent" '
            "chooses a server per recipient or connection, after AUTH",
        ),
        (
            'upstream = "mail.internal:587"\nauth = "relay"',
            "[proxy_actions.starttls]\nenabled = false",
            "policies[1].auth",
            "AUTH is offered over TLS only, and this listener has neither implicit_tls nor "
            "STARTTLS (proxy action 'A')",
        ),
        (
            'upstream = "mail.internal:587"\nauth = "relay"',
            "[proxy_actions.esmtp]\nenabled = false",
            "policies[1].auth",
            "AUTH needs EHLO, and proxy action 'A' has esmtp disabled",
        ),
        (
            'upstream = "mail.internal:587"\nauth_mechanisms = ["PLAIN"]',
            "",
            "policies[1].auth_mechanisms",
            'only used with auth = "relay"',
        ),
        (
            'upstream = "mail.internal:587"\nauth = "relay"\nauth_mechanisms = ["PL AIN"]',
            "",
            "policies[1].auth_mechanisms",
            "'PL AIN' is not a SASL mechanism name (RFC 4422: 1-20 of A-Z 0-9 - _)",
        ),
        (
            'upstream = "mail.internal:587"\nauth = "relay"\nauth_mechanisms = []',
            "",
            "policies[1].auth_mechanisms",
            "name at least one SASL mechanism",
        ),
        (
            'upstream = "mail.internal:587"\nauth = "yes"',
            "",
            "policies[1].auth",
            "Input should be 'off' or 'relay', got 'yes'",
        ),
    ],
)
def test_combinations_that_cannot_work_are_refused(
    policy: str, action: str, path: str, reason: str
) -> None:
    [(where, why)] = errors_of(config(policy, action))
    assert where == path
    assert why == reason


def test_implicit_tls_listener_without_starttls_may_relay_auth() -> None:
    loaded = load(
        config(
            'upstream = "mail.internal:587"\nauth = "relay"\nimplicit_tls = true',
            "[proxy_actions.starttls]\nenabled = false",
        )
    )
    assert loaded.policies[0].auth == "relay"
