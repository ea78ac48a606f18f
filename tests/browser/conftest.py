"""Fixtures of the browser tests: one serve with its console and one chromium per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext

from tests.api.helpers import ConsoleUnderTest, start_console
from tests.browser.chromium import chromium
from tests.peers.upstream import AiosmtpdUpstream

#: The policy starts on the predefined incoming action, as a fresh installation would.
PREDEFINED_INCOMING = "SMTP-Incoming.Standard"


@pytest.fixture(scope="module")
def upstream() -> Iterator[AiosmtpdUpstream]:
    with AiosmtpdUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, upstream: AiosmtpdUpstream
) -> Iterator[ConsoleUnderTest]:
    running = start_console(
        tmp_path_factory.mktemp("gate"),
        upstream.port,
        policy={"proxy_action": PREDEFINED_INCOMING},
    )
    try:
        yield running
    finally:
        running.gate.stop()


@pytest.fixture(scope="module")
def browser(console: ConsoleUnderTest) -> Iterator[Browser]:
    # The certificate Chromium is presented: the generated ECDSA one (it offers ECDSA).
    with chromium(console.gate.state_dir / "tls" / "server-ecdsa.pem") as launched:
        yield launched


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh profile per test: no cookie from another test."""
    made = browser.new_context(viewport={"width": 1280, "height": 900})
    made.set_default_timeout(10_000)
    try:
        yield made
    finally:
        made.close()
