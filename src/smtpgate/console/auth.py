"""Who is calling: HTTP Basic (users) or ``Authorization: Bearer`` (tokens).

``401`` without credentials or with wrong ones, ``429`` with
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
from smtpgate.console.throttle import LoginThrottle, ThrottleKey
from smtpgate.logs import EventLog

CONCURRENT_CHECKS = 2
REALM = 'Basic realm="smtpgate", charset="UTF-8"'

_basic = HTTPBasic(auto_error=False, realm="smtpgate")
_bearer = HTTPBearer(auto_error=False)


class Authenticator:
    """The accounts, the back-off table and the log of one console."""

    def __init__(self, admins: AdminStore, log: EventLog, throttle: LoginThrottle) -> None:
        self.admins = admins
        self.log = log
        self.throttle = throttle
        self._checks = asyncio.Semaphore(CONCURRENT_CHECKS)

    async def account(
        self,
        address: str,
        basic: HTTPBasicCredentials | None,
        bearer: HTTPAuthorizationCredentials | None,
    ) -> Account:
        if basic is not None:
            keys: list[ThrottleKey] = [("user", basic.username), ("address", address)]
            user = basic.username
        elif bearer is not None:
            keys, user = [("address", address)], ""
        else:
            raise _unauthorized("credentials required")
        wait = self.throttle.retry_after(keys)
        if wait:
            self.log.emit("login_blocked", user=user, address=address, retry_after=wait)
            raise HTTPException(
                429,
                f"too many failed logins; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        try:
            if basic is not None:
                async with self._checks:
                    account = await asyncio.to_thread(
                        self.admins.verify_password, basic.username, basic.password
                    )
            else:
                assert bearer is not None
                account = self.admins.verify_token(bearer.credentials)
        except AdminError as exc:
            raise HTTPException(500, str(exc)) from exc
        if account is None:
            self.throttle.failed(keys)
            self.log.emit(
                "login_failed", user=user, address=address, method="basic" if basic else "token"
            )
            raise _unauthorized("wrong user name or password" if basic else "unknown token")
        if basic is not None:
            self.throttle.succeeded(("user", basic.username))
        return account


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
    return await authenticator.account(client_address(request), basic, bearer)


async def changer(account: Annotated[Account, Depends(caller)]) -> Account:
    """An account allowed to change things (role ``admin``)."""
    if account.role is not Role.ADMIN:
        raise HTTPException(403, f"{account.principal} has the {account.role} role: read only")
    return account


Reader = Annotated[Account, Depends(caller)]
Changer = Annotated[Account, Depends(changer)]
