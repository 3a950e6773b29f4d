"""Feature routers mounted on the gateway's FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI

from click_gateway.advertisers.router import router as advertisers_router
from click_gateway.conversions.router import install as install_conversions
from click_gateway.goals.router import router as goals_router
from click_gateway.offers.router import router as offers_router
from click_gateway.publishers.router import router as publishers_router
from click_gateway.smartlinks.router import router as smartlinks_router


def include_feature_routers(api: FastAPI) -> None:
    """Each feature folder contributes one router (admin, conversions)."""
    for router in (
        publishers_router,
        advertisers_router,
        offers_router,
        goals_router,
        smartlinks_router,
    ):
        api.include_router(router)
    # Conversions bring per-process state (a pool and caches) started by the lifespan.
    install_conversions(api)
