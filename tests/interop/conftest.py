"""Fixtures for the interop tests: real peers on loopback ports.

Interop tests carry ``@pytest.mark.interop``. They are never skipped when a peer
program is missing: the helpers in ``tests/peers`` fail with a message naming
the Debian package and ``make peers``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.peers.certs import LeafFiles, TestPKI
from tests.peers.haproxy import HAProxy
from tests.peers.postfix import PostfixInstance
from tests.peers.relay import Relay
from tests.peers.smtpgate_proc import SmtpgateProcess
from tests.peers.upstream import AiosmtpdUpstream


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interop: drives real peers (Postfix, swaks, openssl, HAProxy, aiosmtpd); "
        "fails, never skips, when a peer is missing",
    )


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Everything started through the factories below is stopped here, also on failure."""
    with ExitStack() as st:
        yield st


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    """Test CA for the upstream receivers and for the proxy's client-leg certificate (RSA)."""
    return TestPKI(tmp_path / "pki")


@pytest.fixture
def upstream_cert(pki: TestPKI) -> LeafFiles:
    """The receiving servers' certificate: upstream.test, localhost, 127.0.0.1."""
    return pki.issue("upstream.test", "mx.receiver.test", stem="upstream")


@pytest.fixture
def gate_cert(pki: TestPKI) -> LeafFiles:
    """A certificate for smtpgate's client leg: mx.example.test, localhost, 127.0.0.1."""
    return pki.issue("mx.example.test", stem="gate")


@pytest.fixture
def start_upstream(stack: ExitStack) -> Callable[..., AiosmtpdUpstream]:
    def start(**kw: Any) -> AiosmtpdUpstream:
        return stack.enter_context(AiosmtpdUpstream(**kw))

    return start


@pytest.fixture
def start_postfix(stack: ExitStack, tmp_path: Path) -> Callable[..., PostfixInstance]:
    def start(name: str, **kw: Any) -> PostfixInstance:
        return stack.enter_context(PostfixInstance(name, tmp_path / f"postfix-{name}", **kw))

    return start


@pytest.fixture
def start_haproxy(stack: ExitStack, tmp_path: Path) -> Callable[..., HAProxy]:
    def start(target_port: int, version: int = 1) -> HAProxy:
        return stack.enter_context(HAProxy(tmp_path / "haproxy", target_port, version=version))

    return start


@pytest.fixture
def start_gate(stack: ExitStack, tmp_path: Path) -> Callable[..., SmtpgateProcess]:
    counter = iter(range(1000))

    def start(config: dict[str, Any] | str) -> SmtpgateProcess:
        return stack.enter_context(SmtpgateProcess(tmp_path / f"gate{next(counter)}", config))

    return start


@pytest.fixture
def relay(
    start_gate: Callable[..., SmtpgateProcess],
    start_upstream: Callable[..., AiosmtpdUpstream],
    pki: TestPKI,
    upstream_cert: LeafFiles,
    gate_cert: LeafFiles,
) -> Relay:
    """Starts smtpgate in front of an aiosmtpd upstream, the certificates above on both."""
    return Relay(start_gate, start_upstream, pki, upstream_cert, gate_cert)
