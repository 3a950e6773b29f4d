"""The gateway's ASGI application.

The SmartLink redirect is the hot path, so ``/get/...`` is answered by a lean
raw-ASGI handler that bypasses FastAPI's routing and validation; so is the
common case of ``POST /api/v1/conversions`` (see ``conversions/fast_path.py``).
Everything else (admin API, conversion errors, health, docs) is a normal
FastAPI app. Both sit behind the request guard (body cap, authentication
before the body is read, failed-authentication limits); clicks carry no body
and no credentials, so they skip it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import perf_counter_ns
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from click_gateway import health, metrics
from click_gateway.conversions import bulk, fast_path
from click_gateway.runtime import GatewayRuntime
from click_gateway.settings import GatewaySettings
from postback_core.http_guard import ProtectedPrefix, RequestGuard, configure_header_timeout
from postback_core.logs import RequestIdMiddleware
from postback_core.web import (
    ADMIN_REFUSAL,
    admin_bearer_valid,
    header_value,
    install_error_handlers,
)

CLICK_PREFIX = "/get/"
ADMIN_PREFIXES = (
    "/api/v1/publishers",
    "/api/v1/advertisers",
    "/api/v1/offers",
    "/api/v1/smartlinks",
)
# Paths allowed a body cap other than MAX_REQUEST_BODY_BYTES: the bulk upload takes
# up to 10,000 rows.
BODY_LIMITS_BY_PATH: dict[str, int] = {bulk.PATH: bulk.MAX_BODY_BYTES}
CONVERSIONS_REFUSAL = "a valid advertiser API key is required (X-Api-Key header, or key= for s2s)"


def create_api(runtime: GatewayRuntime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    # /docs serves Swagger UI's files itself: the page works offline, with no CDN.
    api = FastAPIOffline(
        title="Click gateway",
        version="1.0.0",
        description="SmartLink redirects, admin API and conversion reporting.",
        lifespan=lifespan,
    )
    api.state.runtime = runtime
    install_error_handlers(api)
    api.add_middleware(RequestIdMiddleware)
    api.include_router(health.router)
    api.include_router(metrics.router)
    from click_gateway.routers import include_feature_routers

    include_feature_routers(api)
    return api


class GatewayApp:
    """Routes ``/get/{code}`` to the click handler and everything else to FastAPI."""

    def __init__(self, runtime: GatewayRuntime) -> None:
        self.runtime = runtime
        self.api = create_api(runtime)
        self._click = runtime.clicks.handle
        self._click_duration = metrics.CLICK_DURATION_LOCAL.observe_ns
        self.conversions = RequestIdMiddleware(
            fast_path.ConversionFastPath(
                self.api,
                self.api.state.conversion_recorder,
                self.api.state.advertiser_key_cache,
                runtime.clicks,
            )
        )
        settings = runtime.settings
        configure_header_timeout(settings)
        self.guard = RequestGuard.for_settings(
            self._route, settings, self._protected_prefixes(settings), BODY_LIMITS_BY_PATH
        )

    def _protected_prefixes(self, settings: GatewaySettings) -> list[ProtectedPrefix]:
        admin_token = settings.admin_token

        async def admin(scope: dict[str, Any]) -> object | None:
            return (
                "admin"
                if admin_bearer_valid(header_value(scope, b"authorization"), admin_token)
                else None
            )

        async def advertiser(scope: dict[str, Any]) -> object | None:
            """An advertiser's id from X-Api-Key (operators' bearer also passes the gate)."""
            recorder = self.api.state.conversion_recorder
            advertiser_id = await self.api.state.advertiser_key_cache.advertiser_id(
                recorder.pool, header_value(scope, b"x-api-key")
            )
            return advertiser_id if advertiser_id is not None else await admin(scope)

        prefixes = [ProtectedPrefix(p, admin, ADMIN_REFUSAL, "Bearer") for p in ADMIN_PREFIXES]
        prefixes.append(
            ProtectedPrefix(fast_path.PATH, advertiser, CONVERSIONS_REFUSAL, "X-Api-Key")
        )
        return prefixes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(CLICK_PREFIX):
            started = perf_counter_ns()
            await self._click(scope, receive, send)
            self._click_duration(perf_counter_ns() - started)
            return
        await self.guard(scope, receive, send)

    async def _route(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == fast_path.PATH
            and scope["method"] == "POST"
        ):
            return await self.conversions(scope, receive, send)
        await self.api(scope, receive, send)


def create_app(settings: GatewaySettings | None = None) -> GatewayApp:
    return GatewayApp(GatewayRuntime.build(settings or GatewaySettings()))
