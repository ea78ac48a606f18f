"""Fuzzing what smtpgate reads before any SMTP (issue 11 item 5): the PROXY header
reader and the configuration loader, with the budget of :mod:`tests.fuzz.budget`.

Properties: only the documented error (``ProxyHeaderError``, ``ConfigError``) ever
comes out; a header's outcome does not depend on how its bytes were split into reads;
a header that parses names an address a connection can have; every header built from
an address gives that address back, and exactly the bytes after it; every
configuration error names what is wrong.
"""

from __future__ import annotations

import ipaddress
import struct
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtpgate.config import ConfigError, parse_config, toml_writer
from smtpgate.proxy.proxyproto import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
)
from tests.fuzz.budget import budget
from tests.fuzz.strategies import cut_lists, nasty_bytes, split

pytestmark = pytest.mark.fuzz

# --- the PROXY header reader --------------------------------------------------------------------


def read_header(pieces: list[bytes]) -> tuple[object, ...]:
    """``(client, length)`` of the header, ``("error", text)``, or ``("incomplete",)``
    after feeding ``pieces``; asserts what the reader keeps of them."""
    reader = ProxyHeaderReader()
    fed = b""
    try:
        for piece in pieces:
            fed += piece
            header = reader.feed(piece)
            if header is not None:
                assert header.received == fed
                assert_plausible(header)
                return header.client, header.length
    except ProxyHeaderError as exc:
        return "error", str(exc)
    return ("incomplete",)


def assert_plausible(header: ProxyHeader) -> None:
    """An address a TCP connection can come from."""
    if header.client is not None:
        ip, port = header.client
        ipaddress.ip_address(ip)
        assert 0 <= port <= 65535, header


v1_lines = st.builds(
    lambda family, src, dst, sport, dport, tail: (
        b"PROXY " + family + b" " + src + b" " + dst + b" " + sport + b" " + dport + tail
    ),
    st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"tcp4", b"UDP4"]),
    st.sampled_from([b"192.0.2.1", b"::1", b"2001:db8::1", b"300.1.1.1", b"", b"1.2.3.4\x00"]),
    st.sampled_from([b"198.51.100.2", b"::2", b"x"]),
    st.sampled_from(
        [b"25", b"65535", b"65536", b"99999", b"-1", b"+25", b"1_000", b"0", "٣".encode()]
    ),
    st.sampled_from([b"25", b"587"]),
    st.sampled_from([b"\r\n", b"\n", b"\r\nEHLO x\r\n", b" \r\n", b""]),
)
v2_headers = st.builds(
    lambda version_command, family, body, declared, tail: (
        V2_SIGNATURE
        + struct.pack("!BBH", version_command, family, len(body) if declared is None else declared)
        + body
        + tail
    ),
    st.sampled_from([0x20, 0x21, 0x22, 0x2F, 0x11, 0x31]),
    st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0xF1]),
    st.binary(max_size=60),
    st.one_of(st.none(), st.integers(min_value=0, max_value=0xFFFF)),
    st.sampled_from([b"", b"EHLO x\r\n", b"\x16\x03\x01"]),
)


@budget(1000)
@given(data=st.one_of(v1_lines, v2_headers, nasty_bytes, st.binary(max_size=300)), cuts=cut_lists)
@example(data=b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 25\r\n", cuts=[])
@example(data=b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n", cuts=[])
@example(data=b"PROXY TCP4 192.0.2.1 198.51.100.2 1_000 25\r\n", cuts=[])
@example(data=b"PROXY TCP4 ::1 ::2 25 25\r\n", cuts=[])
@example(data=V2_SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12), cuts=[])
def test_proxy_header_reader_takes_any_bytes(data: bytes, cuts: list[int]) -> None:
    whole = read_header([data])
    assert read_header(split(data, cuts)) == whole
    assert read_header([data[i : i + 1] for i in range(len(data))]) == whole


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 25\r\n", "port '99999' is not 0..65535"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n", "port '-1' is not 0..65535"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1_000 25\r\n", "port '1_000' is not 0..65535"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 25 +25\r\n", "port '+25' is not 0..65535"),
        (b"PROXY TCP4 ::1 ::2 25 25\r\n", "'::1' is not a TCP4 address"),
        (b"PROXY TCP6 192.0.2.1 ::2 25 25\r\n", "'192.0.2.1' is not a TCP6 address"),
        (V2_SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12), "unsupported PROXY v2 command 15"),
    ],
    ids=[
        "port-99999",
        "port-minus-1",
        "port-underscore",
        "port-plus",
        "tcp4-ipv6",
        "tcp6-ipv4",
        "v2-cmd",
    ],
)
def test_headers_the_fuzzer_found_are_refused(header: bytes, error: str) -> None:
    """Found by the fuzzer (before: a client port of 99999 or -1 was logged as the
    client's, a v2 command 15 was taken as PROXY): refused like any malformed header."""
    with pytest.raises(ProxyHeaderError) as info:
        ProxyHeaderReader().feed(header)
    assert error in str(info.value)


