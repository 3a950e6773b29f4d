"""Advertiser security: the address allowlist (trusted and untrusted proxies), key rotation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from click_gateway.app import create_app
from click_gateway.settings import GatewaySettings
from postback_core.db.base import create_engine, create_sessionmaker
from postback_core.security import hash_api_key
from postback_dispatcher.publisher_api.repository import PublisherRepository
from tests.factories import (
    ADMIN_HEADERS,
    create_advertiser,
    create_click,
    create_offer,
    create_publisher,
    create_smartlink,
)
from tests.support.polling import wait_for
from tests.support.servers import serve_asgi


@dataclass
class Setup:
    advertiser_id: int
    key: str
    offer_id: int
    publisher_id: int
    smartlink_id: int
    database_url: str

    async def click(self) -> int:
        return await create_click(
            self.database_url,
            publisher_id=self.publisher_id,
            smartlink_id=self.smartlink_id,
            offer_id=self.offer_id,
        )


async def _make_setup(gateway: httpx.AsyncClient, database_url: str) -> Setup:
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(gateway, advertiser_id=advertiser["id"])
    publisher = await create_publisher(gateway)
    link = await create_smartlink(gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]])
    return Setup(
        advertiser["id"],
        advertiser["api_key"],
        offer["id"],
        publisher["id"],
        link["id"],
        database_url,
    )


@pytest.fixture
async def setup(gateway: httpx.AsyncClient, database_url: str) -> Setup:
    return await _make_setup(gateway, database_url)


async def _allow(gateway: httpx.AsyncClient, s: Setup, networks: list[str] | None) -> None:
    response = await gateway.patch(
        f"/api/v1/advertisers/{s.advertiser_id}",
        json={"allowed_ips": networks},
        headers=ADMIN_HEADERS,
    )
    assert response.status_code == 200, response.text
    assert response.json()["allowed_ips"] == networks


async def _post(
    client: httpx.AsyncClient, s: Setup, key: str | None = None, **headers: str
) -> httpx.Response:
    return await client.post(
        "/api/v1/conversions",
        json={"click_id": await s.click()},
        headers={"X-Api-Key": key or s.key, **headers},
    )


async def test_behind_a_trusted_proxy_the_forwarded_address_must_be_allowed(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    """The test gateway trusts 127.0.0.0/8 (where the client connects from)."""
    await _allow(gateway, setup, ["198.51.100.0/24", "2001:db8::1/128"])
    allowed = await _post(gateway, setup, **{"X-Forwarded-For": "198.51.100.7"})
    allowed_v6 = await _post(gateway, setup, **{"X-Forwarded-For": "2001:db8::1"})
    assert (allowed.status_code, allowed_v6.status_code) == (201, 201), allowed.text
    other = await _post(gateway, setup, **{"X-Forwarded-For": "203.0.113.9"})
    assert other.status_code == 403
    assert "allowed_ips" in other.json()["detail"] and "203.0.113.9" in other.json()["detail"]
    direct = await _post(gateway, setup)  # no header: the peer (127.0.0.1) is the client
    assert direct.status_code == 403
    s2s = await gateway.get(
        "/api/v1/conversions/s2s",
        params={"click_id": await setup.click(), "key": setup.key},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert s2s.status_code == 403

    await _allow(gateway, setup, None)  # any address again
    assert (await _post(gateway, setup, **{"X-Forwarded-For": "203.0.113.9"})).status_code == 201


@pytest.fixture(scope="module")
async def untrusting_gateway(database_url: str, amqp_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway that trusts no proxy: X-Forwarded-For is only a claim."""
    settings = GatewaySettings(DATABASE_URL=database_url, AMQP_URL=amqp_url, TRUSTED_PROXIES="")
    async with serve_asgi(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


async def test_without_trusted_proxies_a_forged_header_does_not_help(
    gateway: httpx.AsyncClient, untrusting_gateway: httpx.AsyncClient, setup: Setup
) -> None:
    await _allow(gateway, setup, ["198.51.100.0/24"])
    forged = await _post(untrusting_gateway, setup, **{"X-Forwarded-For": "198.51.100.7"})
    assert forged.status_code == 403
    assert "127.0.0.1" in forged.json()["detail"]
    # (Another advertiser: the other gateway caches the first one's allowlist for 30 s.)
    local = await _make_setup(gateway, setup.database_url)
    await _allow(gateway, local, ["127.0.0.1/32"])
    assert (await _post(untrusting_gateway, local)).status_code == 201
    spoofed = await _post(untrusting_gateway, local, **{"X-Forwarded-For": "198.51.100.7"})
    assert spoofed.status_code == 201  # the header is ignored: the peer is the client


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"allowed_ips": ["not-an-ip"]}, 422),
        ({"allowed_ips": ["10.0.0.0/33"]}, 422),
        ({"allowed_ips": ["1.2.3.4"] * 101}, 422),
        ({"allowed_ips": "10.0.0.0/8"}, 422),
        ({"name": "  "}, 422),
        ({"is_active": None}, 422),
    ],
)
async def test_bad_advertiser_updates_are_422(
    gateway: httpx.AsyncClient, setup: Setup, body: dict[str, Any], status: int
) -> None:
    response = await gateway.patch(
        f"/api/v1/advertisers/{setup.advertiser_id}", json=body, headers=ADMIN_HEADERS
    )
    assert response.status_code == status, response.text
    assert response.json()["detail"]


