"""Goals per offer: the default goal, fixed and revenue-share payouts, one or many per click."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.factories import (
    ADMIN_HEADERS,
    create_advertiser,
    create_click,
    create_offer,
    create_publisher,
    create_smartlink,
)


class Offer:
    def __init__(self, advertiser: dict[str, Any], offer: dict[str, Any], link: dict[str, Any]):
        self.key = advertiser["api_key"]
        self.id = offer["id"]
        self.publisher_id = link["publisher_id"]
        self.smartlink_id = link["id"]


@pytest.fixture
async def offer(gateway: httpx.AsyncClient) -> Offer:
    advertiser = await create_advertiser(gateway)
    created = await create_offer(gateway, advertiser_id=advertiser["id"], payout="0.75")
    publisher = await create_publisher(gateway)
    link = await create_smartlink(gateway, publisher_id=publisher["id"], offer_ids=[created["id"]])
    return Offer(advertiser, created, link)


async def _goals(gateway: httpx.AsyncClient, offer_id: int) -> dict[str, dict[str, Any]]:
    response = await gateway.get(f"/api/v1/offers/{offer_id}/goals", headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.text
    return {g["name"]: g for g in response.json()}


async def _add_goal(gateway: httpx.AsyncClient, offer_id: int, **body: Any) -> dict[str, Any]:
    response = await gateway.post(
        f"/api/v1/offers/{offer_id}/goals", json=body, headers=ADMIN_HEADERS
    )
    assert response.status_code == 201, response.text
    goal: dict[str, Any] = response.json()
    return goal


async def _convert(
    gateway: httpx.AsyncClient,
    database_url: str,
    offer: Offer,
    click_id: int | None = None,
    **body: Any,
) -> httpx.Response:
    if click_id is None:
        click_id = await create_click(
            database_url,
            publisher_id=offer.publisher_id,
            smartlink_id=offer.smartlink_id,
            offer_id=offer.id,
        )
    return await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id, **body}, headers={"X-Api-Key": offer.key}
    )


async def test_a_new_offer_has_a_default_goal_that_follows_its_payout(
    gateway: httpx.AsyncClient, offer: Offer
) -> None:
    default = (await _goals(gateway, offer.id))["default"]
    assert default["payout"] == "0.7500"
    assert default["revenue_share_percent"] is None
    assert default["hold_days"] == 0
    assert default["allow_multiple"] is True

    patched = await gateway.patch(
        f"/api/v1/offers/{offer.id}", json={"payout": "1.10"}, headers=ADMIN_HEADERS
    )
    assert patched.status_code == 200
    assert (await _goals(gateway, offer.id))["default"]["payout"] == "1.1000"

    # And the other way round: the default goal's payout is the offer's payout.
    goal_id = default["id"]
    response = await gateway.patch(
        f"/api/v1/offers/{offer.id}/goals/{goal_id}", json={"payout": "2"}, headers=ADMIN_HEADERS
    )
    assert response.status_code == 200, response.text
    offer_now = await gateway.get(f"/api/v1/offers/{offer.id}", headers=ADMIN_HEADERS)
    assert offer_now.json()["payout"] == "2.0000"
    assert offer_now.json()["attribution_window_days"] == 30


async def test_conversion_without_goal_is_the_default_goal(
    gateway: httpx.AsyncClient, offer: Offer, database_url: str
) -> None:
    response = await _convert(gateway, database_url, offer)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["goal"], body["payout"], body["status"], body["reject_reason"]) == (
        "default",
        "0.7500",
        "approved",
        None,
    )


async def test_fixed_and_revenue_share_goals_pay_their_own_amounts(
    gateway: httpx.AsyncClient, offer: Offer, database_url: str
) -> None:
    await _add_goal(gateway, offer.id, name="registration", payout="0.20")
    await _add_goal(gateway, offer.id, name="purchase", revenue_share_percent="12.5")
    click_id = await create_click(
        database_url,
        publisher_id=offer.publisher_id,
        smartlink_id=offer.smartlink_id,
        offer_id=offer.id,
    )
    registration = await _convert(gateway, database_url, offer, click_id, goal="registration")
    purchase = await _convert(
        gateway, database_url, offer, click_id, goal="purchase", amount="199.99"
    )
    install = await _convert(gateway, database_url, offer, click_id)
    assert (registration.status_code, purchase.status_code, install.status_code) == (201,) * 3
    assert registration.json()["payout"] == "0.2000"
    # 12.5 % of 199.99 = 24.99875 → 24.9988 (money: Decimal, half up, 4 places).
    assert purchase.json()["payout"] == "24.9988"
    assert purchase.json()["amount"] == "199.9900"
    assert install.json()["goal"] == "default"
    ids = {r.json()["conversion_id"] for r in (registration, purchase, install)}
    assert len(ids) == 3  # one click, three goals, three conversions

    without_amount = await _convert(gateway, database_url, offer, click_id, goal="purchase")
    assert without_amount.status_code == 422
    assert "amount" in without_amount.json()["detail"]


async def test_unknown_goal_is_422_naming_the_offers_goals(
    gateway: httpx.AsyncClient, offer: Offer, database_url: str
) -> None:
    await _add_goal(gateway, offer.id, name="install", payout="1")
    response = await _convert(gateway, database_url, offer, goal="purchase")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "purchase" in detail and "default" in detail and "install" in detail


async def test_a_goal_without_allow_multiple_converts_once_per_click(
    gateway: httpx.AsyncClient, offer: Offer, database_url: str
) -> None:
    await _add_goal(gateway, offer.id, name="install", payout="1")
    await _add_goal(gateway, offer.id, name="level", payout="0.1", allow_multiple=True)
    click_id = await create_click(
        database_url,
        publisher_id=offer.publisher_id,
        smartlink_id=offer.smartlink_id,
        offer_id=offer.id,
    )
    first = await _convert(gateway, database_url, offer, click_id, goal="install", txid="a")
    second = await _convert(gateway, database_url, offer, click_id, goal="install", txid="b")
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json() == first.json()

    levels = [
        await _convert(gateway, database_url, offer, click_id, goal="level", txid=f"l{n}")
        for n in range(3)
    ]
    assert [r.status_code for r in levels] == [201, 201, 201]
    assert len({r.json()["conversion_id"] for r in levels}) == 3


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"name": "Install", "payout": "1"}, 422),  # not a slug
        ({"name": "in stall", "payout": "1"}, 422),
        ({"name": "x" * 65, "payout": "1"}, 422),
        ({"name": "a\x00b", "payout": "1"}, 422),
        ({"name": "both", "payout": "1", "revenue_share_percent": "5"}, 422),
        ({"name": "neither"}, 422),
        ({"name": "share", "revenue_share_percent": "100.01"}, 422),
        ({"name": "neg", "payout": "-1"}, 422),
        ({"name": "big", "payout": "10000.01"}, 422),
        ({"name": "hold", "payout": "1", "hold_days": -1}, 422),
        ({"name": "cap", "payout": "1", "daily_cap": -1}, 422),
        ({"name": "cap", "payout": "1", "total_cap": 2**40}, 422),
        ({"name": "default", "payout": "1"}, 409),  # every offer has it already
    ],
)
async def test_bad_goals_are_refused(
    gateway: httpx.AsyncClient, offer: Offer, body: dict[str, Any], status: int
) -> None:
    response = await gateway.post(
        f"/api/v1/offers/{offer.id}/goals", json=body, headers=ADMIN_HEADERS
    )
    assert response.status_code == status, response.text
    assert response.json()["detail"]


async def test_goal_updates_and_their_refusals(gateway: httpx.AsyncClient, offer: Offer) -> None:
    goal = await _add_goal(gateway, offer.id, name="install", payout="1", hold_days=None)
    assert goal["hold_days"] is None
    path = f"/api/v1/offers/{offer.id}/goals/{goal['id']}"
    to_share = await gateway.patch(
        path, json={"revenue_share_percent": "30", "daily_cap": 5}, headers=ADMIN_HEADERS
    )
    assert to_share.status_code == 200, to_share.text
    assert (to_share.json()["payout"], to_share.json()["revenue_share_percent"]) == (
        None,
        "30.0000",
    )
    assert to_share.json()["daily_cap"] == 5

    default_id = (await _goals(gateway, offer.id))["default"]["id"]
    default_path = f"/api/v1/offers/{offer.id}/goals/{default_id}"
    for body, status in [
        ({"name": "default"}, 409),  # another goal's name
        ({"allow_multiple": None}, 422),
    ]:
        response = await gateway.patch(path, json=body, headers=ADMIN_HEADERS)
        assert response.status_code == status, (body, response.text)
    for body in ({"name": "main"}, {"revenue_share_percent": "10"}):
        response = await gateway.patch(default_path, json=body, headers=ADMIN_HEADERS)
        assert response.status_code == 422, (body, response.text)
        assert "default goal" in response.json()["detail"]

    other = await create_offer(gateway)
    wrong_offer = await gateway.patch(
        f"/api/v1/offers/{other['id']}/goals/{goal['id']}",
        json={"payout": "1"},
        headers=ADMIN_HEADERS,
    )
    assert wrong_offer.status_code == 404
    missing = await gateway.get("/api/v1/offers/999999999/goals", headers=ADMIN_HEADERS)
    assert missing.status_code == 404
    assert (await gateway.get(f"/api/v1/offers/{offer.id}/goals")).status_code == 401
