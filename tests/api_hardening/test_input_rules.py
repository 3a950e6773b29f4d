"""Hostile input on every API: NUL characters and impossible ids get a 422 saying so."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api_hardening.conftest import ADMIN, Services

NUL = "a\x00b"
TEMPLATE = "https://t.example/pb?cid={click_id}"


async def _catalogue(client: httpx.AsyncClient) -> dict[str, int]:
    publisher = (
        await client.post("/api/v1/publishers", json={"name": "nul"}, headers=ADMIN)
    ).json()
    advertiser = (
        await client.post("/api/v1/advertisers", json={"name": "nul"}, headers=ADMIN)
    ).json()
    offer = (
        await client.post(
            "/api/v1/offers",
            json={
                "advertiser_id": advertiser["id"],
                "name": "o",
                "url_template": "https://adv.example/?c={click_id}",
                "payout": "1",
            },
            headers=ADMIN,
        )
    ).json()
    return {"publisher": publisher["id"], "offer": offer["id"]}


def _assert_nul_refused(response: httpx.Response, *, closed_set: bool = False) -> None:
    """422 naming the NUL (or, for a field with a closed set of values, naming the values)."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    expected = "enum" if closed_set else None
    assert any(
        "NUL" in issue["msg"] or (expected is not None and issue["type"] == expected)
        for issue in detail
    ), detail


def gateway_cases(ids: dict[str, int]) -> list[tuple[str, str, dict[str, Any]]]:
    publisher, offer = ids["publisher"], ids["offer"]
    return [
        ("POST", "/api/v1/publishers", {"name": NUL}),
        ("POST", "/api/v1/advertisers", {"name": NUL}),
        ("PUT", f"/api/v1/publishers/{publisher}/postback", {"url_template": TEMPLATE + NUL}),
        (
            "PUT",
            f"/api/v1/publishers/{publisher}/postback",
            {"url_template": TEMPLATE, "security_token": NUL},
        ),
        (
            "POST",
            "/api/v1/offers",
            {
                "advertiser_id": 1,
                "name": "o",
                "url_template": "https://adv.example/?c={click_id}",
                "payout": "1",
                "os": [NUL],
            },
        ),
        ("PATCH", f"/api/v1/offers/{offer}", {"name": NUL}),
        (
            "POST",
            "/api/v1/smartlinks",
            {
                "publisher_id": publisher,
                "offer_ids": [offer],
                "fallback_url": f"https://f.example/{NUL}",
            },
        ),
        ("PATCH", "/api/v1/smartlinks/1", {"fallback_url": f"https://f.example/{NUL}"}),
    ]


@pytest.mark.parametrize("case", range(8))
async def test_nul_in_admin_json_is_422(services: Services, case: int) -> None:
    async with httpx.AsyncClient(base_url=services.gateway, timeout=30) as client:
        method, path, body = gateway_cases(await _catalogue(client))[case]
        response = await client.request(method, path, json=body, headers=ADMIN)
    _assert_nul_refused(response)


async def test_nul_in_a_conversion_is_422_on_json_and_s2s(services: Services) -> None:
    key = {"X-Api-Key": services.advertiser_key}
    async with httpx.AsyncClient(base_url=services.gateway, timeout=30) as client:
        posted = await client.post(
            "/api/v1/conversions", json={"click_id": 1, "txid": NUL}, headers=key
        )
        fired = await client.get(
            f"/api/v1/conversions/s2s?click_id=1&txid=t%00x&key={services.advertiser_key}"
        )
    _assert_nul_refused(posted)
    _assert_nul_refused(fired)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/api/v1/me/postback", {"url_template": TEMPLATE + NUL}),
        ("PUT", "/api/v1/me/postback", {"url_template": TEMPLATE, "security_token": NUL}),
        ("POST", "/api/v1/me/postback/preview", {"url_template": TEMPLATE + NUL}),
        ("POST", "/api/v1/me/postback/test", {"url_template": TEMPLATE + NUL}),
        ("GET", "/api/v1/me/postbacks?cursor=a%00b", None),
    ],
)
async def test_nul_on_the_publisher_api_is_422(
    services: Services, method: str, path: str, body: dict[str, Any] | None
) -> None:
    async with httpx.AsyncClient(base_url=services.dispatcher, timeout=30) as client:
        response = await client.request(
            method, path, json=body, headers={"X-Api-Key": services.publisher_key}
        )
    _assert_nul_refused(response)


