"""Shared helpers for the config tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpgate.config import Config, ConfigError, parse_config

BASE = Path("/etc/smtpgate")


def load(text: str) -> Config:
    return parse_config(text, BASE)


def errors_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, BASE)
    return info.value.errors


def error_paths(text: str) -> list[str]:
    return [path for path, _ in errors_of(text)]
