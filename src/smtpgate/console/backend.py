"""What the API does with a request once it is authenticated: open the
configuration through the editing model, save through its store, record the
change, apply it to the running proxy. One place, so that every route
saves, audits and reloads the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio.from_thread

from smtpgate.config.editing import ConfigDocument, Conflict, EditError, NotFound
from smtpgate.config.schema import Config
from smtpgate.config.store import ConfigStore, SaveResult
from smtpgate.console.admins import Account
from smtpgate.console.audit import AuditLog


class RunningProxy(Protocol):
    """What the console needs of the running gateway: its configuration and its reload
    (True when the new configuration, listeners included, was applied)."""

    config: Config

    async def reload(self) -> bool: ...


class PreconditionRequired(EditError):
    """A change without ``If-Match`` (HTTP 428)."""

    status = 428


@dataclass(frozen=True, slots=True)
class Saved:
    """A change that was written: the new version, and whether the running proxy took it."""

    result: SaveResult
    applied: bool

    @property
    def etag(self) -> str:
        return self.result.version.etag


def parse_if_match(header: str | None) -> str:
    """The version an ``If-Match`` names (``"abc"``, ``W/"abc"`` or ``abc``)."""
    if not header:
        raise PreconditionRequired(
            [("", "If-Match is required on a change: send the ETag of your last GET")]
        )
    value = header.strip()
    if value == "*":
        raise PreconditionRequired(
            [("", "If-Match: * does not say which version you changed; send the ETag")]
        )
    value = value.removeprefix("W/")
    return value.strip('"')


class Backend:
    def __init__(self, proxy: RunningProxy, config_path: Path | None, audit: AuditLog) -> None:
        self.proxy = proxy
        self.store = ConfigStore(config_path) if config_path is not None else None
        self.audit = audit

    def _store(self) -> ConfigStore:
        if self.store is None:
            raise NotFound(
                [
                    (
                        "",
                        "serve runs the embedded default configuration (no --config): "
                        "there is no file to read or change",
                    )
                ]
            )
        return self.store

    def document(self) -> ConfigDocument:
        return self._store().open()

    def etag(self) -> str:
        return self._store().current_etag()

    def versions_store(self) -> ConfigStore:
        return self._store()

    def based_on(self, if_match: str | None) -> ConfigDocument:
        """The document to change, if it is still the version the client read."""
        wanted = parse_if_match(if_match)
        document = self.document()
        if document.etag != wanted:
            raise Conflict(
                [
                    (
                        "",
                        f"the configuration changed since you read it (your version {wanted}, "
                        f"now {document.etag}); nothing was changed: GET it again and redo "
                        "the change",
                    )
                ]
            )
        return document

    def save(
        self,
        document: ConfigDocument,
        *,
        account: Account,
        address: str,
        action: str,
        target: str,
    ) -> Saved:
        return self._written(
            lambda store: store.save(document, user=_who(account, address)),
            account=account,
            address=address,
            action=action,
            target=target,
            summary="; ".join(document.changes) or "saved",
        )

    def rollback(
        self, version_id: int, if_match: str | None, *, account: Account, address: str
    ) -> Saved:
        base = parse_if_match(if_match)
        return self._written(
            lambda store: store.rollback(version_id, user=_who(account, address), base_etag=base),
            account=account,
            address=address,
            action="versions.rollback",
            target=f"version {version_id}",
            summary=f"rollback to version {version_id}",
        )

    def _written(
        self,
        write: Callable[[ConfigStore], SaveResult],
        *,
        account: Account,
        address: str,
        action: str,
        target: str,
        summary: str,
    ) -> Saved:
        result = write(self._store())

        async def after() -> bool:
            applied = True if result.unchanged else await self.apply()
            self.audit.record(
                who=account.principal,
                via="api",
                address=address,
                action=action,
                target=target,
                summary=summary,
                version=result.version.id,
                applied=applied,
            )
            return applied

        # Routes run in a worker thread; the proxy and its log belong to the event loop.
        return Saved(result, anyio.from_thread.run(after))

    async def apply(self) -> bool:
        """Reload the running proxy from the file just saved, as SIGHUP does
        (on the event loop; the answer waits for it, listeners opened and closed
        included); False when the reload refused it (the log's ``reload_failed``
        says why)."""
        return await self.proxy.reload()


def _who(account: Account, address: str) -> str:
    """How the version list names the author of an API save."""
    return f"api:{account.principal} from {address}"