async def test_nul_in_a_dead_letter_filter_is_422(services: Services) -> None:
    async with httpx.AsyncClient(base_url=services.dispatcher, timeout=30) as client:
        listed = await client.get("/api/v1/dead-letters?reason=a%00b", headers=ADMIN)
        replayed = await client.post(
            "/api/v1/dead-letters/replay", json={"reason": NUL, "dry_run": True}, headers=ADMIN
        )
    # reason is one of DeadLetterReason's values: a NUL-laden one is simply not among them.
    _assert_nul_refused(listed, closed_set=True)
    _assert_nul_refused(replayed, closed_set=True)


@pytest.mark.parametrize("dead_letter_id", [str(2**63), str(10**40), "0"])
@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("POST", "/replay"), ("DELETE", "")])
async def test_dead_letter_ids_that_cannot_exist_are_422(
    services: Services, dead_letter_id: str, method: str, suffix: str
) -> None:
    async with httpx.AsyncClient(base_url=services.dispatcher, timeout=30) as client:
        response = await client.request(
            method, f"/api/v1/dead-letters/{dead_letter_id}{suffix}", headers=ADMIN
        )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "dead_letter_id"]


@pytest.mark.parametrize("field", ["publisher_id", "offer_id"])
async def test_dead_letter_filter_ids_beyond_bigint_are_422(services: Services, field: str) -> None:
    async with httpx.AsyncClient(base_url=services.dispatcher, timeout=30) as client:
        listed = await client.get(f"/api/v1/dead-letters?{field}={2**63}", headers=ADMIN)
        purged = await client.post(
            "/api/v1/dead-letters/purge", json={field: 2**63, "dry_run": True}, headers=ADMIN
        )
    for response in (listed, purged):
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][-1] == field


async def test_every_operation_documents_the_shared_error_shape(services: Services) -> None:
    for base in (services.gateway, services.dispatcher):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            schema = (await client.get("/openapi.json")).json()
        error = {"$ref": "#/components/schemas/ErrorResponse"}
        assert "detail" in schema["components"]["schemas"]["ErrorResponse"]["properties"]
        for path, item in schema["paths"].items():
            for method, operation in item.items():
                client_errors = {
                    code: response
                    for code, response in operation["responses"].items()
                    if code.startswith("4")
                }
                assert "4XX" in client_errors, (method, path)
                for code, response in client_errors.items():
                    assert response["content"]["application/json"]["schema"] == error, (
                        method,
                        path,
                        code,
                    )


async def test_numbers_and_booleans_are_not_interchangeable(services: Services) -> None:
    """Found by schemathesis: pydantic's lax mode read 0 as false and true as 1."""
    async with httpx.AsyncClient(base_url=services.gateway, timeout=30) as client:
        ids = await _catalogue(client)
        flag = await client.patch(
            f"/api/v1/offers/{ids['offer']}", json={"is_active": 0}, headers=ADMIN
        )
        number = await client.patch(
            f"/api/v1/offers/{ids['offer']}", json={"weight": True}, headers=ADMIN
        )
        fine = await client.patch(
            f"/api/v1/offers/{ids['offer']}", json={"weight": 7, "is_active": True}, headers=ADMIN
        )
    async with httpx.AsyncClient(base_url=services.dispatcher, timeout=30) as client:
        dry_run = await client.post(
            "/api/v1/dead-letters/replay", json={"dry_run": 0}, headers=ADMIN
        )
    assert flag.status_code == 422 and flag.json()["detail"][0]["loc"] == ["body", "is_active"]
    assert number.status_code == 422 and number.json()["detail"][0]["loc"] == ["body", "weight"]
    assert dry_run.status_code == 422
    assert fine.status_code == 200 and fine.json()["weight"] == 7
