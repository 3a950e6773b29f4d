"""Advertisers through the admin API."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import ADMIN_HEADERS, create_advertiser, unique_name

H = ADMIN_HEADERS


async def test_create_advertiser_returns_an_adv_key(gateway: httpx.AsyncClient) -> None:
    name = unique_name("Games Inc")
    response = await gateway.post("/api/v1/advertisers", json={"name": name}, headers=H)
    assert response.status_code == 201
    created = response.json()
    assert created["name"] == name
    assert created["api_key"].startswith("adv_")

    fetched = await gateway.get(f"/api/v1/advertisers/{created['id']}", headers=H)
    assert fetched.status_code == 200
    assert fetched.json()["name"] == name
    assert "api_key" not in fetched.json()


async def test_list_advertisers(gateway: httpx.AsyncClient) -> None:
    created = [await create_advertiser(gateway) for _ in range(2)]
    listed = (
        await gateway.get(f"/api/v1/advertisers?after_id={created[0]['id'] - 1}", headers=H)
    ).json()
    ids = [a["id"] for a in listed["items"]]
    assert ids[:2] == [created[0]["id"], created[1]["id"]]
    assert ids == sorted(ids)


@pytest.mark.parametrize("advertiser_id", ["987654321", str(2**63 - 1)])
async def test_unknown_advertiser_is_404(gateway: httpx.AsyncClient, advertiser_id: str) -> None:
    response = await gateway.get(f"/api/v1/advertisers/{advertiser_id}", headers=H)
    assert response.status_code == 404
    assert response.json()["detail"]


async def test_bad_advertiser_body_is_422(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/api/v1/advertisers", json={"nom": "x"}, headers=H)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]


@pytest.mark.parametrize("advertiser_id", [str(2**64), "0"])
async def test_an_advertiser_id_out_of_range_is_422(
    gateway: httpx.AsyncClient, advertiser_id: str
) -> None:
    response = await gateway.get(f"/api/v1/advertisers/{advertiser_id}", headers=H)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "advertiser_id"]
