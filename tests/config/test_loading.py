"""Loading and validating the TOML of SPEC.md section 5."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpgate.config import (
    Config,
    ConfigError,
    HostPort,
    config_from_data,
    default_config,
    default_state_dir,
    dump_config,
    load_config,
)
from smtpgate.config.netaddr import TRANSPARENT
from smtpgate.policy import RecipientEncryption, SenderEncryption
from tests.config.config_testkit import BASE, error_paths, errors_of, load

SAMPLE = Path(__file__).with_name("spec_sample.toml")

POLICY = """
[[policies]]
name = "p"
listen = "127.0.0.1:2525"
upstream = "127.0.0.1:2526"
"""


def test_spec_sample_loads_with_paths_relative_to_the_file() -> None:
    config = load_config(SAMPLE)
    folder = SAMPLE.resolve().parent
    assert config.gateway.hostname == "mx.example.test"
    assert config.gateway.state_dir == folder / "state"
    assert config.logging.file is None
    assert config.certificates.server_cert is None
    sni = config.certificates.sni[0]
    assert (sni.names, sni.cert, sni.key) == (
        ("mx2.example.test",),
        folder / "mx2.pem",
        folder / "mx2.key",
    )
    assert config.console.listen == HostPort("127.0.0.1", 8443)
    policy = config.policy("inbound")
    assert policy.listen == HostPort("127.0.0.1", 2525)
    assert policy.upstream == HostPort("127.0.0.1", 2526)
    action = config.action(policy.proxy_action)
    profile = config.profile_for(action)
    assert profile.name == "Strict"
    assert profile.pfs == "required"
    assert profile.ca_file == folder / "upstream-ca.pem"
    match = action.rule_set.match("partner.example", "anyone.example")
    assert match.label == "1"
    assert match.rule.sender_encryption is SenderEncryption.REQUIRED
    assert match.rule.recipient_encryption is RecipientEncryption.REQUIRED


def test_empty_file_gets_every_default() -> None:
    config = load("")
    assert config.format == 2
    assert config.gateway.state_dir == BASE / "state"
    assert config.gateway.hostname  # socket.getfqdn() or smtpgate.local
    assert config.logging.format == "json"
    assert not config.console.enabled
    assert config.policies == ()
    assert {p.name for p in config.profiles} == {"TLS-Client.Standard", "TLS-Server.Standard"}


def test_action_defaults() -> None:
    config = load('[[proxy_actions]]\nname = "A"\n')
    action = config.action("A")
    general = action.general
    assert general.max_message_size == 25_000_000
    assert general.max_recipients == 100
    assert general.max_line_length == 1000
    assert general.command_timeout == 300.0
    assert general.data_timeout == 600.0
    assert general.bare_newline == "reject"
    assert general.nul_bytes == "reject"
    assert (general.max_command_line, general.max_errors) == (2048, 20)
    assert general.max_commands == 10_000
    assert (general.command_deadline, general.data_deadline) == (300.0, 3600.0)
    assert (general.min_data_rate, general.tls_handshake_timeout) == (500, 60.0)
    assert general.received_header
    assert action.esmtp.enabled
    assert action.esmtp.keywords == (
        "8BITMIME",
        "PIPELINING",
        "SIZE",
        "SMTPUTF8",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    )
    assert action.starttls.enabled
    assert not action.starttls.require_tls_for_envelope
    assert action.starttls.rules == ()
    assert action.rule_set.match("a.example", "b.example").label == "default"


def test_tls_profile_default_follows_direction() -> None:
    config = load(
        '[[proxy_actions]]\nname = "In"\n[[proxy_actions]]\nname = "Out"\ndirection = "outgoing"\n'
    )
    assert config.action("In").starttls.tls_profile == "TLS-Server.Standard"
    assert config.action("Out").starttls.tls_profile == "TLS-Client.Standard"


def test_rule_defaults_and_sizes_and_durations() -> None:
    config = load(
        """
