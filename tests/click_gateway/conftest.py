"""A real gateway on loopback, against the run's database and vhost."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from click_gateway.app import create_app
from click_gateway.settings import GatewaySettings
from tests.support.servers import serve_asgi


@pytest.fixture(scope="session")
async def gateway_url(database_url: str, amqp_url: str) -> AsyncIterator[str]:
    settings = GatewaySettings(
        DATABASE_URL=database_url,
        AMQP_URL=amqp_url,
        CLICK_FLUSH_INTERVAL_MS=50,
        CACHE_REFRESH_SECONDS=0.2,
        TRUSTED_PROXIES="127.0.0.0/8",
    )
    async with serve_asgi(create_app(settings)) as url:
        yield url


@pytest.fixture
async def gateway(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, follow_redirects=False) as client:
        yield client
