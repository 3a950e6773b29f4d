"""Statuses: holds, allowed and refused transitions, history, the events and their order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from postback_core.contracts import ConversionEventV2, decode_conversion_event
from postback_core.db.base import asyncpg_dsn
from tests.factories import (
    ADMIN_HEADERS,
    create_advertiser,
    create_click,
    create_offer,
    create_publisher,
    create_smartlink,
)


@dataclass
class Setup:
    key: str
    advertiser_id: int
    offer_id: int
    publisher_id: int
    smartlink_id: int
    database_url: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.key}

    async def click(self, **fields: Any) -> int:
        return await create_click(
            self.database_url,
            publisher_id=self.publisher_id,
            smartlink_id=self.smartlink_id,
            offer_id=self.offer_id,
            **fields,
        )


@pytest.fixture
async def setup(gateway: httpx.AsyncClient, database_url: str) -> Setup:
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(gateway, advertiser_id=advertiser["id"], payout="0.75")
    publisher = await create_publisher(gateway)
    link = await create_smartlink(gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]])
    for name, hold in (("trial", 7), ("review", None)):
        response = await gateway.post(
            f"/api/v1/offers/{offer['id']}/goals",
            json={"name": name, "payout": "2", "hold_days": hold},
            headers=ADMIN_HEADERS,
        )
        assert response.status_code == 201, response.text
    return Setup(
        advertiser["api_key"],
        advertiser["id"],
        offer["id"],
        publisher["id"],
        link["id"],
        database_url,
    )


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


async def _report(
    gateway: httpx.AsyncClient, s: Setup, click_id: int | None = None, **body: Any
) -> dict[str, Any]:
    click_id = click_id if click_id is not None else await s.click()
    response = await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id, **body}, headers=s.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _patch(
    gateway: httpx.AsyncClient, conversion_id: int, headers: dict[str, str], **body: Any
) -> httpx.Response:
    return await gateway.patch(f"/api/v1/conversions/{conversion_id}", json=body, headers=headers)


async def _events(
    db: asyncpg.Connection, conversion_id: int
) -> list[tuple[str, ConversionEventV2]]:
    rows = await db.fetch(
        "SELECT routing_key, payload FROM outbox ORDER BY id",
    )
    found: list[tuple[str, ConversionEventV2]] = []
    for row in rows:
        event = decode_conversion_event(row["payload"])
        if event.conversion_id == conversion_id:
            assert isinstance(event, ConversionEventV2)
            found.append((row["routing_key"], event))
    return found


async def test_goal_holds_make_pending_conversions(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    before = datetime.now(UTC)
    trial = await _report(gateway, setup, goal="trial")
    review = await _report(gateway, setup, goal="review")
    assert (trial["status"], review["status"]) == ("pending", "pending")
    detail = (
        await gateway.get(f"/api/v1/conversions/{trial['conversion_id']}", headers=setup.headers)
    ).json()
    hold_until = datetime.fromisoformat(detail["hold_until"])
    assert before + timedelta(days=7) <= hold_until <= datetime.now(UTC) + timedelta(days=7)
    detail = (
        await gateway.get(f"/api/v1/conversions/{review['conversion_id']}", headers=setup.headers)
    ).json()
    assert detail["hold_until"] is None  # until someone decides


async def test_pending_to_approved_then_reversed_with_ordered_events(
    gateway: httpx.AsyncClient, setup: Setup, db: asyncpg.Connection
) -> None:
    click_id = await setup.click(external_id="ext-9", sub_ids={"sub1": "s-1"})
    conversion = await _report(gateway, setup, click_id, goal="review", txid="order-7")
    cid = conversion["conversion_id"]

    approved = await _patch(gateway, cid, setup.headers, status="approved")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    reversed_ = await _patch(gateway, cid, setup.headers, status="rejected", reason="chargeback")
    assert reversed_.status_code == 200, reversed_.text
    assert (reversed_.json()["status"], reversed_.json()["reject_reason"]) == (
        "rejected",
        "chargeback",
    )

    events = await _events(db, cid)
    assert [key for key, _ in events] == [
        "conversion.created",
        "conversion.status_changed",
        "conversion.status_changed",
    ]
    assert [e.sequence for _, e in events] == [1, 2, 3]
    assert [(e.previous_status, e.status) for _, e in events] == [
        (None, "pending"),
        ("pending", "approved"),
        ("approved", "rejected"),
    ]
    last = events[-1][1]
    assert last.schema_version == 2
    assert (last.goal, last.txid, last.external_id, last.sub_ids.sub1) == (
        "review",
        "order-7",
        "ext-9",
        "s-1",
    )
    assert last.reject_reason == "chargeback"
    assert str(last.payout) == "2.0000" and last.currency == "USD"
    assert last.user_agent and last.clicked_at is not None
    assert last.converted_at == events[0][1].converted_at
    assert len({e.event_id for _, e in events}) == 3

    detail = await gateway.get(f"/api/v1/conversions/{cid}", headers=setup.headers)
    assert detail.status_code == 200
    history = detail.json()["status_history"]
    assert [(h["status"], h["by"], h["reason"]) for h in history] == [
        ("pending", "advertiser", None),
        ("approved", "advertiser", None),
        ("rejected", "advertiser", "chargeback"),
    ]
    assert detail.json()["sequence"] == 3


@pytest.mark.parametrize(
    ("goal", "steps", "refused"),
    [
        pytest.param("default", ["pending"], "approved", id="approved-to-pending"),
        pytest.param("review", ["rejected", "pending"], "rejected", id="rejected-to-pending"),
        pytest.param("review", ["rejected", "approved"], "rejected", id="advertiser-unrejects"),
        pytest.param(None, ["bogus"], None, id="unknown-status"),
    ],
)
async def test_refused_transitions_are_409_with_the_current_status(
    gateway: httpx.AsyncClient,
    setup: Setup,
    db: asyncpg.Connection,
    goal: str,
    steps: list[str],
    refused: str | None,
) -> None:
    conversion = await _report(gateway, setup, **({"goal": goal} if goal else {}))
    cid = conversion["conversion_id"]
    *allowed, last = steps
    for status in allowed:
        assert (await _patch(gateway, cid, setup.headers, status=status)).status_code == 200
    events_before = len(await _events(db, cid))
    response = await _patch(gateway, cid, setup.headers, status=last)
    if refused is None:
        assert response.status_code == 422
        return
    assert response.status_code == 409, response.text
    assert f"is {refused}" in response.json()["detail"]
    assert len(await _events(db, cid)) == events_before  # nothing queued


async def test_only_an_operator_approves_a_rejected_conversion(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    cid = (await _report(gateway, setup, goal="review"))["conversion_id"]
    assert (await _patch(gateway, cid, setup.headers, status="rejected")).status_code == 200
    by_advertiser = await _patch(gateway, cid, setup.headers, status="approved")
    assert by_advertiser.status_code == 409
    assert "operator" in by_advertiser.json()["detail"]
    by_operator = await _patch(gateway, cid, ADMIN_HEADERS, status="approved", reason="ok")
    assert by_operator.status_code == 200, by_operator.text
    history = (await gateway.get(f"/api/v1/conversions/{cid}", headers=ADMIN_HEADERS)).json()
    assert history["status_history"][-1]["by"] == "operator"


async def test_the_same_status_again_changes_nothing(
    gateway: httpx.AsyncClient, setup: Setup, db: asyncpg.Connection
) -> None:
    cid = (await _report(gateway, setup))["conversion_id"]
    again = await _patch(gateway, cid, setup.headers, status="approved")
    assert again.status_code == 200
    assert len(await _events(db, cid)) == 1


async def test_another_advertisers_conversion_is_404(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    cid = (await _report(gateway, setup, goal="review"))["conversion_id"]
    other = await create_advertiser(gateway)
    headers = {"X-Api-Key": other["api_key"]}
    assert (await _patch(gateway, cid, headers, status="approved")).status_code == 404
    assert (await gateway.get(f"/api/v1/conversions/{cid}", headers=headers)).status_code == 404
    for path in ("/api/v1/conversions/0", f"/api/v1/conversions/{2**63}"):
        assert (await gateway.get(path, headers=setup.headers)).status_code in (404, 422)
    no_auth = await gateway.patch(f"/api/v1/conversions/{cid}", json={"status": "approved"})
    assert no_auth.status_code == 401


async def test_s2s_status_changes_the_conversion_reported_with_that_txid(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    click_id = await setup.click()
    conversion = await _report(gateway, setup, click_id, goal="review", txid="T-9")
    params = {"click_id": str(click_id), "txid": "T-9", "key": setup.key}
    approved = await gateway.get("/api/v1/conversions/s2s", params={**params, "status": "approved"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["conversion_id"] == conversion["conversion_id"]
    assert approved.json()["status"] == "approved"
    unknown = await gateway.get(
        "/api/v1/conversions/s2s", params={**params, "txid": "nope", "status": "rejected"}
    )
    assert unknown.status_code == 404
    bad = await gateway.get("/api/v1/conversions/s2s", params={**params, "status": "done"})
    assert bad.status_code == 422


async def test_list_filters_pages_and_scopes_to_the_advertiser(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    made = [await _report(gateway, setup, goal="review") for _ in range(3)]
    made.append(await _report(gateway, setup))
    ids = [c["conversion_id"] for c in made]

    seen: list[int] = []
    after = 0
    while True:
        page = await gateway.get(
            "/api/v1/conversions",
            params={
                "goal": "review",
                "status": "pending",
                "limit": 2,
                "after_id": after,
                "since": since.isoformat(),
            },
            headers=setup.headers,
        )
        assert page.status_code == 200, page.text
        seen += [c["conversion_id"] for c in page.json()["items"]]
        after = page.json()["next_after_id"]
        if after is None:
            break
    assert seen == ids[:3]

    other = await create_advertiser(gateway)
    theirs = await gateway.get("/api/v1/conversions", headers={"X-Api-Key": other["api_key"]})
    assert theirs.json()["items"] == []
    operator = await gateway.get(
        "/api/v1/conversions",
        params={"advertiser_id": setup.advertiser_id, "goal": "default"},
        headers=ADMIN_HEADERS,
    )
    assert [c["conversion_id"] for c in operator.json()["items"]] == ids[3:]
    assert (
        await gateway.get("/api/v1/conversions", params={"status": "x"}, headers=setup.headers)
    ).status_code == 422


async def test_an_operator_reports_and_lists_for_any_advertiser(
    gateway: httpx.AsyncClient, setup: Setup
) -> None:
    response = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": await setup.click(), "goal": "review"},
        headers=ADMIN_HEADERS,
    )
    assert response.status_code == 201, response.text
    detail = await gateway.get(
        f"/api/v1/conversions/{response.json()['conversion_id']}", headers=setup.headers
    )
    assert detail.status_code == 200  # it is the click's advertiser's conversion
    assert detail.json()["status_history"][0]["advertiser_id"] == setup.advertiser_id
    wrong = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": await setup.click()},
        headers={"Authorization": "Bearer not-the-token"},
    )
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "body", "params"),
    [
        ("PATCH", "/{cid}", {"status": "rejected", "reason": "a\x00b"}, None),
        ("PATCH", "/{cid}", {"status": "rejected", "reason": "r" * 201}, None),
        ("PATCH", "/{cid}", {"status": None}, None),
        ("PATCH", "/{cid}", [], None),
        ("GET", "", None, {"goal": "a\x00"}),
        ("GET", "", None, {"since": "yesterday"}),
        ("GET", "", None, {"until": "9999-12-31T23:59:00-12:00"}),
        ("GET", "", None, {"since": "0001-01-01T00:00:00+14:00"}),
        ("GET", "", None, {"limit": 0}),
        ("GET", "", None, {"after_id": 2**63}),
        ("GET", "/s2s", None, {"goal": "x\x00", "status": "approved"}),
        ("POST", "", {"goal": "g" * 65}, None),
        ("POST", "", {"goal": "a\x00"}, None),
        ("POST", "", {"amount": "-1"}, None),
        ("POST", "", {"amount": "NaN"}, None),
        ("POST", "", {"amount": "1e20"}, None),
        ("POST", "", {"amount": "0.00001"}, None),
    ],
)
async def test_hostile_lifecycle_input_is_422_not_a_500(
    gateway: httpx.AsyncClient,
    setup: Setup,
    method: str,
    path: str,
    body: Any,
    params: dict[str, Any] | None,
) -> None:
    click_id = await setup.click()
    conversion = await _report(gateway, setup, click_id, goal="review", txid="t")
    if method == "POST":
        body = {"click_id": click_id, "txid": "other", **body}
    if path == "/s2s":
        params = {**(params or {}), "click_id": str(click_id), "txid": "t", "key": setup.key}
    response = await gateway.request(
        method,
        "/api/v1/conversions" + path.format(cid=conversion["conversion_id"]),
        json=body,
        params=params,
        headers=setup.headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