[[proxy_actions]]
name = "A"
[proxy_actions.general]
max_message_size = "10MiB"
command_timeout = "30s"
data_timeout = 90
[proxy_actions.esmtp]
keywords = ["pipelining", "8bitmime", "smtputf8"]
[[proxy_actions.starttls.rules]]
sender = "Bücher.example"
"""
    )
    action = config.action("A")
    assert action.general.max_message_size == 10 * 1024 * 1024
    assert action.general.command_timeout == 30.0
    assert action.general.data_timeout == 90.0
    assert action.esmtp.keywords == ("PIPELINING", "8BITMIME", "SMTPUTF8")
    (entry,) = action.starttls.rules
    assert entry.enabled
    assert entry.recipient.text == "*"
    assert entry.sender_encryption is SenderEncryption.OPTIONAL
    assert entry.recipient_encryption is RecipientEncryption.PREFERRED
    assert action.rule_set.match("xn--bcher-kva.example", "x.test").label == "1"


def test_rule_set_is_computed_once_and_ignored_by_equality() -> None:
    text = '[[proxy_actions]]\nname = "A"\n[[proxy_actions.starttls.rules]]\nsender = "a.example"\n'
    action = load(text).action("A")
    assert action.rule_set is action.rule_set
    assert action == load(text).action("A")


def test_ipv6_listen() -> None:
    config = load(POLICY.replace("127.0.0.1:2525", "[::1]:2525"))
    assert config.policy("p").listen == HostPort("::1", 2525)


# --- errors with key paths ------------------------------------------------------------


def test_config_error_str_is_one_line_per_error() -> None:
    error = ConfigError([("a.b", "bad"), ("c[0]", "worse")])
    assert str(error) == "a.b: bad\nc[0]: worse"
    assert isinstance(error, Exception) and not isinstance(error, ValueError)


def test_toml_syntax_error_has_line_and_column() -> None:
    [(where, reason)] = errors_of('[gateway]\nhostname = "x"\nstate_dir = \n')
    assert where == "line 3, column 13"
    assert reason.startswith("TOML syntax error")


def test_unknown_keys_are_reported_with_path() -> None:
    assert set(error_paths('colour = 1\n[gateway]\nhost = "x"\n')) == {"colour", "gateway.host"}


def test_wrong_types_are_reported_with_path_and_value() -> None:
    errors = errors_of(
        '[console]\nenabled = "yes"\n[[proxy_actions]]\nname = "A"\n'
        '[proxy_actions.general]\nmax_recipients = "100"\n'
    )
    assert dict(errors) == {
        "console.enabled": "Input should be a valid boolean, got 'yes'",
        "proxy_actions[1].general.max_recipients": "Input should be a valid integer, got '100'",
    }


def test_missing_required_keys() -> None:
    assert set(error_paths('[[policies]]\nname = "p"\n')) == {
        "policies[1].listen",
        "policies[1].upstream",
    }


def test_bad_pattern_names_the_rule() -> None:
    long_pattern = "a" * 201
    errors = errors_of(
        f"""
