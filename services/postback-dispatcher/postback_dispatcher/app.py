"""The dispatcher's HTTP side: health, and (later) the operator and publisher APIs and pages.

The consumer runs in the same process, started and stopped by the lifespan,
so one ``postback-dispatcher serve`` is the whole dispatcher; ``consume`` and
``serve --no-consume`` split it into consumers and APIs/pages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from postback_core.web import install_error_handlers
from postback_dispatcher import health, metrics
from postback_dispatcher.runtime import DispatcherRuntime
from postback_dispatcher.settings import DispatcherSettings


def create_app(settings: DispatcherSettings | None = None, *, consume: bool = True) -> FastAPI:
    """The whole dispatcher; ``consume=False``: the APIs and pages alone (no consumers)."""
    app = _app(settings, consume=consume)
    from postback_dispatcher.routers import include_feature_routers

    include_feature_routers(app)
    return app


def create_api_app() -> FastAPI:
    """``serve --no-consume``."""
    return create_app(consume=False)


def create_consumer_app(settings: DispatcherSettings | None = None) -> FastAPI:
    """``consume``: the consumers, with /healthz, /readyz and /metrics only."""
    return _app(settings, consume=True)


def _app(settings: DispatcherSettings | None, *, consume: bool) -> FastAPI:
    runtime = DispatcherRuntime.build(settings or DispatcherSettings(), consume=consume)

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
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app
