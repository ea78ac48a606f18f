"""Who is calling: HTTP Basic (users) or ``Authorization: Bearer`` (tokens).

``401`` without credentials or with wrong ones (console pages prove
themselves with a session cookie instead, :mod:`.sessions`), ``429`` with
``Retry-After`` while the user name or the client address is backing off
(:mod:`.throttle`), ``403`` when an auditor asks for a change. Password
checks run in a worker thread (argon2 releases the GIL), at most
:data:`CONCURRENT_CHECKS` at a time, so that logins never hold up the
event loop that carries the mail.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)

from smtpgate.console.admins import Account, AdminError, AdminStore, Role
from smtpgate.console.sessions import (
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    SessionStore,
    csrf_matches,
)
from smtpgate.console.throttle import LoginThrottle, ThrottleKey
from smtpgate.logs import EventLog

CONCURRENT_CHECKS = 2
REALM = 'Basic realm="smtpgate", charset="UTF-8"'
#: The challenge of a 401 to a console page: no Basic, so the browser shows no password dialog.
SESSION_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="smtpgate"'}

_basic = HTTPBasic(auto_error=False, realm="smtpgate")
_bearer = HTTPBearer(auto_error=False)


class Authenticator:
    """The accounts, the back-off table and the log of one console."""

    def __init__(self, admins: AdminStore, log: EventLog, throttle: LoginThrottle) -> None:
        self.admins = admins
        self.log = log
        self.throttle = throttle
        self.sessions = SessionStore()
        self._checks = asyncio.Semaphore(CONCURRENT_CHECKS)

    async def login(self, address: str, name: str, password: str) -> Account:
        """A console login: the checks and back-off of Basic, answered without a
        Basic challenge (a page's fetch must not make the browser ask)."""
        try:
            return await self._password(
                address, HTTPBasicCredentials(username=name, password=password)
            )
        except HTTPException as exc:
            if exc.status_code == 401:
                raise HTTPException(401, exc.detail, headers=SESSION_CHALLENGE) from None
            raise

    def session_account(self, cookie: str, method: str, csrf_token: str | None) -> Account:
        """The user of a console session; a change needs the session's CSRF token."""
        session = self.sessions.find(cookie)
        user = None
        if session is not None:
            user = next(
                (
                    a
                    for a in self.admins.users()
                    if a.name == session.user and a.secret_hash == session.secret_hash
                ),
                None,
            )
            if user is None:  # removed, or a new password: the session ends
                self.sessions.close(cookie)
        if session is None or user is None:
            raise HTTPException(
                401,
                "the console session ended (logged out, idle, expired or password changed): "
                "log in again",
                headers=SESSION_CHALLENGE,
            )
        if method not in SAFE_METHODS and not csrf_matches(session, csrf_token):
            raise HTTPException(
                403,
                f"a change from the console needs the {CSRF_HEADER} header of its session "
                "(missing or wrong): reload the page",
            )
        return user

    async def account(
        self,
        address: str,
        basic: HTTPBasicCredentials | None,
        bearer: HTTPAuthorizationCredentials | None,
    ) -> Account:
        if basic is not None:
            return await self._password(address, basic)
        if bearer is not None:
            return self._token(address, bearer.credentials)
        raise _unauthorized("credentials required")

    async def _password(self, address: str, basic: HTTPBasicCredentials) -> Account:
        keys: list[ThrottleKey] = [("user", basic.username), ("address", address)]
        self._refuse_while_locked(keys, basic.username, address)
        try:
            async with self._checks:
                account = await asyncio.to_thread(
                    self.admins.verify_password, basic.username, basic.password
                )
        except AdminError as exc:
            raise HTTPException(500, str(exc)) from exc
        if account is None:
            self._failed(keys, basic.username, address, "basic")
            raise _unauthorized("wrong user name or password")
        self.throttle.succeeded(("user", basic.username))
        return account

    def _token(self, address: str, token: str) -> Account:
        """A right token is taken even from a locked address: it proves no guessing,
        and checking it costs a hash. A wrong one counts against the address."""
        try:
            account = self.admins.verify_token(token)
        except AdminError as exc:
            raise HTTPException(500, str(exc)) from exc
        if account is not None:
            return account
        keys: list[ThrottleKey] = [("address", address)]
        self._refuse_while_locked(keys, "", address)
        self._failed(keys, "", address, "token")
        raise _unauthorized("unknown token")

    def _refuse_while_locked(self, keys: list[ThrottleKey], user: str, address: str) -> None:
        wait = self.throttle.retry_after(keys)
        if wait:
            if self.throttle.first_refusal(keys):
                self.log.emit("login_blocked", user=user, address=address, retry_after=wait)
            raise HTTPException(
                429,
                f"too many failed logins; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    def _failed(self, keys: list[ThrottleKey], user: str, address: str, method: str) -> None:
        self.throttle.failed(keys)
        self.log.emit("login_failed", user=user, address=address, method=method)


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(
        401, reason, headers={"WWW-Authenticate": f'{REALM}, Bearer realm="smtpgate"'}
    )


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def caller(
    request: Request,
    basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Account:
    """Any authenticated account (reading)."""
    authenticator: Authenticator = request.app.state.authenticator
    cookie = request.cookies.get(SESSION_COOKIE)
    if basic is None and bearer is None and cookie is not None:
        return authenticator.session_account(
            cookie, request.method, request.headers.get(CSRF_HEADER)
        )
    return await authenticator.account(client_address(request), basic, bearer)


async def changer(account: Annotated[Account, Depends(caller)]) -> Account:
    """An account allowed to change things (role ``admin``)."""
    if account.role is not Role.ADMIN:
        raise HTTPException(403, f"{account.principal} has the {account.role} role: read only")
    return account


Reader = Annotated[Account, Depends(caller)]
Changer = Annotated[Account, Depends(changer)]