[[proxy_actions]]
name = "A"
[[proxy_actions.starttls.rules]]
sender = "ok.example"
[[proxy_actions.starttls.rules]]
sender = "*.*.example"
[[proxy_actions.starttls.rules]]
sender = "{long_pattern}"
recipient = ""
"""
    )
    assert errors[0][0] == "proxy_actions[1].starttls.rules[2].sender"
    assert (
        "proxy_actions[1].starttls.rules[3].sender",
        "pattern longer than 200 characters",
    ) in errors
    assert ("proxy_actions[1].starttls.rules[3].recipient", "pattern is empty") in errors


def test_bad_enum_values() -> None:
    assert error_paths(
        '[[proxy_actions]]\nname = "A"\n[[proxy_actions.starttls.rules]]\n'
        'recipient_encryption = "mandatory"\n'
    ) == ["proxy_actions[1].starttls.rules[1].recipient_encryption"]


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ('max_message_size = "10M"', "max_message_size"),
        ("max_message_size = 0", "max_message_size"),
        ('command_timeout = "0s"', "command_timeout"),
        ("max_line_length = 998", "max_line_length"),
        ("max_recipients = 0", "max_recipients"),
        ('bare_newline = "allow"', "bare_newline"),
        ('nul_bytes = "drop"', "nul_bytes"),
        ("max_command_line = 511", "max_command_line"),
        ("max_errors = 0", "max_errors"),
        ("max_commands = 9", "max_commands"),
        ('command_deadline = "0s"', "command_deadline"),
        ('data_deadline = "soon"', "data_deadline"),
        ('min_data_rate = "fast"', "min_data_rate"),
        ("tls_handshake_timeout = 0", "tls_handshake_timeout"),
    ],
)
def test_general_limits(line: str, path: str) -> None:
    text = f'[[proxy_actions]]\nname = "A"\n[proxy_actions.general]\n{line}\n'
    assert error_paths(text) == [f"proxy_actions[1].general.{path}"]


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ('["STARTTLS"]', "STARTTLS is set in [starttls]"),
        ('["XCLIENT"]', "unknown ESMTP keyword 'XCLIENT'"),
        ('["SIZE", "size"]', "more than once"),
        ('["8BITMIME", "binarymime"]', "BINARYMIME requires CHUNKING"),
        ('["SMTPUTF8"]', "SMTPUTF8 requires 8BITMIME"),
    ],
)
def test_esmtp_keywords_validated(keywords: str, message: str) -> None:
    [(path, reason)] = errors_of(
        f'[[proxy_actions]]\nname = "A"\n[proxy_actions.esmtp]\nkeywords = {keywords}\n'
    )
    assert path == "proxy_actions[1].esmtp.keywords"
    assert message in reason


def test_chunking_and_binarymime_may_be_advertised() -> None:
    config = load(
        '[[proxy_actions]]\nname = "A"\n[proxy_actions.esmtp]\n'
        'keywords = ["8BITMIME", "chunking", "BINARYMIME"]\n'
    )
    assert config.action("A").esmtp.keywords == ("8BITMIME", "CHUNKING", "BINARYMIME")


def test_policy_naming_missing_action() -> None:
    [(path, reason)] = errors_of(POLICY + 'proxy_action = "Nope"\n')
    assert path == "policies[1].proxy_action"
    assert "no proxy action named 'Nope'" in reason


def test_action_naming_missing_profile() -> None:
    [(path, reason)] = errors_of(
        '[[proxy_actions]]\nname = "A"\n[proxy_actions.starttls]\ntls_profile = "Nope"\n'
    )
    assert path == "proxy_actions[1].starttls.tls_profile"
    assert "no TLS profile named 'Nope'" in reason


def test_duplicate_names() -> None:
    errors = errors_of(
        POLICY
        + POLICY.replace("2525", "2527")
        + '[[tls_profiles]]\nname = "T"\n[[tls_profiles]]\nname = "T"\n'
        + '[[proxy_actions]]\nname = "A"\n[[proxy_actions]]\nname = "B"\n'
        + '[[proxy_actions]]\nname = "A"\n'
    )
    assert dict(errors) == {
        "policies[2].name": "duplicate name 'p' (also policies[1])",
        "tls_profiles[2].name": "duplicate name 'T' (also tls_profiles[1])",
        "proxy_actions[3].name": "duplicate name 'A' (also proxy_actions[1])",
    }


def test_duplicate_and_overlapping_listeners() -> None:
    second = POLICY.replace('"p"', '"q"').replace("127.0.0.1:2525", "0.0.0.0:2525")
    [(path, reason)] = errors_of(POLICY + second)
    assert path == "policies[2].listen"
    assert "policies[1].listen" in reason


def test_console_listener_collides_with_policy() -> None:
    text = POLICY + '[console]\nenabled = true\nlisten = "127.0.0.1:2525"\n'
    assert error_paths(text) == ["console.listen"]
    # A disabled console does not listen, so it cannot collide.
    load(POLICY + '[console]\nlisten = "127.0.0.1:2525"\n')


def test_upstream_pointing_at_own_listener_is_a_loop() -> None:
    assert error_paths(POLICY.replace("127.0.0.1:2526", "127.0.0.1:2525")) == [
        "policies[1].upstream"
    ]


def test_upstream_on_another_host_behind_a_wildcard_listener_is_no_loop() -> None:
    wildcard = POLICY.replace('listen = "127.0.0.1:2525"', 'listen = "0.0.0.0:25"')
    load(wildcard.replace("127.0.0.1:2526", "mail.internal.example:25"))
    load(wildcard.replace("127.0.0.1:2526", "192.0.2.10:25"))
    for own in ("127.0.0.2:25", "localhost:25", "[::1]:25", "0.0.0.0:25"):
        assert error_paths(wildcard.replace("127.0.0.1:2526", own)) == ["policies[1].upstream"]


TRANSPARENT_POLICY = POLICY.replace('"127.0.0.1:2526"', '"transparent"')


def test_transparent_upstream_loads_and_is_written_back_as_the_word() -> None:
    config = load(TRANSPARENT_POLICY.replace('listen = "127.0.0.1:2525"', 'listen = "0.0.0.0:25"'))
    policy = config.policy("p")
    assert policy.upstream == TRANSPARENT
    assert policy.tproxy is False
    # Not a host: the mail-loop check of a fixed upstream does not apply (the session's does).
    assert 'upstream = "transparent"' in dump_config(config)
    assert load(dump_config(config)).policy("p").upstream == TRANSPARENT
    assert load(TRANSPARENT_POLICY + "tproxy = true\n").policy("p").tproxy is True


def test_tproxy_needs_a_transparent_upstream() -> None:
    [(path, reason)] = errors_of(POLICY + "tproxy = true\n")
    assert path == "policies[1].tproxy"
    assert reason == (
        'tproxy needs upstream = "transparent" '
        "(a TPROXY listener takes connections meant for other hosts)"
    )


def test_transparent_upstream_behind_a_proxy_protocol_proxy_is_refused() -> None:
    [(path, reason)] = errors_of(TRANSPARENT_POLICY + "proxy_protocol = true\n")
    assert path == "policies[1].proxy_protocol"
    assert "the proxy's own" in reason


def test_only_an_upstream_may_be_transparent() -> None:
    [(path, reason)] = errors_of(TRANSPARENT_POLICY.replace('"127.0.0.1:2525"', '"transparent"'))
    assert path == "policies[1].listen"
    assert "invalid address 'transparent'" in reason


def test_certificate_and_key_go_together() -> None:
    [(path, reason)] = errors_of('[certificates]\nserver_cert = "server.pem"\n')
    assert path == "certificates.server_key"
    assert "both" in reason


def test_sni_names_are_normalized_and_unique() -> None:
    config = load(
        '[[certificates.sni]]\nnames = ["MX2.Example.test", "*.Bücher.example"]\n'
        'cert = "a.pem"\nkey = "a.key"\n'
    )
    assert config.certificates.sni[0].names == ("mx2.example.test", "*.xn--bcher-kva.example")
    assert config.certificates.sni[0].cert == BASE / "a.pem"
    dup = (
        '[[certificates.sni]]\nnames = ["a.example"]\ncert = "a.pem"\nkey = "a.key"\n'
        '[[certificates.sni]]\nnames = ["A.example"]\ncert = "b.pem"\nkey = "b.key"\n'
    )
    assert error_paths(dup) == ["certificates.sni[2].names"]


def test_pfs_none_with_tls13_only_is_contradictory() -> None:
    text = '[[tls_profiles]]\nname = "T"\nmin_version = "1.3"\npfs = "none"\n'
    assert error_paths(text) == ["tls_profiles[1].pfs"]


def test_min_version_must_be_a_string() -> None:
    [(path, reason)] = errors_of('[[tls_profiles]]\nname = "T"\nmin_version = 1.2\n')
    assert path == "tls_profiles[1].min_version"
    assert "got 1.2" in reason


def test_absolute_paths_stay_absolute() -> None:
    config = load('[[tls_profiles]]\nname = "T"\nca_file = "/opt/ca.pem"\n')
    assert config.profile("T").ca_file == Path("/opt/ca.pem")


def test_load_config_reports_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    [(path, reason)] = info.value.errors
    assert path == str(missing)
    assert reason.startswith("cannot read")


def test_config_from_data_without_base_dir_keeps_relative_paths() -> None:
    config = config_from_data({"gateway": {"state_dir": "rel"}}, None)
    assert config.gateway.state_dir == Path("rel")


def test_default_config() -> None:
    config = default_config()
    [policy] = config.policies
    assert policy.name == "default"
    assert policy.listen == HostPort("127.0.0.1", 2525)
    assert policy.upstream == HostPort("127.0.0.1", 2526)
    assert policy.proxy_action == "SMTP-Incoming.Standard"
    assert config.gateway.state_dir == default_state_dir()
    assert config.gateway.state_dir.is_absolute()


def test_default_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg/state")
    assert default_state_dir() == Path("/xdg/state/smtpgate")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/smtpgate")


def test_dump_config_round_trips() -> None:
    config = load_config(SAMPLE)
    again = load(dump_config(config))
    assert again == config
    assert isinstance(again, Config)


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("max_connections = 0", "gateway.max_connections"),
        ('max_connections_per_client = "many"', "gateway.max_connections_per_client"),
    ],
)
def test_connection_limits(line: str, path: str) -> None:
    assert error_paths(f"[gateway]\n{line}\n") == [path]


def test_connection_limit_defaults() -> None:
    gateway = load("").gateway
    assert (gateway.max_connections, gateway.max_connections_per_client) == (1000, 50)


def test_rsa_certificate_pairs_go_together_and_beside_server_cert() -> None:
    [(path, reason)] = errors_of('[certificates]\nserver_rsa_key = "rsa.key"\n')
    assert (path, reason) == (
        "certificates.server_rsa_cert",
        "server_rsa_cert and server_rsa_key must both be set or both be empty",
    )
    [(path, reason)] = errors_of(
        '[certificates]\nserver_rsa_cert = "rsa.pem"\nserver_rsa_key = "rsa.key"\n'
    )
    assert path == "certificates.server_rsa_cert"
    assert "goes beside server_cert" in reason
    [(path, reason)] = errors_of(
        '[[certificates.sni]]\nnames = ["a.example"]\ncert = "a.pem"\nkey = "a.key"\n'
        'rsa_cert = "a-rsa.pem"\n'
    )
    assert path == "certificates.sni[1].rsa_key"
    config = load(
        '[certificates]\nserver_cert = "ec.pem"\nserver_key = "ec.key"\n'
        'server_rsa_cert = "rsa.pem"\nserver_rsa_key = "rsa.key"\n'
    )
    assert config.certificates.server_rsa_cert == BASE / "rsa.pem"
    assert config.certificates.server_rsa_key == BASE / "rsa.key"
