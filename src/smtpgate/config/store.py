"""Saving a configuration file: atomically, with versions, never over another's edit.

:class:`ConfigStore` is the one way a front end (commands, API, console)
writes the file that :class:`~smtpgate.config.editing.ConfigDocument` edits:

- **Atomic**: the new text goes to a temporary file in the same folder, is
  fsynced, renamed over the file, and the folder is fsynced; a crash at any
  point leaves either the old file or the new one, never a mix. The file's
  mode (and, for root, owner) is kept; a symlink is followed and stays.
- **Validated**: the text is loaded with the same code as ``smtpgate serve``
  before it is written; a configuration that fails is never written.
- **Versions** in ``state_dir/versions/``: ``N.toml`` (the text) and
  ``N.json`` (``id``, ``etag``, ``saved_at`` UTC, ``user``, ``summary``,
  ``based_on``). Each save records the text it wrote; a text found on disk
  that no save wrote (a hand edit, or the file before its first save) is
  recorded first, as ``user = "(on disk)"``, so a rollback can always reach
  it. ``[gateway] keep_versions`` (default 50) bounds how many are kept.
- **Optimistic concurrency**: a document's :attr:`ConfigDocument.etag` is the
  content hash of the text it was read from (:func:`content_etag`); a save
  whose base is no longer the file's content is refused with
  :class:`Conflict`, whether the other writer was a command, the API or an
  editor. Saves are serialized by a lock file in ``state_dir/versions``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import fcntl
import json
import os
import signal
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smtpgate.config.editing import (
    ConfigDocument,
    Conflict,
    Invalid,
    NotFound,
    content_etag,
)
from smtpgate.config.errors import ConfigError
from smtpgate.config.loader import parse_config

VERSIONS_DIR = "versions"
ON_DISK_USER = "(on disk)"
CRASH_BEFORE_RENAME_ENV = "SMTPGATE_TEST_CRASH_BEFORE_RENAME"
"""Test hook: when set, a save kills its own process (SIGKILL) after the
temporary file is written and fsynced, before the rename, so a test can show
that the old file survives."""

_LOCK_FILE = ".lock"
_TEMP_MARK = ".smtpgate-save-"


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One saved version (``id`` counts up from 1; ``etag`` is its content hash)."""

    id: int
    etag: str
    saved_at: str
    user: str
    summary: str
    based_on: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What a save did: ``version`` is the version now on disk; ``unchanged``
    when the text was already the file's (nothing written, no new version)."""

    version: VersionInfo
    unchanged: bool = False


