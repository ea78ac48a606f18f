"""What a browser needs beside the REST API: the pages, the login session and
the security headers.

The pages are static files shipped in the package (``console/web/``: HTML,
JavaScript modules, CSS; nothing is built, nothing comes from elsewhere);
they call the REST API with ``fetch``. A login (``POST /api/v1/session``)
opens a session (:mod:`.sessions`): a ``Secure; HttpOnly; SameSite=Strict``
cookie, and a CSRF token the pages send with every change. Every answer
carries a Content-Security-Policy that allows scripts, styles and requests
from the console itself only, no inline script or style, no framing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from smtpgate.console.api import API_PREFIX, ERRORS
from smtpgate.console.auth import SESSION_CHALLENGE, Authenticator, Reader, client_address
from smtpgate.console.sessions import (
    CSRF_HEADER,
    IDLE_SECONDS,
    LIFETIME_SECONDS,
    SESSION_COOKIE,
)

#: Where the pages live in the package.
WEB_DIR = Path(__file__).with_name("web")
#: Where the browser finds them.
PAGES_PATH = "/console"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

router = APIRouter(prefix=API_PREFIX, responses=ERRORS)


class Login(BaseModel):
    name: str
    password: str


def _authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


def _session_answer(name: str, role: str, csrf_token: str) -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "csrf_token": csrf_token,
        "csrf_header": CSRF_HEADER,
        "idle_seconds": IDLE_SECONDS,
    }


@router.post("/session", summary="Console login: a session cookie and its CSRF token")
async def log_in(request: Request, response: Response, body: Login) -> dict[str, Any]:
    authenticator = _authenticator(request)
    account = await authenticator.login(client_address(request), body.name, body.password)
    cookie, session = authenticator.sessions.open(account.name, account.secret_hash)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=LIFETIME_SECONDS,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    authenticator.log.emit("console_login", user=account.name, address=client_address(request))
    return _session_answer(account.name, str(account.role), session.csrf_token)


@router.get("/session", summary="The console session of this cookie, with its CSRF token")
async def current_session(request: Request) -> dict[str, Any]:
    """Asked by every page first: a 401 here sends the browser to the login page,
    without the Basic challenge that would make it ask for a password itself."""
    authenticator = _authenticator(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        raise HTTPException(401, "not logged in to the console", headers=SESSION_CHALLENGE)
    account = authenticator.session_account(cookie, request.method, None)
    session = authenticator.sessions.find(cookie)
    assert session is not None  # session_account has just found it
    return _session_answer(account.name, str(account.role), session.csrf_token)


@router.delete("/session", summary="Log out: end the console session", status_code=204)
async def log_out(request: Request, _: Reader) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is not None:
        _authenticator(request).sessions.close(cookie)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


async def _security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    for header, value in SECURITY_HEADERS.items():
        response.headers.setdefault(header, value)
    if request.url.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def add_pages(app: FastAPI) -> None:
    """Session routes, the pages under ``/console/`` and the headers of every answer."""
    app.include_router(router)
    app.mount(PAGES_PATH, StaticFiles(directory=WEB_DIR, html=True), name="console")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{PAGES_PATH}/", status_code=303)

    app.middleware("http")(_security_headers)
