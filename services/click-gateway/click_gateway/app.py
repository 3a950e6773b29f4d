"""The gateway's ASGI application.

The SmartLink redirect is the hot path, so ``/get/...`` is answered by a lean
raw-ASGI handler that bypasses FastAPI's routing and validation; so is the
common case of ``POST /api/v1/conversions`` (see ``conversions/fast_path.py``).
Everything else (admin API, conversion errors, health, docs) is a normal
FastAPI app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import perf_counter_ns
from typing import Any

from fastapi import FastAPI

from click_gateway import health, metrics
from click_gateway.conversions import fast_path
from click_gateway.runtime import GatewayRuntime
from click_gateway.settings import GatewaySettings
from postback_core.logs import RequestIdMiddleware
from postback_core.web import install_error_handlers

CLICK_PREFIX = "/get/"


def create_api(runtime: GatewayRuntime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    api = FastAPI(
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

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(CLICK_PREFIX):
                started = perf_counter_ns()
                await self._click(scope, receive, send)
                self._click_duration(perf_counter_ns() - started)
                return
            if path == fast_path.PATH and scope["method"] == "POST":
                return await self.conversions(scope, receive, send)
        await self.api(scope, receive, send)


def create_app(settings: GatewaySettings | None = None) -> GatewayApp:
    return GatewayApp(GatewayRuntime.build(settings or GatewaySettings()))