addresses = st.one_of(
    st.ip_addresses(v=4).map(lambda a: (a, b"TCP4", 0x11)),
    st.ip_addresses(v=6).map(lambda a: (a, b"TCP6", 0x21)),
)


@budget(600)
@given(
    address=addresses,
    port=st.integers(min_value=0, max_value=65535),
    version=st.sampled_from([1, 2]),
    after=nasty_bytes,
    cuts=cut_lists,
)
def test_a_built_header_gives_its_address_and_exactly_what_follows(
    address: tuple[Any, bytes, int], port: int, version: int, after: bytes, cuts: list[int]
) -> None:
    ip, family_v1, family_v2 = address
    if version == 1:
        header = b"PROXY %s %s %s %d 25\r\n" % (family_v1, str(ip).encode(), str(ip).encode(), port)
    else:
        body = ip.packed * 2 + struct.pack("!HH", port, 25)
        header = V2_SIGNATURE + struct.pack("!BBH", 0x21, family_v2, len(body)) + body
    reader = ProxyHeaderReader()
    got = None
    for piece in split(header + after, cuts):
        got = reader.feed(piece)
        if got is not None:
            break
    assert got is not None
    assert (got.client, got.length) == ((str(ip), port), len(header))
    assert got.after == after[: len(got.received) - len(header)]


# --- the configuration loader ---------------------------------------------------------------------

SAMPLE = Path(__file__).parent.parent / "config" / "spec_sample.toml"
BASE = Path("/etc/smtpgate")


def leaves(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of ``data`` (tables and arrays of tables walked)."""
    found: list[tuple[Any, ...]] = [path] if path else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += leaves(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += leaves(value, (*path, index))
    return found


def mutate(data: Any, path: tuple[Any, ...], how: str, value: Any) -> None:
    *parent_path, last = path
    parent = data
    for key in parent_path:
        parent = parent[key]
    if how == "delete":
        del parent[last]
    elif how == "replace":
        parent[last] = value
    elif isinstance(parent, dict):  # "add": an unknown key beside it
        parent[f"x_{last}"] = value


toml_values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
        st.floats(allow_nan=False),
        st.text(max_size=30),
        st.sampled_from(["*", "1.3", "30s", "10MB", "-1", "", "required", "none", "../x"]),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def assert_config_error(error: ConfigError) -> None:
    assert error.errors, "a ConfigError without an error"
    for path, reason in error.errors:
        assert isinstance(path, str) and reason.strip(), error.errors


@budget(300)
@given(
    choices=st.lists(
        st.tuples(
            st.integers(min_value=0), st.sampled_from(["delete", "replace", "add"]), toml_values
        ),
        min_size=1,
        max_size=4,
    )
)
def test_config_loader_reports_every_mutation_as_a_config_error(
    choices: list[tuple[int, str, Any]],
) -> None:
    """The SPEC's sample configuration with keys deleted, values replaced by anything
    TOML can hold, unknown keys added: it loads, or fails with ConfigError naming why."""
    data = tomllib.loads(SAMPLE.read_text())
    for index, how, value in choices:
        paths = leaves(data)
        if not paths:
            break
        mutate(data, paths[index % len(paths)], how, value)
    try:
        text = toml_writer.dumps(data)
    except (TypeError, ValueError):
        return  # not expressible as TOML (e.g. a key that is not a string)
    try:
        parse_config(text, BASE)
    except ConfigError as error:
        assert_config_error(error)


@pytest.mark.parametrize(
    ("direction", "shown"), [("[]", "[]"), ("{ a = 1 }", "{'a': 1}"), ("1", "1")], ids=str
)
def test_configs_the_fuzzer_found_are_config_errors(direction: str, shown: str) -> None:
    """Found by the fuzzer: a proxy action whose direction is not a string made the
    loader raise TypeError (a list is no key of the default-profile table)."""
    text = f'[[proxy_actions]]\nname = "X"\ndirection = {direction}\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, BASE)
    assert info.value.errors == [
        ("proxy_actions[1].direction", f"Input should be 'incoming' or 'outgoing', got {shown}")
    ]


@budget(300)
@given(text=st.one_of(st.text(max_size=200), nasty_bytes.map(lambda b: b.decode("latin-1"))))
@example(text="[gateway]\nhostname = 1\n")
@example(text="[[policies]]\n[[policies]]\n")
def test_config_loader_takes_any_text(text: str) -> None:
    try:
        parse_config(text, BASE)
    except ConfigError as error:
        assert_config_error(error)
