"""Fixtures of the API tests: a serve with the console in front of the shared upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import ConsoleUnderTest, start_console
from tests.peers.upstream import AiosmtpdUpstream


@pytest.fixture
def console(tmp_path: Path, upstream: AiosmtpdUpstream) -> Iterator[ConsoleUnderTest]:
    running = start_console(tmp_path / "gate", upstream.port)
    try:
        yield running
    finally:
        running.gate.stop()
