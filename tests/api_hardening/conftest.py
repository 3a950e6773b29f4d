"""Both services on loopback with small limits, so the limits are quick to reach.

Their own dispatcher vhost keeps their consumer away from the other suites' messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from click_gateway.app import create_app
from click_gateway.settings import GatewaySettings
from tests.factories import ADMIN_HEADERS, create_advertiser, create_publisher
from tests.postback_dispatcher.conftest import fresh_vhost, running_dispatcher
from tests.support.servers import serve_asgi

BODY_CAP = 64 * 1024
AUTH_FAILURE_LIMIT = 10
LIMITS = {
    "TRUSTED_PROXIES": "127.0.0.0/8",  # tests speak for several "clients" via X-Forwarded-For
    "MAX_REQUEST_BODY_BYTES": BODY_CAP,
    "AUTH_FAILURE_LIMIT": AUTH_FAILURE_LIMIT,
    "AUTH_FAILURE_WINDOW_SECONDS": 600,
    # PostgreSQL is shared by every suite (and every developer): a few connections each.
    "DB_POOL_SIZE": 2,
}


@dataclass
class Services:
    gateway: str
    dispatcher: str
    advertiser_key: str
    publisher_key: str


@pytest.fixture(scope="session")
async def services(database_url: str, amqp_url: str) -> AsyncIterator[Services]:
    gateway_settings = GatewaySettings(DATABASE_URL=database_url, AMQP_URL=amqp_url, **LIMITS)
    async with (
        serve_asgi(create_app(gateway_settings)) as gateway_url,
        fresh_vhost() as dispatcher_vhost,
        running_dispatcher(database_url, dispatcher_vhost, **LIMITS) as dispatcher,
    ):
        async with httpx.AsyncClient(base_url=gateway_url, headers=_client("192.0.2.1")) as c:
            advertiser = await create_advertiser(c)
            publisher = await create_publisher(c)
        yield Services(
            gateway_url, dispatcher.base_url, advertiser["api_key"], publisher["api_key"]
        )


def _client(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def as_client(address: str, **headers: str) -> dict[str, str]:
    """Headers making a request come from ``address`` (the servers trust loopback proxies)."""
    return {**_client(address), **headers}


ADMIN = ADMIN_HEADERS
