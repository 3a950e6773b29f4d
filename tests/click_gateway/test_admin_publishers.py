"""Publishers and their postback settings through the admin API."""

from __future__ import annotations

import httpx
import pytest

from postback_core.security import hash_api_key
from tests.factories import ADMIN_HEADERS, create_publisher, unique_name

H = ADMIN_HEADERS


async def test_create_publisher_returns_its_key_once(gateway: httpx.AsyncClient) -> None:
    name = unique_name("Acme")
    response = await gateway.post("/api/v1/publishers", json={"name": f"  {name} "}, headers=H)
    assert response.status_code == 201
    created = response.json()
    assert created["name"] == name
    assert created["api_key"].startswith("pub_") and len(created["api_key"]) > 30
    assert created["is_active"] is True

    fetched = await gateway.get(f"/api/v1/publishers/{created['id']}", headers=H)
    assert fetched.status_code == 200
    assert "api_key" not in fetched.json()
    assert fetched.json()["name"] == name
    assert created["api_key"] not in fetched.text
    assert hash_api_key(created["api_key"]) not in fetched.text


async def test_publisher_keys_are_distinct(gateway: httpx.AsyncClient) -> None:
    first = await create_publisher(gateway)
    second = await create_publisher(gateway)
    assert first["api_key"] != second["api_key"]
    assert first["id"] != second["id"]


async def test_list_publishers_pages_by_id(gateway: httpx.AsyncClient) -> None:
    created = [await create_publisher(gateway) for _ in range(3)]
    after = created[0]["id"] - 1
    page1 = (await gateway.get(f"/api/v1/publishers?limit=2&after_id={after}", headers=H)).json()
    assert [p["id"] for p in page1["items"]] == [created[0]["id"], created[1]["id"]]
    assert page1["next_after_id"] == created[1]["id"]
    page2 = (
        await gateway.get(
            f"/api/v1/publishers?limit=2&after_id={page1['next_after_id']}", headers=H
        )
    ).json()
    assert page2["items"][0]["id"] == created[2]["id"]
    assert all("api_key" not in p for p in page1["items"] + page2["items"])


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "after_id=-1", "limit=abc"])
async def test_bad_pagination_is_422(gateway: httpx.AsyncClient, query: str) -> None:
    response = await gateway.get(f"/api/v1/publishers?{query}", headers=H)
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize("publisher_id", ["999999999", str(2**63 - 1)])
async def test_unknown_publisher_is_404_json(gateway: httpx.AsyncClient, publisher_id: str) -> None:
    for path in (
        f"/api/v1/publishers/{publisher_id}",
        f"/api/v1/publishers/{publisher_id}/postback",
    ):
        response = await gateway.get(path, headers=H)
        assert response.status_code == 404, path
        assert "not found" in response.json()["detail"]
    response = await gateway.put(
        f"/api/v1/publishers/{publisher_id}/postback",
        json={"url_template": "https://t.example/pb?cid={click_id}"},
        headers=H,
    )
    assert response.status_code == 404


@pytest.mark.parametrize("publisher_id", [str(2**63), str(10**30), "0", "-5"])
async def test_an_id_that_cannot_exist_is_a_422_naming_the_path(
    gateway: httpx.AsyncClient, publisher_id: str
) -> None:
    """Ids are BIGINT: out of range is a client error, never a database overflow."""
    for method, path in (
        ("GET", f"/api/v1/publishers/{publisher_id}"),
        ("GET", f"/api/v1/publishers/{publisher_id}/postback"),
        ("PUT", f"/api/v1/publishers/{publisher_id}/postback"),
    ):
        response = await gateway.request(
            method, path, json={"url_template": "https://t.example/pb?cid={click_id}"}, headers=H
        )
        assert response.status_code == 422, path
        assert response.json()["detail"][0]["loc"] == ["path", "publisher_id"]


async def test_non_numeric_id_is_a_json_error(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/api/v1/publishers/abc", headers=H)
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "   "}, {"name": "x" * 201}, {"name": 5}, ["name"], None],
)
async def test_bad_publisher_body_is_422(gateway: httpx.AsyncClient, body: object) -> None:
    response = await gateway.post("/api/v1/publishers", json=body, headers=H)
    assert response.status_code == 422
    assert response.json()["detail"]


