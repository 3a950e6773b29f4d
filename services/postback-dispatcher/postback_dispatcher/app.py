"""The dispatcher's HTTP side: health, and (later) the operator and publisher APIs and pages.

The consumer runs in the same process, started and stopped by the lifespan,
so one ``postback-dispatcher serve`` is the whole dispatcher.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from postback_core.logs import RequestIdMiddleware
from postback_core.web import install_error_handlers
from postback_dispatcher import health, metrics
from postback_dispatcher.runtime import DispatcherRuntime
from postback_dispatcher.settings import DispatcherSettings


def create_app(settings: DispatcherSettings | None = None) -> FastAPI:
    runtime = DispatcherRuntime.build(settings or DispatcherSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Postback dispatcher",
        version="1.0.0",
        description="Delivers publishers' postbacks; dead-letter and publisher APIs.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(metrics.router)
    from postback_dispatcher.routers import include_feature_routers

    include_feature_routers(app)
    return app
