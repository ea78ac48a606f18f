"""Sizes, durations and host:port values (SPEC.md section 5, last paragraph)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpgate.config import (
    HostPort,
    format_duration,
    format_size,
    parse_duration,
    parse_host_port,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10MB", 10_000_000),
        ("512KB", 512_000),
        ("1GiB", 1024**3),
        ("25 MiB", 25 * 1024**2),
        ("1.5mb", 1_500_000),
        ("100B", 100),
        ("100", 100),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10M", "unknown size unit"),
        ("10 XB", "unknown size unit"),
        ("MB", "invalid size"),
        ("-1MB", "invalid size"),
        (-5, "negative"),
        (True, "boolean"),
        (1.5, "expected a size"),
    ],
)
def test_invalid_sizes(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5m", 90.0),
        ("250ms", 0.25),
        ("2d", 172_800.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "invalid duration"),
        ("5 minutes", "invalid duration"),
        ("0s", "greater than zero"),
        (0, "greater than zero"),
        (-3, "greater than zero"),
        (float("nan"), "greater than zero"),
        (True, "boolean"),
    ],
)
def test_invalid_durations(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(value)


def test_format_size_prefers_the_spelling_the_admin_likely_used() -> None:
    assert format_size(25_000_000) == "25MB"
    assert format_size(512_000) == "512KB"
    assert format_size(1024**3) == "1GiB"
    assert format_size(1000 + 1) == 1001


def test_format_duration() -> None:
    assert format_duration(300.0) == "5m"
    assert format_duration(3600.0) == "1h"
    assert format_duration(90.0) == "90s"
    assert format_duration(0.25) == 0.25


@given(st.integers(min_value=0, max_value=10**13))
def test_size_formatting_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(st.integers(min_value=1, max_value=10**7))
def test_duration_formatting_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(float(seconds))) == seconds


@pytest.mark.parametrize(
    ("text", "parsed", "written"),
    [
        ("127.0.0.1:2525", HostPort("127.0.0.1", 2525), "127.0.0.1:2525"),
        ("[::1]:2525", HostPort("::1", 2525), "[::1]:2525"),
        ("[0:0::1]:25", HostPort("::1", 25), "[::1]:25"),
        ("MX.Example.TEST:25", HostPort("mx.example.test", 25), "mx.example.test:25"),
        ("bücher.example:587", HostPort("xn--bcher-kva.example", 587), "xn--bcher-kva.example:587"),
    ],
)
def test_host_port(text: str, parsed: HostPort, written: str) -> None:
    assert parse_host_port(text) == parsed
    assert str(parsed) == written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("transparent", "invalid address"),  # a listener: only an upstream may say it
        ("::1:2525", "brackets"),
        ("[::1]2525", "invalid address"),
        ("[nope]:25", "not an IPv6"),
        ("host", "invalid address"),
        (":25", "invalid address"),
        ("host:0", "invalid port"),
        ("host:65536", "invalid port"),
        ("host:2x", "invalid port"),
        ("bad_host:25", "not an IPv4 address or host name"),
        ("*.example:25", "not an IPv4 address or host name"),
    ],
)
def test_invalid_host_port(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_host_port(text)


def test_wildcard_listeners_overlap_specific_ones_on_same_port() -> None:
    any_v4 = parse_host_port("0.0.0.0:25")
    assert any_v4.overlaps(parse_host_port("127.0.0.1:25"))
    assert parse_host_port("[::]:25").overlaps(parse_host_port("192.0.2.1:25"))
    assert not any_v4.overlaps(parse_host_port("127.0.0.1:26"))
    assert not parse_host_port("127.0.0.1:25").overlaps(parse_host_port("127.0.0.2:25"))
