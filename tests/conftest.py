"""Fixtures shared by every area of the suite (an area's conftest may narrow them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.peers.upstream import AiosmtpdUpstream


@pytest.fixture
def upstream() -> Iterator[AiosmtpdUpstream]:
    """A receiving server on loopback that accepts every message, in clear."""
    with AiosmtpdUpstream() as server:
        yield server
