"""The example configurations in examples/ are complete: `smtpgate check` accepts
them as they are, without a warning (only state_dir is moved to a temporary folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_commands import run

EXAMPLES = Path(__file__).parents[2] / "examples"
STATE_DIR = 'state_dir = "/var/lib/smtpgate"'


@pytest.mark.parametrize(
    "name", ["inbound.toml", "outgoing.toml", "outgoing-mx.toml", "submission.toml"]
)
def test_example_passes_check_without_warnings(name: str, tmp_path: Path) -> None:
    text = (EXAMPLES / name).read_text()
    assert text.count(STATE_DIR) == 1
    path = tmp_path / name
    path.write_text(text.replace(STATE_DIR, f'state_dir = "{tmp_path / "state"}"'))
    result = run("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert "0 warnings" in result.stdout


def test_the_docs_a_clone_has_are_the_ones_it_points_to() -> None:
    root = EXAMPLES.parent
    readme = (root / "README.md").read_text()
    reference = (root / "docs" / "configuration.md").read_text()
    for text in (readme, reference):
        assert "shared/SPEC" not in text
    for linked in ("docs/configuration.md", "examples/inbound.toml", "examples/outgoing.toml"):
        assert f"({linked})" in readme and (root / linked).is_file()
    assert "smtpgate demo --keep-state DIR" in readme
    assert "452 4.5.3" in reference.split("## Encryption rules", 1)[1]
