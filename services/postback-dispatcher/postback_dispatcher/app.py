"""The dispatcher's HTTP side: health, and (later) the operator and publisher APIs and pages.

The consumer runs in the same process, started and stopped by the lifespan,
so one ``postback-dispatcher serve`` is the whole dispatcher; ``consume`` and
``serve --no-consume`` split it into consumers and APIs/pages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline

from postback_core.client_address import ClientAddressResolver
from postback_core.http_guard import (
    AuthFailureLimiter,
    ProtectedPrefix,
    RequestGuard,
    configure_header_timeout,
)
from postback_core.logs import RequestIdMiddleware
from postback_core.web import (
    ADMIN_REFUSAL,
    admin_bearer_valid,
    header_value,
    install_error_handlers,
)
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

    # /docs serves Swagger UI's files itself: the page works offline, with no CDN.
    app = FastAPIOffline(
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
    _install_request_guard(app, runtime.settings)
    return app


def _install_request_guard(app: FastAPI, settings: DispatcherSettings) -> None:
    """Body cap, authentication before the body is read, failed-authentication limits."""
    from postback_dispatcher.publisher_api.auth import API_KEY_HEADER, publisher_for_key

    async def admin(scope: dict[str, Any]) -> object | None:
        valid = admin_bearer_valid(header_value(scope, b"authorization"), settings.admin_token)
        return "admin" if valid else None

    async def publisher(scope: dict[str, Any]) -> object | None:
        request = Request({**scope, "app": app})
        key = header_value(scope, API_KEY_HEADER.lower().encode())
        return await publisher_for_key(request, app.state.runtime, key)

    configure_header_timeout(settings)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_request_body_bytes,
        protected=[
            ProtectedPrefix("/api/v1/dead-letters", admin, ADMIN_REFUSAL, "Bearer"),
            ProtectedPrefix(
                "/api/v1/me",
                publisher,
                f"publisher authentication required: {API_KEY_HEADER}: <your api key>",
                API_KEY_HEADER,
            ),
        ],
        limiter=AuthFailureLimiter(
            settings.auth_failure_limit, settings.auth_failure_window_seconds
        ),
        addresses=ClientAddressResolver(settings.trusted_proxies),
    )
