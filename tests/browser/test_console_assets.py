"""The console's pages load nothing from outside the product and need no inline
script or style (the Content-Security-Policy forbids both): checked on the files
shipped in the package, so a new page cannot slip a CDN link in."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from smtpgate.console.browser import WEB_DIR

ROOT = Path(__file__).resolve().parents[2]
ASSETS = sorted(p for p in WEB_DIR.rglob("*") if p.is_file())
#: XML namespace names are identifiers, never fetched.
NAMESPACES = {"http://www.w3.org/2000/svg"}
#: An absolute or protocol-relative address: ``https://cdn.example/x.js``, ``//cdn.example``.
URL = re.compile(r"(?:[a-z][a-z0-9+.-]*:)?//[a-z0-9-]+(?:\.[a-z0-9-]+)+[^\s'\"`)]*", re.I)
REFERENCES = re.compile(
    r"""(?:src|href)="([^"#][^"]*)"|import[^'"]*from\s+'([^']+)'|import\('([^']+)'\)"""
)


def test_the_pages_are_there() -> None:
    names = {p.relative_to(WEB_DIR).as_posix() for p in ASSETS}
    assert {"index.html", "login.html", "app.js", "style.css"} <= names
    assert any(name.startswith("pages/") for name in names)


def test_no_asset_names_an_address_outside_the_product() -> None:
    found = []
    for asset in ASSETS:
        text = asset.read_text(encoding="utf-8")
        found += [f"{asset.name}: {m[0]}" for m in URL.finditer(text) if m[0] not in NAMESPACES]
    assert found == []


def test_every_reference_is_a_file_of_the_console() -> None:
    for asset in ASSETS:
        if asset.suffix not in (".html", ".js"):
            continue
        for groups in REFERENCES.findall(asset.read_text(encoding="utf-8")):
            reference = next(g for g in groups if g)
            if reference.startswith("/"):
                continue  # the API, asked for at run time
            assert (asset.parent / reference).resolve().is_file(), f"{asset.name}: {reference}"


def test_no_inline_script_or_style() -> None:
    for asset in ASSETS:
        text = asset.read_text(encoding="utf-8")
        if asset.suffix == ".html":
            assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", text) == [], asset.name
            assert "<style" not in text, asset.name
            assert re.findall(r"\s(?:style|on[a-z]+)=", text) == [], asset.name
        if asset.suffix == ".js":
            for forbidden in ("innerHTML", "outerHTML", "eval(", "new Function", "'style'"):
                assert forbidden not in text, f"{asset.name}: {forbidden}"


def test_every_asset_is_package_data() -> None:
    """The console ships in the wheel: every file matches a package-data pattern."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["smtpgate.console"]
    console = WEB_DIR.parent
    for asset in ASSETS:
        name = asset.relative_to(console).as_posix()
        assert any(fnmatch.fnmatchcase(name, p) for p in patterns), name
