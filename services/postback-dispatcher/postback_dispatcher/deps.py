"""FastAPI dependencies: the runtime, the request's unit of work, admin authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from postback_core.web import check_admin_bearer, unit_of_work_session
from sqlalchemy.ext.asyncio import AsyncSession

from postback_dispatcher.runtime import DispatcherRuntime


def get_runtime(request: Request) -> DispatcherRuntime:
    runtime: DispatcherRuntime = request.app.state.runtime
    return runtime


async def get_session(
    runtime: Annotated[DispatcherRuntime, Depends(get_runtime)],
) -> AsyncIterator[AsyncSession]:
    async for session in unit_of_work_session(runtime.sessionmaker):
        yield session


def require_admin(
    request: Request, runtime: Annotated[DispatcherRuntime, Depends(get_runtime)]
) -> None:
    check_admin_bearer(request, runtime.settings.admin_token)


Session = Annotated[AsyncSession, Depends(get_session)]
Runtime = Annotated[DispatcherRuntime, Depends(get_runtime)]
AdminOnly = Depends(require_admin)
