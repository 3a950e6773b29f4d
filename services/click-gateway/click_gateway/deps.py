"""FastAPI dependencies: the runtime, the request's unit of work, admin authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from sqlalchemy.ext.asyncio import AsyncSession

from click_gateway.runtime import GatewayRuntime
from postback_core.web import ADMIN_BEARER, check_admin_bearer, unit_of_work_session


async def get_runtime(request: Request) -> GatewayRuntime:
    runtime: GatewayRuntime = request.app.state.runtime
    return runtime


async def get_session(
    runtime: Annotated[GatewayRuntime, Depends(get_runtime)],
) -> AsyncIterator[AsyncSession]:
    async for session in unit_of_work_session(runtime.sessionmaker):
        yield session


async def require_admin(
    request: Request,
    runtime: Annotated[GatewayRuntime, Depends(get_runtime)],
    _: Annotated[object, Security(ADMIN_BEARER)] = None,
) -> None:
    check_admin_bearer(request, runtime.settings.admin_token)


# scope="function": commit before the response is sent, so a 201 means "stored"
# and a failed commit is an error response, not a silent loss.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
Runtime = Annotated[GatewayRuntime, Depends(get_runtime)]
AdminOnly = Depends(require_admin)
