"""Fixtures for the end-to-end proxy tests: gateway, upstreams and certificates.

Every server started through a factory here is stopped at teardown, also when
the test fails. Certificates are made at test time: trustme for the upstream
servers, and smtpgate's own generated CA/server certificate in a state_dir
shared by the session (RSA key generation is slow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from smtpgate.config import toml_writer
from smtpgate.reserved_port import ReservedPort
from tests.peers.gate_config import gate_config
from tests.peers.scripted_upstream import ScriptedUpstream
from tests.proxy.helpers import (
    GENERAL,
    AiosmtpdUpstream,
    GatewayHarness,
    LoopThread,
)


@pytest.fixture(scope="session")
def upstream_ca() -> trustme.CA:
    """The CA the TLS profile's ca_file trusts."""
    return trustme.CA(organization_name="smtpgate-tests upstream CA")


@pytest.fixture(scope="session")
def rogue_ca() -> trustme.CA:
    """A CA nobody trusts."""
    return trustme.CA(organization_name="smtpgate-tests rogue CA")


@pytest.fixture(scope="session")
def upstream_cert(upstream_ca: trustme.CA) -> trustme.LeafCert:
    return upstream_ca.issue_cert("127.0.0.1", "localhost", "upstream.test")


@pytest.fixture(scope="session")
def wrong_name_cert(upstream_ca: trustme.CA) -> trustme.LeafCert:
    """Trusted issuer, but for another host."""
    return upstream_ca.issue_cert("wrong.example")


@pytest.fixture(scope="session")
def rogue_cert(rogue_ca: trustme.CA) -> trustme.LeafCert:
    """Right names, unknown issuer."""
    return rogue_ca.issue_cert("127.0.0.1", "localhost", "upstream.test")


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA) -> Path:
    path = tmp_path_factory.mktemp("pki")
    upstream_ca.cert_pem.write_to_path(str(path / "upstream-ca.pem"))
    return path


@pytest.fixture(scope="session")
def ca_file(pki_dir: Path) -> Path:
    return pki_dir / "upstream-ca.pem"


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """smtpgate generates its CA and server certificate here on the first start."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


GateFactory = Callable[..., GatewayHarness]


@pytest.fixture
def make_gate(
    loop: LoopThread, tmp_path: Path, state_dir: Path, ca_file: Path
) -> Iterator[GateFactory]:
    """``make_gate(upstream_port, rules=[...], profile={...}, ...)`` -> a started gateway.

    Keyword arguments go to :func:`tests.peers.gate_config.gate_config`; the profile
    trusts the upstream CA unless ``profile`` says otherwise; command and data
    timeouts are :data:`helpers.GENERAL` unless ``general`` says otherwise.
    """
    started: list[GatewayHarness] = []

    def make(upstream_port: int, **kwargs: Any) -> GatewayHarness:
        with ReservedPort() as listen:  # held until the gateway listens on it
            config = gate_config(
                upstream_port,
                gateway={
                    "state_dir": str(kwargs.pop("state_dir", state_dir)),
                    **kwargs.pop("gateway", {}),
                },
                policy={"listen": f"127.0.0.1:{listen.port}", **kwargs.pop("policy", {})},
                profile={"ca_file": str(ca_file), **kwargs.pop("profile", {})},
                general={**GENERAL, **kwargs.pop("general", {})},
                **kwargs,
            )
            gate = GatewayHarness(toml_writer.dumps(config), tmp_path, loop)
        started.append(gate)
        return gate

    yield make
    for gate in started:
        gate.stop()


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., AiosmtpdUpstream]]:
    """``make_upstream(starttls=ctx, ...)`` -> a started aiosmtpd peer, SMTPUTF8 on."""
    started: list[AiosmtpdUpstream] = []

    def make(**kwargs: Any) -> AiosmtpdUpstream:
        upstream = AiosmtpdUpstream(**{"smtputf8": True, **kwargs}).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        upstream.stop()


@pytest.fixture
def make_scripted_upstream(loop: LoopThread) -> Iterator[Callable[..., ScriptedUpstream]]:
    """``make_scripted_upstream(dot_reply=b"452 ...", ...)`` -> a listening
    :class:`ScriptedUpstream` on the test's loop thread."""
    started: list[ScriptedUpstream] = []

    def make(**kwargs: Any) -> ScriptedUpstream:
        upstream = ScriptedUpstream(**kwargs)
        loop.run(upstream.start())
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        loop.run(upstream.stop())
