"""The REST API under ``/api/v1`` (docs/api.md): HTTP in, editing model calls, HTTP out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from smtpgate.console.auth import Authenticator, Reader

API_PREFIX = "/api/v1"

router = APIRouter(prefix=API_PREFIX)


@router.get("/whoami", summary="The account making the request")
async def whoami(account: Reader) -> dict[str, str]:
    return {"name": account.name, "kind": account.kind, "role": str(account.role)}


def create_app(authenticator: Authenticator, **state: Any) -> FastAPI:
    app = FastAPI(
        title="smtpgate",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.authenticator = authenticator
    for key, value in state.items():
        setattr(app.state, key, value)
    app.include_router(router)
    return app
