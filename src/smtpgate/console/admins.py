"""Console and API accounts: ``state_dir/admins.json``.

Two kinds of entries, each with a role (``admin`` may change, ``auditor``
only reads):

- users log in with a password, stored as an argon2id hash
  (argon2-cffi's defaults, RFC 9106's second recommended setting);
- tokens, for automation, are 32 random bytes the holder sends as
  ``Authorization: Bearer``; stored as a SHA-256 digest. A slow hash adds
  nothing against guessing 256 random bits, and a fast one lets every API
  call check its token without an argon2 cost.

The file is replaced atomically (temporary file, fsync, rename, fsync of the
folder), mode 0600, under an advisory lock so that two ``smtpgate admin``
commands never lose each other's change. ``serve`` re-reads it when it
changes on disk, so a command's change applies to the running console at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from smtpgate.tls.issuing import write_atomic

ADMINS_FILE = "admins.json"
FILE_MODE = 0o600
#: Shorter passwords are refused by ``admin add`` and ``admin passwd``.
MIN_PASSWORD_LENGTH = 12
#: What a token starts with, so that it is recognisable in a secret scanner.
TOKEN_PREFIX = "smtpgate_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_FORMAT = 1


class Role(enum.StrEnum):
    ADMIN = "admin"
    AUDITOR = "auditor"


class AdminError(Exception):
    """A refused account change; the text says why."""


@dataclass(frozen=True, slots=True)
class Account:
    """A user (``kind == "user"``) or an API token (``kind == "token"``)."""

    name: str
    kind: str
    role: Role
    created: str
    #: argon2id hash (users) or ``sha256:<hex>`` (tokens).
    secret_hash: str

    @property
    def principal(self) -> str:
        """How the audit log names who acted: ``alice`` or ``token:deploy``."""
        return self.name if self.kind == "user" else f"token:{self.name}"

    def public(self) -> dict[str, str]:
        """What ``admin list`` and the API show (never the hash)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "role": str(self.role),
            "created": self.created,
        }


def new_password() -> str:
    """A random password for the first administrator (144 bits)."""
    return secrets.token_urlsafe(18)


def _token_digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise AdminError(
            f"{name!r}: a name is 1 to 64 letters, digits and . _ @ -, starting with a "
            "letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AdminError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


class AdminStore:
    """The accounts in ``state_dir``; every method reads the file afresh or
    from a cache keyed by the file's identity, so several processes agree."""

    def __init__(self, state_dir: Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = state_dir / ADMINS_FILE
        self._hasher = hasher or PasswordHasher()
        self._cache: tuple[tuple[int, int, int], list[Account]] | None = None
        #: Checked against for unknown names, so they cost what a known name costs.
        self._dummy: str | None = None

    # -- reading -----------------------------------------------------------------------

    def accounts(self) -> list[Account]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AdminError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == identity:
            return self._cache[1]
        accounts = self._read()
        self._cache = (identity, accounts)
        return accounts

    def _read(self) -> list[Account]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise AdminError(f"{self.path}: cannot read: {exc}") from exc
        try:
            return [
                Account(
                    name=entry["name"],
                    kind=entry["kind"],
                    role=Role(entry["role"]),
                    created=entry["created"],
                    secret_hash=entry["hash"],
                )
                for entry in data["accounts"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise AdminError(f"{self.path}: not an accounts file of smtpgate: {exc}") from exc

    def users(self) -> list[Account]:
        return [a for a in self.accounts() if a.kind == "user"]

    # -- checking secrets ----------------------------------------------------------------

    def verify_password(self, name: str, password: str) -> Account | None:
        """The user if ``password`` is theirs; ``None`` otherwise.

        Costs one argon2 verification (tens of milliseconds, GIL released),
        also for an unknown name, so that timing does not tell names apart.
        """
        user = next((a for a in self.users() if a.name == name), None)
        try:
            if user is None:
                self._hasher.verify(self._dummy_hash(), password)
                return None
            self._hasher.verify(user.secret_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return user

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash(new_password())
        return self._dummy

    def verify_token(self, token: str) -> Account | None:
        digest = _token_digest(token)
        for account in self.accounts():
            if account.kind == "token" and hmac.compare_digest(account.secret_hash, digest):
                return account
        return None

    # -- changing ------------------------------------------------------------------------

    def add_user(self, name: str, password: str, role: Role) -> Account:
        check_name(name)
        check_password(password)
        with self._editing() as accounts:
            if any(a.name == name and a.kind == "user" for a in accounts):
                raise AdminError(f"a user named {name!r} exists (change it with admin passwd)")
            account = Account(name, "user", role, _now(), self._hasher.hash(password))
            accounts.append(account)
        return account

    def set_password(self, name: str, password: str) -> Account:
        check_password(password)
        with self._editing() as accounts:
            i = self._index(accounts, name, "user")
            accounts[i] = replace(accounts[i], secret_hash=self._hasher.hash(password))
            return accounts[i]

    def add_token(self, name: str, role: Role) -> tuple[Account, str]:
        """A new token; the secret is returned once and stored only as a digest."""
        check_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._editing() as accounts:
            if any(a.name == name and a.kind == "token" for a in accounts):
                raise AdminError(f"a token named {name!r} exists (remove it first)")
            account = Account(name, "token", role, _now(), _token_digest(token))
            accounts.append(account)
        return account, token

    def remove(self, name: str, kind: str) -> Account:
        with self._editing() as accounts:
            i = self._index(accounts, name, kind)
            removed = accounts[i]
            admins = [a for a in accounts if a.kind == "user" and a.role is Role.ADMIN]
            if kind == "user" and removed.role is Role.ADMIN and len(admins) == 1:
                raise AdminError(
                    f"{name!r} is the last user with the admin role; add another first"
                )
            del accounts[i]
        return removed

    def _index(self, accounts: list[Account], name: str, kind: str) -> int:
        for i, account in enumerate(accounts):
            if account.name == name and account.kind == kind:
                return i
        known = ", ".join(sorted(a.name for a in accounts if a.kind == kind)) or "none"
        raise AdminError(f"no {kind} named {name!r} (there are: {known})")

    @contextlib.contextmanager
    def _editing(self) -> Iterator[list[Account]]:
        """Read, let the caller change the list, write it back; under an exclusive lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            accounts = self._read()
            yield accounts
            self._write(accounts)
        finally:
            os.close(fd)  # releases the lock

    def _write(self, accounts: list[Account]) -> None:
        data: dict[str, Any] = {
            "format": _FORMAT,
            "accounts": [
                {
                    "name": a.name,
                    "kind": a.kind,
                    "role": str(a.role),
                    "created": a.created,
                    "hash": a.secret_hash,
                }
                for a in accounts
            ],
        }
        text = json.dumps(data, indent=2) + "\n"
        write_atomic(self.path, text.encode("utf-8"), FILE_MODE)
        _fsync_dir(self.path.parent)
        self._cache = None


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the directory entry is data too)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
