"""Certificates made at test time (trustme, files under the session's tmp dir);
nothing is ever written to the repository."""

from __future__ import annotations

import pytest

from tests.peers.certs import TestPKI


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("pki"))
