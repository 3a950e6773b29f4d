"""Offers through the admin API: URL macros, money and targeting rules."""

from __future__ import annotations

import httpx
import pytest

from click_gateway.offers.macros import OFFER_URL_MACROS
from tests.factories import ADMIN_HEADERS, create_advertiser, create_offer, unique_name

H = ADMIN_HEADERS
URL = "https://adv.example/install?clickid={click_id}"


async def _post_offer(gateway: httpx.AsyncClient, **overrides: object) -> httpx.Response:
    if "advertiser_id" not in overrides:
        overrides["advertiser_id"] = (await create_advertiser(gateway))["id"]
    body = {"name": unique_name("offer"), "url_template": URL, "payout": "0.50", **overrides}
    return await gateway.post("/api/v1/offers", json=body, headers=H)


async def test_create_offer_normalises_targeting(gateway: httpx.AsyncClient) -> None:
    advertiser = await create_advertiser(gateway)
    response = await _post_offer(
        gateway,
        advertiser_id=advertiser["id"],
        payout="1.2345",
        countries=["us", " De ", "US"],
        os=["Android", "iOS"],
        devices=["mobile", "tablet"],
        weight=250,
    )
    assert response.status_code == 201, response.text
    offer = response.json()
    assert offer["advertiser_id"] == advertiser["id"]
    assert offer["payout"] == "1.2345"
    assert offer["countries"] == ["US", "DE"]
    assert offer["os"] == ["Android", "iOS"]
    assert offer["devices"] == ["mobile", "tablet"]
    assert offer["weight"] == 250
    assert offer["is_active"] is True

    fetched = await gateway.get(f"/api/v1/offers/{offer['id']}", headers=H)
    assert fetched.status_code == 200
    assert fetched.json() == offer


async def test_offer_defaults_target_everyone(gateway: httpx.AsyncClient) -> None:
    response = await _post_offer(gateway, payout=2, countries=[])
    assert response.status_code == 201
    offer = response.json()
    assert offer["payout"] == "2.0000"
    assert offer["countries"] is None and offer["os"] is None and offer["devices"] is None
    assert offer["weight"] == 100


async def test_every_agreed_click_macro_is_accepted(gateway: httpx.AsyncClient) -> None:
    query = "&".join(f"{name}={{{name}}}" for name in sorted(OFFER_URL_MACROS))
    response = await _post_offer(gateway, url_template=f"https://adv.example/i?{query}")
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"url_template": "https://adv.example/i?c={click_id}&p={payot}"}, "{payot}"),
        ({"url_template": "https://adv.example/i?c={clickid}"}, "{clickid}"),
        ({"url_template": "https://adv.example/i?ext={external_id}"}, "{click_id}"),
        ({"url_template": "adv.example/i?c={click_id}"}, "absolute"),
        ({"url_template": "javascript:alert(1)//{click_id}"}, "absolute"),
        ({"payout": "-0.01"}, "payout"),
        ({"payout": "0.00001"}, "payout"),
        ({"payout": "abc"}, "payout"),
        ({"payout": "NaN"}, "payout"),
        ({"payout": "Infinity"}, "payout"),
        ({"payout": "20000"}, "payout"),
        ({"payout": "1e30"}, "payout"),
        ({"countries": ["USA"]}, "countries"),
        ({"countries": ["1A"]}, "countries"),
        ({"devices": ["phone"]}, "devices"),
        ({"os": [""]}, "os"),
        ({"weight": -1}, "weight"),
        ({"advertiser_id": 987654321}, "advertiser 987654321"),
        ({"advertiser_id": "x"}, "advertiser_id"),
        ({"name": ""}, "name"),
    ],
)
async def test_bad_offer_is_422(
    gateway: httpx.AsyncClient, overrides: dict[str, object], expected: str
) -> None:
    response = await _post_offer(gateway, **overrides)
    assert response.status_code == 422, response.text
    assert expected in str(response.json()["detail"])


async def test_unknown_offer_macros_are_listed(gateway: httpx.AsyncClient) -> None:
    response = await _post_offer(
        gateway, url_template="https://adv.example/i?c={click_id}&a={aff_id}&s={sub6}"
    )
    assert response.status_code == 422
    assert response.json()["unknown_macros"] == ["aff_id", "sub6"]


async def test_patch_offer_changes_fields_and_bumps_updated_at(
    gateway: httpx.AsyncClient,
) -> None:
    offer = await create_offer(gateway, countries=["US"])
    response = await gateway.patch(
        f"/api/v1/offers/{offer['id']}",
        json={"is_active": False, "weight": 7, "payout": "3.1", "countries": None},
        headers=H,
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["is_active"] is False
    assert patched["weight"] == 7
    assert patched["payout"] == "3.1000"
    assert patched["countries"] is None
    assert patched["name"] == offer["name"]
    assert patched["updated_at"] > offer["updated_at"]
    assert (await gateway.get(f"/api/v1/offers/{offer['id']}", headers=H)).json() == patched


async def test_patch_offer_targeting_only(gateway: httpx.AsyncClient) -> None:
    offer = await create_offer(gateway)
    response = await gateway.patch(
        f"/api/v1/offers/{offer['id']}",
        json={"devices": ["desktop"], "os": ["Windows"], "countries": ["gb"]},
        headers=H,
    )
    assert response.status_code == 200
    assert response.json()["devices"] == ["desktop"]
    assert response.json()["countries"] == ["GB"]
    assert response.json()["payout"] == offer["payout"]


@pytest.mark.parametrize(
    "body",
    [
        {"payout": None},
        {"payout": "-1"},
        {"payout": "99999"},
        {"weight": None},
        {"is_active": None},
        {"url_template": "https://x.example/?no=macro"},
        {"devices": ["watch"]},
    ],
)
async def test_bad_offer_patch_is_422(gateway: httpx.AsyncClient, body: dict[str, object]) -> None:
    offer = await create_offer(gateway)
    response = await gateway.patch(f"/api/v1/offers/{offer['id']}", json=body, headers=H)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


async def test_unknown_offer_is_404(gateway: httpx.AsyncClient) -> None:
    assert (await gateway.get("/api/v1/offers/987654321", headers=H)).status_code == 404
    response = await gateway.patch("/api/v1/offers/987654321", json={"weight": 1}, headers=H)
    assert response.status_code == 404
    assert response.json()["detail"] == "offer 987654321 not found"


async def test_list_offers_by_advertiser(gateway: httpx.AsyncClient) -> None:
    advertiser = await create_advertiser(gateway)
    mine = [await create_offer(gateway, advertiser_id=advertiser["id"]) for _ in range(3)]
    await create_offer(gateway)  # someone else's
    listed = await gateway.get(
        f"/api/v1/offers?advertiser_id={advertiser['id']}&limit=2", headers=H
    )
    page = listed.json()
    assert [o["id"] for o in page["items"]] == [mine[0]["id"], mine[1]["id"]]
    rest = await gateway.get(
        f"/api/v1/offers?advertiser_id={advertiser['id']}&after_id={page['next_after_id']}",
        headers=H,
    )
    assert [o["id"] for o in rest.json()["items"]] == [mine[2]["id"]]
    assert rest.json()["next_after_id"] is None
