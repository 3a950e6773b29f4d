"""SmartLinks through the admin API: codes, URLs, offer sets."""

from __future__ import annotations

import re

import httpx
import pytest

from click_gateway.app import create_app
from click_gateway.settings import GatewaySettings
from tests.factories import (
    ADMIN_HEADERS,
    create_offer,
    create_publisher,
    create_smartlink,
    unique_name,
)
from tests.support.servers import serve_asgi

H = ADMIN_HEADERS


async def test_generated_code_is_short_url_safe_and_unique(
    gateway: httpx.AsyncClient, gateway_url: str
) -> None:
    publisher = await create_publisher(gateway)
    offer = await create_offer(gateway)
    links = [
        await create_smartlink(gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]])
        for _ in range(5)
    ]
    codes = {link["code"] for link in links}
    assert len(codes) == 5
    for link in links:
        assert re.fullmatch(r"[A-Za-z0-9_-]{8}", link["code"])
        assert link["url"] == f"{gateway_url}/get/{link['code']}"
        assert link["publisher_id"] == publisher["id"]
        assert link["offer_ids"] == [offer["id"]]
        assert link["is_active"] is True


async def test_create_with_own_code_and_fallback(gateway: httpx.AsyncClient) -> None:
    code = unique_name("Summer_sale")
    offers = [await create_offer(gateway) for _ in range(2)]
    link = await create_smartlink(
        gateway,
        offer_ids=[offers[1]["id"], offers[0]["id"], offers[1]["id"]],
        code=code,
        fallback_url="https://fallback.example/landing",
    )
    assert link["code"] == code
    assert link["url"].endswith(f"/get/{code}")
    assert link["offer_ids"] == sorted({offers[0]["id"], offers[1]["id"]})
    assert link["fallback_url"] == "https://fallback.example/landing"
    fetched = await gateway.get(f"/api/v1/smartlinks/{link['id']}", headers=H)
    assert fetched.status_code == 200
    assert fetched.json() == link


async def test_duplicate_code_is_409(gateway: httpx.AsyncClient) -> None:
    code = unique_name("dup")
    first = await create_smartlink(gateway, code=code)
    response = await gateway.post(
        "/api/v1/smartlinks",
        json={"publisher_id": first["publisher_id"], "offer_ids": first["offer_ids"], "code": code},
        headers=H,
    )
    assert response.status_code == 409
    assert code in response.json()["detail"]


async def test_fallback_only_smartlink(gateway: httpx.AsyncClient) -> None:
    link = await create_smartlink(gateway, offer_ids=[], fallback_url="https://fallback.example/")
    assert link["offer_ids"] == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"code": "ab"}, "code"),
        ({"code": "has space"}, "code"),
        ({"code": "slash/code"}, "code"),
        ({"code": "x" * 65}, "code"),
        ({"fallback_url": "not a url"}, "fallback_url"),
        ({"fallback_url": "ftp://x.example/"}, "fallback_url"),
        ({"offer_ids": [987654321]}, "987654321"),
        ({"offer_ids": [0]}, "offer"),
        ({"offer_ids": [2**64]}, "offer"),
        ({"offer_ids": "1"}, "offer_ids"),
        ({"offer_ids": []}, "fallback_url"),
        ({"publisher_id": 987654321}, "publisher 987654321"),
        ({"publisher_id": None}, "publisher_id"),
    ],
)
async def test_bad_smartlink_is_422(
    gateway: httpx.AsyncClient, body: dict[str, object], expected: str
) -> None:
    publisher = await create_publisher(gateway)
    offer = await create_offer(gateway)
    full = {"publisher_id": publisher["id"], "offer_ids": [offer["id"]], **body}
    response = await gateway.post("/api/v1/smartlinks", json=full, headers=H)
    assert response.status_code == 422, response.text
    assert expected in str(response.json()["detail"])


async def test_patch_smartlink(gateway: httpx.AsyncClient) -> None:
    link = await create_smartlink(gateway)
    other = await create_offer(gateway)
    response = await gateway.patch(
        f"/api/v1/smartlinks/{link['id']}",
        json={"is_active": False, "offer_ids": [other["id"]], "fallback_url": "https://f.example/"},
        headers=H,
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["is_active"] is False
    assert patched["offer_ids"] == [other["id"]]
    assert patched["fallback_url"] == "https://f.example/"
    assert patched["code"] == link["code"]
    assert patched["updated_at"] > link["updated_at"]

    cleared = await gateway.patch(
        f"/api/v1/smartlinks/{link['id']}", json={"fallback_url": None}, headers=H
    )
    assert cleared.json()["fallback_url"] is None
    assert cleared.json()["is_active"] is False
    assert cleared.json()["updated_at"] > patched["updated_at"]


async def test_patch_offer_set_only_bumps_updated_at(gateway: httpx.AsyncClient) -> None:
    link = await create_smartlink(gateway)
    other = await create_offer(gateway)
    response = await gateway.patch(
        f"/api/v1/smartlinks/{link['id']}",
        json={"offer_ids": link["offer_ids"] + [other["id"]]},
        headers=H,
    )
    assert response.status_code == 200
    assert response.json()["offer_ids"] == sorted(link["offer_ids"] + [other["id"]])
    assert response.json()["updated_at"] > link["updated_at"]


@pytest.mark.parametrize(
    "body",
    [{"offer_ids": [987654321]}, {"offer_ids": None}, {"is_active": None}, {"fallback_url": "x"}],
)
async def test_bad_smartlink_patch_is_422(
    gateway: httpx.AsyncClient, body: dict[str, object]
) -> None:
    link = await create_smartlink(gateway)
    response = await gateway.patch(f"/api/v1/smartlinks/{link['id']}", json=body, headers=H)
    assert response.status_code == 422
    assert response.json()["detail"]
    unchanged = (await gateway.get(f"/api/v1/smartlinks/{link['id']}", headers=H)).json()
    assert unchanged == link


async def test_unknown_smartlink_is_404(gateway: httpx.AsyncClient) -> None:
    assert (await gateway.get("/api/v1/smartlinks/987654321", headers=H)).status_code == 404
    response = await gateway.patch(
        "/api/v1/smartlinks/987654321", json={"is_active": False}, headers=H
    )
    assert response.status_code == 404
    assert response.json()["detail"] == "smartlink 987654321 not found"


async def test_list_smartlinks_by_publisher(gateway: httpx.AsyncClient) -> None:
    publisher = await create_publisher(gateway)
    offer = await create_offer(gateway)
    mine = [
        await create_smartlink(gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]])
        for _ in range(2)
    ]
    await create_smartlink(gateway, offer_ids=[offer["id"]])
    listed = await gateway.get(f"/api/v1/smartlinks?publisher_id={publisher['id']}", headers=H)
    assert listed.status_code == 200
    assert listed.json()["items"] == mine


async def test_public_base_url_is_used_for_smartlink_urls(database_url: str, amqp_url: str) -> None:
    settings = GatewaySettings(
        DATABASE_URL=database_url, AMQP_URL=amqp_url, PUBLIC_BASE_URL="https://go.example.com/"
    )
    async with serve_asgi(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        link = await create_smartlink(client, code=unique_name("public"))
        assert link["url"] == f"https://go.example.com/get/{link['code']}"
        listed = await client.get(f"/api/v1/smartlinks/{link['id']}", headers=H)
        assert listed.json()["url"] == link["url"]
