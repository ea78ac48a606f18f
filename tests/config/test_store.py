"""Saving (issue 8 item 3): atomic, versioned, never over another writer's edit."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from smtpgate.config.editing import ConfigDocument, Conflict, Invalid, content_etag
from smtpgate.config.store import ON_DISK_USER, ConfigStore

TEXT = """\
# hand-written
[gateway]
state_dir = "state"
keep_versions = 3

[[proxy_actions]]
name = "Inbound"
"""


@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    path = tmp_path / "smtpgate.toml"
    path.write_text(TEXT)
    path.chmod(0o640)
    return ConfigStore(path)


def add(store: ConfigStore, sender: str, user: str = "cli:alice") -> int:
    document = store.open()
    document.add_rule("Inbound", {"sender": sender})
    return store.save(document, user=user).version.id


def test_first_save_keeps_the_hand_written_file_as_version_1(store: ConfigStore) -> None:
    assert add(store, "a.example") == 2
    first, second = store.versions()
    assert (first.id, first.user, first.etag) == (1, ON_DISK_USER, content_etag(TEXT))
    assert store.version_text(1) == TEXT
    assert second.user == "cli:alice"
    assert second.summary == "Inbound: added rule 1 (a.example -> *)"
    assert second.based_on == first.etag
    assert second.etag == store.current_etag()
    meta = json.loads((store.versions_dir / "2.json").read_text())
    assert meta["saved_at"].endswith("Z")
    # the file keeps its mode; the versions are private
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o640
    assert stat.S_IMODE((store.versions_dir / "2.toml").stat().st_mode) == 0o600


def test_a_save_based_on_an_older_text_is_refused(store: ConfigStore) -> None:
    first = store.open()
    second = store.open()
    first.add_rule("Inbound", {"sender": "first.example"})
    store.save(first, user="api:bob")
    second.add_rule("Inbound", {"sender": "second.example"})
    with pytest.raises(Conflict, match="changed since it was read"):
        store.save(second, user="cli:alice")
    assert "first.example" in store.path.read_text()
    assert "second.example" not in store.path.read_text()


def test_a_hand_edit_is_a_conflict_and_is_kept_as_a_version(store: ConfigStore) -> None:
    add(store, "a.example")
    document = store.open()
    store.path.write_text(store.path.read_text() + "# edited in vi\n")
    document.add_rule("Inbound", {"sender": "b.example"})
    with pytest.raises(Conflict):
        store.save(document, user="cli:alice")
    add(store, "c.example")
    users = [v.user for v in store.versions()]
    assert users[-2:] == [ON_DISK_USER, "cli:alice"]
    assert "# edited in vi" in store.path.read_text()


def test_retention_keeps_the_newest_keep_versions(store: ConfigStore) -> None:
    for n in range(5):
        add(store, f"d{n}.example")
    assert [v.id for v in store.versions()] == [4, 5, 6]
    assert sorted(p.name for p in store.versions_dir.glob("*.toml")) == [
        "4.toml",
        "5.toml",
        "6.toml",
    ]


def test_diff_and_rollback_is_a_new_version(store: ConfigStore) -> None:
    add(store, "a.example")
    add(store, "b.example")
    diff = store.diff(3)
    assert "--- version 2\n+++ version 3\n" in diff
    assert '+sender = "b.example"' in diff
    result = store.rollback(1, user="cli:alice", base_etag=store.current_etag())
    assert store.path.read_text() == TEXT
    assert (result.version.id, result.version.summary) == (4, "rollback to version 1")
    with pytest.raises(Conflict):
        store.rollback(2, user="cli:alice", base_etag="0" * 16)


def test_an_invalid_text_is_never_written(store: ConfigStore, tmp_path: Path) -> None:
    document = ConfigDocument.from_text(TEXT, tmp_path)
    document._doc["gateway"]["keep_versions"] = -1  # past the model's own check
    with pytest.raises(Invalid) as caught:
        store.save(document, user="cli:alice")
    assert caught.value.errors[0][0] == "gateway.keep_versions"
    assert store.path.read_text() == TEXT
    assert store.versions() == []


def test_saving_the_same_text_writes_nothing(store: ConfigStore) -> None:
    add(store, "a.example")
    before = os.stat(store.path).st_mtime_ns
    result = store.save(store.open(), user="cli:alice")
    assert result.unchanged and result.version.id == 2
    assert os.stat(store.path).st_mtime_ns == before


def test_a_symlinked_file_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "etc" / "smtpgate.toml"
    real.parent.mkdir()
    real.write_text(TEXT)
    link = tmp_path / "smtpgate.toml"
    link.symlink_to(real)
    add(ConfigStore(link), "a.example")
    assert link.is_symlink()
    assert "a.example" in real.read_text()
