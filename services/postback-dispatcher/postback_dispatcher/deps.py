"""FastAPI dependencies: the runtime, the request's unit of work, admin authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.web import ADMIN_BEARER, check_admin_bearer, unit_of_work_session
from postback_dispatcher.runtime import DispatcherRuntime


async def get_runtime(request: Request) -> DispatcherRuntime:
    runtime: DispatcherRuntime = request.app.state.runtime
    return runtime


async def get_session(
    runtime: Annotated[DispatcherRuntime, Depends(get_runtime)],
) -> AsyncIterator[AsyncSession]:
    async for session in unit_of_work_session(runtime.sessionmaker):
        yield session


async def require_admin(
    request: Request,
    runtime: Annotated[DispatcherRuntime, Depends(get_runtime)],
    _: Annotated[object, Security(ADMIN_BEARER)] = None,
) -> None:
    check_admin_bearer(request, runtime.settings.admin_token)


# scope="function": the unit of work commits *before* the response leaves, so a
# 2xx means the data is durable and a client acting on it at once sees it.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
Runtime = Annotated[DispatcherRuntime, Depends(get_runtime)]
AdminOnly = Depends(require_admin)