async def test_malformed_json_is_422(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(
        "/api/v1/publishers",
        content=b"{not json",
        headers={**H, "Content-Type": "application/json"},
    )
    assert response.status_code == 422


async def test_save_postback_settings_masks_the_token(gateway: httpx.AsyncClient) -> None:
    publisher = await create_publisher(gateway)
    template = "https://tracker.example/pb?cid={external_id}&sum={payout}&t={security_token}"
    response = await gateway.put(
        f"/api/v1/publishers/{publisher['id']}/postback",
        json={"url_template": template, "security_token": "secret_token_123"},
        headers=H,
    )
    assert response.status_code == 200
    saved = response.json()
    assert saved["publisher_id"] == publisher["id"]
    assert saved["url_template"] == template
    assert saved["security_token"] == "****_123"
    assert saved["warnings"] == []
    assert saved["updated_at"]
    assert "secret_token_123" not in response.text

    fetched = await gateway.get(f"/api/v1/publishers/{publisher['id']}/postback", headers=H)
    assert fetched.status_code == 200
    assert fetched.json() == saved


async def test_postback_settings_can_be_replaced(gateway: httpx.AsyncClient) -> None:
    publisher = await create_publisher(gateway)
    path = f"/api/v1/publishers/{publisher['id']}/postback"
    first = await gateway.put(
        path, json={"url_template": "https://a.example/?c={click_id}"}, headers=H
    )
    second = await gateway.put(
        path,
        json={"url_template": "https://b.example/?c={external_id}", "security_token": "tok"},
        headers=H,
    )
    assert first.status_code == second.status_code == 200
    assert second.json()["updated_at"] > first.json()["updated_at"]
    fetched = (await gateway.get(path, headers=H)).json()
    assert fetched["url_template"] == "https://b.example/?c={external_id}"
    assert fetched["security_token"] == "****"


@pytest.mark.parametrize("removal", [None, "", "   "], ids=["null", "empty", "blank"])
async def test_omitted_token_is_kept_and_null_or_empty_removes_it(
    gateway: httpx.AsyncClient, removal: str | None
) -> None:
    """The same rule as the publisher API: omitted = keep, null or "" = remove."""
    publisher = await create_publisher(gateway)
    path = f"/api/v1/publishers/{publisher['id']}/postback"
    template = "https://t.example/pb?cid={external_id}&t={security_token}"
    await gateway.put(
        path, json={"url_template": template, "security_token": "keep_me_please_42"}, headers=H
    )

    kept = await gateway.put(path, json={"url_template": template + "&v=2"}, headers=H)
    assert kept.status_code == 200
    assert kept.json()["security_token"] == "****e_42"
    assert kept.json()["warnings"] == []
    assert (await gateway.get(path, headers=H)).json()["security_token"] == "****e_42"

    removed = await gateway.put(
        path, json={"url_template": template, "security_token": removal}, headers=H
    )
    assert removed.status_code == 200
    assert removed.json()["security_token"] is None
    assert any("security_token" in w for w in removed.json()["warnings"])
    assert (await gateway.get(path, headers=H)).json()["security_token"] is None


async def test_unknown_macro_is_422_naming_it(gateway: httpx.AsyncClient) -> None:
    publisher = await create_publisher(gateway)
    path = f"/api/v1/publishers/{publisher['id']}/postback"
    response = await gateway.put(
        path,
        json={"url_template": "https://t.example/pb?cid={external_id}&sum={payot}&x={clickid}"},
        headers=H,
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "{payot}" in detail and "{clickid}" in detail
    assert response.json()["unknown_macros"] == ["payot", "clickid"]
    # Nothing was saved.
    assert (await gateway.get(path, headers=H)).status_code == 404


async def test_template_without_click_reference_is_saved_with_a_warning(
    gateway: httpx.AsyncClient,
) -> None:
    publisher = await create_publisher(gateway)
    path = f"/api/v1/publishers/{publisher['id']}/postback"
    template = "https://t.example/pb?sum={payout}"
    response = await gateway.put(path, json={"url_template": template}, headers=H)
    assert response.status_code == 200
    warnings = response.json()["warnings"]
    assert any("{external_id}" in w and "{click_id}" in w for w in warnings)
    fetched = (await gateway.get(path, headers=H)).json()
    assert fetched["url_template"] == template
    assert fetched["warnings"] == warnings


async def test_security_token_macro_without_token_warns(gateway: httpx.AsyncClient) -> None:
    publisher = await create_publisher(gateway)
    response = await gateway.put(
        f"/api/v1/publishers/{publisher['id']}/postback",
        json={"url_template": "https://t.example/pb?c={click_id}&t={security_token}"},
        headers=H,
    )
    assert response.status_code == 200
    assert any("security_token" in w for w in response.json()["warnings"])
    assert response.json()["security_token"] is None


@pytest.mark.parametrize(
    "template",
    [
        "",
        "tracker.example/pb?c={click_id}",
        "/relative?c={click_id}",
        "ftp://t.example/?c={click_id}",
        "https://t.example/pb?c={click_id} x",
        "https://t.example/" + "a" * 2100,
    ],
)
async def test_bad_postback_template_is_422(gateway: httpx.AsyncClient, template: str) -> None:
    publisher = await create_publisher(gateway)
    response = await gateway.put(
        f"/api/v1/publishers/{publisher['id']}/postback",
        json={"url_template": template},
        headers=H,
    )
    assert response.status_code == 422
    assert response.json()["detail"]


async def test_postback_body_must_have_a_template(gateway: httpx.AsyncClient) -> None:
    publisher = await create_publisher(gateway)
    response = await gateway.put(
        f"/api/v1/publishers/{publisher['id']}/postback",
        json={"security_token": "abc"},
        headers=H,
    )
    assert response.status_code == 422
