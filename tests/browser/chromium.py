"""Debian's chromium, headless, driven by Playwright; the accessibility check (axe-core
4.12.1 as shipped in the pinned ``axe-playwright-python``) and screenshots.

No browser is downloaded (never ``playwright install``): ``scripts/install-peers.sh``
installs Debian's ``chromium`` and checks that it starts headless. The browser
trusts exactly the console's certificate (its public key pinned with
``--ignore-certificate-errors-spki-list``), so pages load over real HTTPS and
``Secure`` cookies behave as they do for an administrator.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
#: Screenshots of every page the tests visit (git-ignored).
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console-screenshots"
#: Impacts that fail a page (axe-core's scale: minor, moderate, serious, critical).
FAILING_IMPACTS = ("serious", "critical")


def spki_pin(certificate: Path) -> str:
    """What --ignore-certificate-errors-spki-list takes: base64 SHA-256 of the public key."""
    cert = x509.load_pem_x509_certificates(certificate.read_bytes())[0]
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextmanager
def chromium(trusted_certificate: Path) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make peers` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[f"--ignore-certificate-errors-spki-list={spki_pin(trusted_certificate)}"],
        )
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """What a page reports that a test must not ignore: script errors and CSP refusals."""

    def __init__(self, page: Page) -> None:
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # A 401 before login and the API's 4xx answers the pages show are expected;
        # anything about the Content-Security-Policy is not.
        expected = "Failed to load resource" in message.text
        if "Content Security Policy" in message.text or (message.type == "error" and not expected):
            self.problems.append(f"console {message.type}: {message.text}")


def check_page(page: Page, name: str) -> None:
    """Keep a screenshot of the page and fail on serious accessibility violations."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    results = Axe().run(page)
    failing = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in results.response["violations"]
        if v["impact"] in FAILING_IMPACTS
    ]
    assert not failing, f"{name}: " + "; ".join(failing)
