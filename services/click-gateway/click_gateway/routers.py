"""Feature routers mounted on the gateway's FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI

from click_gateway.advertisers.router import router as advertisers_router
from click_gateway.advertisers.service import AdvertiserKeyCache
from click_gateway.conversions.router import router as conversions_router
from click_gateway.offers.router import router as offers_router
from click_gateway.publishers.router import router as publishers_router
from click_gateway.smartlinks.router import router as smartlinks_router


def include_feature_routers(api: FastAPI) -> None:
    """Each feature folder contributes one router (admin, conversions)."""
    # One per process: conversions look advertisers up by API key on every request.
    api.state.advertiser_key_cache = AdvertiserKeyCache()
    for router in (
        publishers_router,
        advertisers_router,
        offers_router,
        smartlinks_router,
        conversions_router,
    ):
        api.include_router(router)