class ConfigStore:
    """The configuration file at ``path`` and its versions (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # -- reading --

    def read_text(self) -> str:
        try:
            return self.path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise NotFound([("", f"cannot read: {exc.strerror or exc}")]) from None
        except UnicodeDecodeError as exc:
            raise Invalid([("", f"not UTF-8 text: {exc.reason}")]) from None

    def open(self) -> ConfigDocument:
        """The file as a document to edit (raises :class:`Invalid` if it does not load)."""
        return ConfigDocument.from_text(self.read_text(), self.base_dir)

    def current_etag(self) -> str:
        return content_etag(self.read_text())

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent

    @property
    def versions_dir(self) -> Path:
        """``state_dir/versions`` of the file as it is on disk. Found without
        validating the rest, so that a hand-broken file can still be rolled back."""
        return self._state_dir(self.read_text()) / VERSIONS_DIR

    def _state_dir(self, text: str) -> Path:
        try:
            gateway = tomllib.loads(text).get("gateway", {})
        except tomllib.TOMLDecodeError:
            gateway = {}
        state = gateway.get("state_dir") if isinstance(gateway, dict) else None
        path = Path(state if isinstance(state, str) and state else "state").expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def versions(self) -> list[VersionInfo]:
        """Kept versions, oldest first."""
        folder = self.versions_dir
        found = []
        for meta in folder.glob("*.json") if folder.is_dir() else ():
            if meta.stem.isdigit():
                with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                    found.append(VersionInfo(**json.loads(meta.read_text(encoding="utf-8"))))
        return sorted(found, key=lambda v: v.id)

    def version(self, version_id: int) -> VersionInfo:
        for info in self.versions():
            if info.id == version_id:
                return info
        kept = [v.id for v in self.versions()]
        span = f"{kept[0]}..{kept[-1]}" if kept else "none"
        raise NotFound([("", f"no version {version_id} (kept: {span})")])

    def version_text(self, version_id: int) -> str:
        self.version(version_id)
        return (self.versions_dir / f"{version_id}.toml").read_text(encoding="utf-8")

    def diff(self, version_id: int, *, against_current: bool = False) -> str:
        """A unified diff of what version ``version_id`` changed (from the
        version before it), or, ``against_current``, from it to the file now."""
        text = self.version_text(version_id)
        if against_current:
            old, old_name, new, new_name = (
                text,
                f"version {version_id}",
                self.read_text(),
                "current",
            )
        else:
            earlier = [v.id for v in self.versions() if v.id < version_id]
            old = self.version_text(earlier[-1]) if earlier else ""
            old_name = f"version {earlier[-1]}" if earlier else "(nothing kept)"
            new, new_name = text, f"version {version_id}"
        return "".join(
            difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                fromfile=old_name,
                tofile=new_name,
            )
        )

    # -- writing --

    def save(
        self, document: ConfigDocument, *, user: str, summary: str | None = None
    ) -> SaveResult:
        """Write ``document`` if the file is still the text it was read from
        (:attr:`ConfigDocument.etag`), else raise :class:`Conflict`."""
        text = document.text()
        line = summary or "; ".join(document.changes) or "saved"
        return self._write(text, base_etag=document.etag, user=user, summary=line)

    def rollback(self, version_id: int, *, user: str, base_etag: str) -> SaveResult:
        """Make version ``version_id`` the file again, as a new version."""
        text = self.version_text(version_id)
        summary = f"rollback to version {version_id}"
        return self._write(text, base_etag=base_etag, user=user, summary=summary)

    def _write(self, text: str, *, base_etag: str, user: str, summary: str) -> SaveResult:
        try:
            keep = parse_config(text, self.base_dir).gateway.keep_versions
        except ConfigError as exc:
            raise Invalid.from_config_error(exc) from None
        with self._locked() as folder:
            current = self.read_text()
            current_etag = content_etag(current)
            if current_etag != base_etag:
                raise stale(base_etag, current_etag)
            versions = self.versions()
            if not versions or versions[-1].etag != current_etag:
                self._record(folder, versions, current, ON_DISK_USER, _ON_DISK_SUMMARY, None)
                versions = self.versions()
            if text == current:
                return SaveResult(versions[-1], unchanged=True)
            _remove_leftovers(self.path)
            atomic_write(self.path, text, hook=True)
            info = self._record(folder, versions, text, user, summary, current_etag)
            self._prune(folder, keep)
            return SaveResult(info)

    def _record(
        self,
        folder: Path,
        versions: list[VersionInfo],
        text: str,
        user: str,
        summary: str,
        based_on: str | None,
    ) -> VersionInfo:
        info = VersionInfo(
            id=versions[-1].id + 1 if versions else 1,
            etag=content_etag(text),
            saved_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            user=user,
            summary=summary,
            based_on=based_on,
        )
        atomic_write(folder / f"{info.id}.toml", text, mode=0o600)
        atomic_write(folder / f"{info.id}.json", json.dumps(info.as_json()) + "\n", mode=0o600)
        return info

    def _prune(self, folder: Path, keep: int) -> None:
        versions = self.versions()
        for old in versions[: max(0, len(versions) - keep)]:
            for suffix in (".json", ".toml"):
                (folder / f"{old.id}{suffix}").unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Path]:
        folder = self.versions_dir
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (folder / _LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def stale(base_etag: str, current_etag: str) -> Conflict:
    """The error for a save based on a version that is no longer the file's."""
    return Conflict(
        [
            (
                "",
                f"changed since it was read (version {base_etag}, now {current_etag}); "
                "nothing was written: read it again and redo the change",
            )
        ]
    )


_ON_DISK_SUMMARY = "found on disk (a hand edit, or the file before its first save)"


def atomic_write(path: Path, text: str, *, mode: int | None = None, hook: bool = False) -> None:
    """Replace ``path`` with ``text``: temporary file in the same folder,
    fsync, rename, fsync of the folder. Keeps the mode (and, for root, the
    owner) of an existing file; a symlink is followed. ``hook`` honours
    :data:`CRASH_BEFORE_RENAME_ENV`."""
    target = path.resolve()
    folder = target.parent
    try:
        st: os.stat_result | None = target.stat()
    except FileNotFoundError:
        st = None
    file_mode = mode if mode is not None else (st.st_mode & 0o7777 if st else 0o644)
    temporary = folder / f"{_TEMP_MARK}{target.name}.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), file_mode)  # the umask must not narrow it
            if st is not None and os.geteuid() == 0:
                os.fchown(out.fileno(), st.st_uid, st.st_gid)
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if hook and os.environ.get(CRASH_BEFORE_RENAME_ENV):
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(temporary, target)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_leftovers(path: Path) -> None:
    """Temporary files of saves that crashed before their rename."""
    target = path.resolve()
    for leftover in target.parent.glob(f"{_TEMP_MARK}{target.name}.*"):
        leftover.unlink(missing_ok=True)
