"""Configuration: schema, loading and validation, predefined objects, format 1.

Knows nothing of sockets; the policy engine gets its rules from
:attr:`ProxyAction.rule_set`.
"""

from smtpgate.config.errors import ConfigError, format_loc
from smtpgate.config.format1 import export_format1, format1_losses, migrate_format1
from smtpgate.config.loader import (
    config_from_data,
    default_config,
    default_config_data,
    default_state_dir,
    dump_config,
    load_config,
    parse_config,
)
from smtpgate.config.names import clone_name
from smtpgate.config.netaddr import HostPort, parse_host_port
from smtpgate.config.predefined import PREDEFINED_ACTIONS, PREDEFINED_PROFILES
from smtpgate.config.schema import (
    KNOWN_ESMTP_KEYWORDS,
    Certificates,
    Config,
    ConsoleSettings,
    ESMTPSettings,
    Gateway,
    GeneralSettings,
    LoggingSettings,
    Policy,
    ProxyAction,
    RuleEntry,
    SNICertificate,
    StartTLSSettings,
    TLSProfile,
)
from smtpgate.config.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "KNOWN_ESMTP_KEYWORDS",
    "PREDEFINED_ACTIONS",
    "PREDEFINED_PROFILES",
    "Certificates",
    "Config",
    "ConfigError",
    "ConsoleSettings",
    "ESMTPSettings",
    "Gateway",
    "GeneralSettings",
    "HostPort",
    "LoggingSettings",
    "Policy",
    "ProxyAction",
    "RuleEntry",
    "SNICertificate",
    "StartTLSSettings",
    "TLSProfile",
    "clone_name",
    "config_from_data",
    "default_config",
    "default_config_data",
    "default_state_dir",
    "dump_config",
    "export_format1",
    "format1_losses",
    "format_duration",
    "format_loc",
    "format_size",
    "load_config",
    "migrate_format1",
    "parse_config",
    "parse_duration",
    "parse_host_port",
    "parse_size",
]
