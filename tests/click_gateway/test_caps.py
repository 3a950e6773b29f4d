"""Caps per goal (exact under concurrency), the attribution window, capped offers in rotation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from click_gateway.app import create_app
from click_gateway.settings import GatewaySettings
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

MOBILE = {"User-Agent": "Mozilla/5.0 (Linux; Android 14) Mobile", "X-Forwarded-For": "81.2.69.160"}


@dataclass
class Setup:
    key: str
    offer_id: int
    publisher_id: int
    smartlink_id: int
    code: str
    default_goal_id: int
    database_url: str

    async def click(self, **fields: Any) -> int:
        return await create_click(
            self.database_url,
            publisher_id=self.publisher_id,
            smartlink_id=self.smartlink_id,
            offer_id=self.offer_id,
            **fields,
        )


async def _setup(gateway: httpx.AsyncClient, database_url: str, **offer: Any) -> Setup:
    advertiser = await create_advertiser(gateway)
    created = await create_offer(gateway, advertiser_id=advertiser["id"], payout="1", **offer)
    publisher = await create_publisher(gateway)
    link = await create_smartlink(
        gateway,
        publisher_id=publisher["id"],
        offer_ids=[created["id"]],
        fallback_url="https://fallback.example/?c={click_id}",
    )
    goals = await gateway.get(f"/api/v1/offers/{created['id']}/goals", headers=ADMIN_HEADERS)
    return Setup(
        advertiser["api_key"],
        created["id"],
        publisher["id"],
        link["id"],
        link["code"],
        goals.json()[0]["id"],
        database_url,
    )


@pytest.fixture
async def setup(gateway: httpx.AsyncClient, database_url: str) -> Setup:
    return await _setup(gateway, database_url)


async def _goal(gateway: httpx.AsyncClient, s: Setup, **body: Any) -> dict[str, Any]:
    response = await gateway.post(
        f"/api/v1/offers/{s.offer_id}/goals", json={"payout": "1", **body}, headers=ADMIN_HEADERS
    )
    assert response.status_code == 201, response.text
    goal: dict[str, Any] = response.json()
    return goal


async def _convert(
    gateway: httpx.AsyncClient, s: Setup, click_id: int | None = None, **body: Any
) -> httpx.Response:
    click_id = click_id if click_id is not None else await s.click()
    return await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id, **body}, headers={"X-Api-Key": s.key}
    )


@pytest.mark.parametrize("cap", ["daily_cap", "total_cap"])
async def test_fifty_at_once_against_a_cap_of_ten_keep_exactly_ten(
    gateway: httpx.AsyncClient, setup: Setup, cap: str
) -> None:
    await _goal(gateway, setup, name="install", **{cap: 10})
    clicks = [await setup.click() for _ in range(50)]
    responses = await asyncio.gather(
        *(_convert(gateway, setup, click_id, goal="install") for click_id in clicks)
    )
    assert [r.status_code for r in responses] == [201] * 50  # all on record
    bodies = [r.json() for r in responses]
    kept = [b for b in bodies if b["status"] != "rejected"]
    refused = [b for b in bodies if b["status"] == "rejected"]
    assert len(kept) == 10
    assert {b["reject_reason"] for b in refused} == {"cap_reached"}
    # The stored rows agree with the answers.
    listed = await gateway.get(
        "/api/v1/conversions",
        params={"goal": "install", "limit": 100},
        headers={"X-Api-Key": setup.key},
    )
    mine = {b["conversion_id"] for b in bodies}
    stored = [c for c in listed.json()["items"] if c["conversion_id"] in mine]
    assert sum(1 for c in stored if c["status"] == "approved") == 10


async def test_repeats_and_rejections_do_not_use_the_cap(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    await _goal(gateway, setup, name="install", daily_cap=2, total_cap=2)
    first_click = await setup.click()
    first = await _convert(gateway, setup, first_click, goal="install")
    repeat = await _convert(gateway, setup, first_click, goal="install")
    assert (first.status_code, repeat.status_code) == (201, 200)
    second = await _convert(gateway, setup, goal="install")
    third = await _convert(gateway, setup, goal="install")
    assert [r.json()["status"] for r in (first, second, third)] == [
        "approved",
        "approved",
        "rejected",
    ]
    # A reversal gives its slot back; the operator re-approving takes it again.
    reversal = await gateway.patch(
        f"/api/v1/conversions/{second.json()['conversion_id']}",
        json={"status": "rejected", "reason": "fraud"},
        headers={"X-Api-Key": setup.key},
    )
    assert reversal.status_code == 200
    fourth = await _convert(gateway, setup, goal="install")
    fifth = await _convert(gateway, setup, goal="install")
    assert (fourth.json()["status"], fifth.json()["status"]) == ("approved", "rejected")


async def test_a_cap_set_later_counts_the_conversions_already_made(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    goal = await _goal(gateway, setup, name="install")
    for _ in range(3):
        assert (await _convert(gateway, setup, goal="install")).json()["status"] == "approved"
    patched = await gateway.patch(
        f"/api/v1/offers/{setup.offer_id}/goals/{goal['id']}",
        json={"total_cap": 4},
        headers=ADMIN_HEADERS,
    )
    assert patched.status_code == 200
    assert (await _convert(gateway, setup, goal="install")).json()["status"] == "approved"
    refused = (await _convert(gateway, setup, goal="install")).json()
    assert (refused["status"], refused["reject_reason"]) == ("rejected", "cap_reached")


async def test_a_capped_offer_leaves_smartlink_rotation_until_the_cap_rises(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    async def location() -> str | None:
        response = await gateway.get(f"/get/{setup.code}", headers=MOBILE)
        return response.headers.get("location") if response.status_code == 302 else None

    async def goes_to(host: str) -> bool:
        target = await location()
        return target is not None and host in target

    await wait_for(lambda: goes_to("advertiser.example"), message="the offer in rotation")
    patched = await gateway.patch(
        f"/api/v1/offers/{setup.offer_id}/goals/{setup.default_goal_id}",
        json={"daily_cap": 1},
        headers=ADMIN_HEADERS,
    )
    assert patched.status_code == 200
    assert (await _convert(gateway, setup)).json()["status"] == "approved"
    await wait_for(lambda: goes_to("fallback.example"), message="the capped offer skipped")
    raised = await gateway.patch(
        f"/api/v1/offers/{setup.offer_id}/goals/{setup.default_goal_id}",
        json={"daily_cap": 5},
        headers=ADMIN_HEADERS,
    )
    assert raised.status_code == 200
    await wait_for(lambda: goes_to("advertiser.example"), message="the offer back in rotation")


async def test_a_click_older_than_the_window_converts_rejected(
    gateway: httpx.AsyncClient, database_url: str
) -> None:
    s = await _setup(gateway, database_url, attribution_window_days=2)
    fresh = await _convert(gateway, s, await s.click(age_seconds=1.5 * 86400))
    old = await _convert(gateway, s, await s.click(age_seconds=2.1 * 86400))
    assert (fresh.status_code, old.status_code) == (201, 201)
    assert (fresh.json()["status"], fresh.json()["reject_reason"]) == ("approved", None)
    assert (old.json()["status"], old.json()["reject_reason"]) == (
        "rejected",
        "attribution_window",
    )


class FakeClock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture(scope="module")
async def clocked_gateway(
    database_url: str, amqp_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeClock]]:
    """A second gateway whose conversions read the time from a clock the test moves."""
    settings = GatewaySettings(
        DATABASE_URL=database_url, AMQP_URL=amqp_url, CACHE_REFRESH_SECONDS=0.2
    )
    app = create_app(settings)
    clock = FakeClock()
    app.api.state.conversion_recorder.clock = clock
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client, clock


async def test_the_window_is_measured_with_the_services_clock(
    gateway: httpx.AsyncClient,
    database_url: str,
    clocked_gateway: tuple[httpx.AsyncClient, FakeClock],
) -> None:
    client, clock = clocked_gateway
    s = await _setup(gateway, database_url)  # the default window: 30 days
    click_id = await s.click()
    clock.offset = timedelta(days=29, hours=23)
    inside = await _convert(client, s, click_id, txid="a")
    clock.offset = timedelta(days=30, minutes=1)
    outside = await _convert(client, s, click_id, txid="b")
    assert inside.json()["status"] == "approved", inside.text
    assert (outside.json()["status"], outside.json()["reject_reason"]) == (
        "rejected",
        "attribution_window",
    )
    assert datetime.fromisoformat(outside.json()["created_at"]) > datetime.now(UTC) + timedelta(
        days=29
    )


async def test_reversals_racing_new_conversions_keep_the_counters_exact(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    """Reversals free slots while new conversions take them: no deadlock, no drift."""
    await _goal(gateway, setup, name="install", daily_cap=10, total_cap=10)
    first = [await _convert(gateway, setup, goal="install") for _ in range(10)]
    assert {r.json()["status"] for r in first} == {"approved"}
    clicks = [await setup.click() for _ in range(20)]
    reversals = [
        gateway.patch(
            f"/api/v1/conversions/{r.json()['conversion_id']}",
            json={"status": "rejected"},
            headers={"X-Api-Key": setup.key},
        )
        for r in first[:5]
    ]
    news = [_convert(gateway, setup, c, goal="install") for c in clicks]
    responses = await asyncio.gather(*reversals, *news)
    assert all(r.status_code in (200, 201) for r in responses), [
        r.text for r in responses if r.status_code >= 300
    ]
    listed = await gateway.get(
        "/api/v1/conversions",
        params={"goal": "install", "limit": 500},
        headers={"X-Api-Key": setup.key},
    )
    mine = {r.json()["conversion_id"] for r in first} | {
        r.json()["conversion_id"] for r in responses[5:]
    }
    kept = [c for c in listed.json()["items"] if c["conversion_id"] in mine]
    counted = sum(1 for c in kept if c["status"] != "rejected")
    assert 5 <= counted <= 10
    # And what is counted is exactly what the cap still allows: fill it up.
    extra = [await _convert(gateway, setup, goal="install") for _ in range(11 - counted)]
    assert [r.json()["status"] for r in extra] == ["approved"] * (10 - counted) + ["rejected"]