async def test_patch_edits_name_and_active_flag(gateway: httpx.AsyncClient, setup: Setup) -> None:
    path = f"/api/v1/advertisers/{setup.advertiser_id}"
    renamed = await gateway.patch(path, json={"name": " New name "}, headers=ADMIN_HEADERS)
    assert renamed.json()["name"] == "New name"
    assert (await gateway.patch(path, json={"is_active": False}, headers=ADMIN_HEADERS)).json()[
        "is_active"
    ] is False
    assert (await _post(gateway, setup)).status_code == 401
    missing = await gateway.patch(
        "/api/v1/advertisers/999999999", json={"name": "x"}, headers=ADMIN_HEADERS
    )
    assert missing.status_code == 404
    assert (await gateway.patch(path, json={"name": "x"})).status_code == 401


async def test_a_rotated_advertiser_key_keeps_working_for_the_grace_period(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    rotated = await gateway.post(
        f"/api/v1/advertisers/{setup.advertiser_id}/rotate-key", headers=ADMIN_HEADERS
    )
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["api_key"]
    assert new_key != setup.key and new_key.startswith("adv_")
    expires = datetime.fromisoformat(rotated.json()["previous_key_expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(minutes=5)
    assert (await _post(gateway, setup, new_key)).status_code == 201
    assert (await _post(gateway, setup)).status_code == 201  # the old key, within its grace

    # A short grace: the key it replaced (the one above) stops at once after it.
    again = await gateway.post(
        f"/api/v1/advertisers/{setup.advertiser_id}/rotate-key",
        json={"grace_seconds": 1},
        headers=ADMIN_HEADERS,
    )
    newest = again.json()["api_key"]
    assert (await _post(gateway, setup)).status_code == 401  # two rotations ago: gone
    assert (await _post(gateway, setup, newest)).status_code == 201

    async def stopped() -> bool:
        return (await _post(gateway, setup, new_key)).status_code == 401

    await wait_for(stopped, timeout=15, interval=0.2, message="the old key to stop")
    assert (await _post(gateway, setup, newest)).status_code == 201
    missing = await gateway.post("/api/v1/advertisers/999999999/rotate-key", headers=ADMIN_HEADERS)
    assert missing.status_code == 404
    bad = await gateway.post(
        f"/api/v1/advertisers/{setup.advertiser_id}/rotate-key",
        json={"grace_seconds": -1},
        headers=ADMIN_HEADERS,
    )
    assert bad.status_code == 422


async def test_a_rotated_publisher_key_works_in_the_publisher_api_until_its_grace_ends(
    gateway: httpx.AsyncClient, database_url: str
) -> None:
    publisher = await create_publisher(gateway)
    old_key = publisher["api_key"]
    rotated = await gateway.post(
        f"/api/v1/publishers/{publisher['id']}/rotate-key",
        json={"grace_seconds": 2},
        headers=ADMIN_HEADERS,
    )
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["api_key"]
    assert new_key.startswith("pub_")

    engine = create_engine(database_url)
    sessions: async_sessionmaker[AsyncSession] = create_sessionmaker(engine)

    async def holder(key: str) -> int | None:
        """The dispatcher's own lookup (publisher API and pages)."""
        async with sessions() as session:
            found = await PublisherRepository(session).active_publisher_by_key_hash(
                hash_api_key(key)
            )
            return found.id if found is not None else None

    try:
        assert await holder(new_key) == publisher["id"]
        assert await holder(old_key) == publisher["id"]

        async def old_key_stopped() -> bool:
            return await holder(old_key) is None

        await wait_for(old_key_stopped, timeout=15, interval=0.2, message="the old key to stop")
        assert await holder(new_key) == publisher["id"]
    finally:
        await engine.dispose()
    missing = await gateway.post("/api/v1/publishers/999999999/rotate-key", headers=ADMIN_HEADERS)
    assert missing.status_code == 404
