"""Every admin endpoint needs the operator's bearer token."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import ADMIN_HEADERS, create_publisher

ADMIN_CALLS = [
    ("GET", "/api/v1/publishers"),
    ("POST", "/api/v1/publishers"),
    ("GET", "/api/v1/publishers/1"),
    ("GET", "/api/v1/publishers/1/postback"),
    ("PUT", "/api/v1/publishers/1/postback"),
    ("GET", "/api/v1/advertisers"),
    ("POST", "/api/v1/advertisers"),
    ("GET", "/api/v1/advertisers/1"),
    ("GET", "/api/v1/offers"),
    ("POST", "/api/v1/offers"),
    ("GET", "/api/v1/offers/1"),
    ("PATCH", "/api/v1/offers/1"),
    ("GET", "/api/v1/smartlinks"),
    ("POST", "/api/v1/smartlinks"),
    ("GET", "/api/v1/smartlinks/1"),
    ("PATCH", "/api/v1/smartlinks/1"),
]
BAD_HEADERS = [
    pytest.param({}, id="no-header"),
    pytest.param({"Authorization": "Bearer wrong-token-0123456789abcdef"}, id="wrong-token"),
    pytest.param({"Authorization": ADMIN_HEADERS["Authorization"][7:]}, id="no-scheme"),
    pytest.param(
        {"Authorization": "Basic " + ADMIN_HEADERS["Authorization"][7:]}, id="basic-scheme"
    ),
    pytest.param({"Authorization": "Bearer"}, id="empty-token"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
@pytest.mark.parametrize("headers", BAD_HEADERS)
async def test_admin_endpoint_refuses_without_the_admin_token(
    gateway: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = await gateway.request(method, path, json={"name": "x"}, headers=headers)
    assert response.status_code == 401
    assert "admin" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


async def test_refused_create_leaves_nothing_behind(gateway: httpx.AsyncClient) -> None:
    before = (await gateway.get("/api/v1/publishers?limit=500", headers=ADMIN_HEADERS)).json()
    response = await gateway.post("/api/v1/publishers", json={"name": "intruder"})
    assert response.status_code == 401
    after = (await gateway.get("/api/v1/publishers?limit=500", headers=ADMIN_HEADERS)).json()
    assert [p["name"] for p in after["items"]].count("intruder") == 0
    assert len(after["items"]) >= len(before["items"])


async def test_the_right_token_is_accepted(gateway: httpx.AsyncClient) -> None:
    publisher = await create_publisher(gateway)
    response = await gateway.get(f"/api/v1/publishers/{publisher['id']}", headers=ADMIN_HEADERS)
    assert response.status_code == 200


async def test_openapi_documents_the_admin_and_conversion_api(gateway: httpx.AsyncClient) -> None:
    schema = (await gateway.get("/openapi.json")).json()
    for path in (
        "/api/v1/publishers",
        "/api/v1/publishers/{publisher_id}/postback",
        "/api/v1/advertisers",
        "/api/v1/offers/{offer_id}",
        "/api/v1/smartlinks/{smartlink_id}",
        "/api/v1/conversions",
        "/api/v1/conversions/s2s",
    ):
        assert path in schema["paths"], path
    assert set(schema["paths"]["/api/v1/conversions"]["post"]["responses"]) >= {
        "200",
        "201",
        "401",
        "403",
        "404",
        "422",
    }
