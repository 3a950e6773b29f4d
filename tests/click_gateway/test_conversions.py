"""Conversions reported by advertisers: auth, ownership, money, idempotency, the event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from postback_core.contracts import decode_conversion_event
from postback_core.db.base import asyncpg_dsn
from tests.factories import (
    ADMIN_HEADERS,
    create_advertiser,
    create_click,
    create_offer,
    create_publisher,
    create_smartlink,
    new_click_id,
)
from tests.support.amqp_observer import EventObserver, observe_events
from tests.support.polling import wait_for

ANDROID_UA = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)
SUB_IDS = {"sub1": "campaign-7", "sub2": "blue", "sub5": "z"}

T = TypeVar("T")


@dataclass
class Setup:
    advertiser_key: str
    advertiser_id: int
    offer_id: int
    publisher_id: int
    smartlink_id: int


@pytest.fixture
async def setup(gateway: httpx.AsyncClient) -> Setup:
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(gateway, advertiser_id=advertiser["id"], payout="0.75")
    publisher = await create_publisher(gateway)
    link = await create_smartlink(gateway, publisher_id=publisher["id"], offer_ids=[offer["id"]])
    return Setup(advertiser["api_key"], advertiser["id"], offer["id"], publisher["id"], link["id"])


@pytest.fixture(scope="module")
async def observer(amqp_url: str, gateway_url: str) -> AsyncIterator[EventObserver]:
    async with observe_events(amqp_url) as events:
        yield events


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


async def _click(database_url: str, s: Setup, **fields: object) -> int:
    return await create_click(
        database_url,
        publisher_id=s.publisher_id,
        smartlink_id=s.smartlink_id,
        offer_id=s.offer_id,
        **fields,  # type: ignore[arg-type]
    )


def _post(gateway: httpx.AsyncClient, key: str | None, body: object) -> object:
    headers = {"X-Api-Key": key} if key is not None else {}
    return gateway.post("/api/v1/conversions", json=body, headers=headers)


async def test_new_conversion_is_201_with_offer_payout(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    click_id = await _click(database_url, setup)
    response = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id},
        headers={"X-Api-Key": setup.advertiser_key},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["click_id"] == str(click_id)  # 64-bit ids travel as strings
    assert body["payout"] == "0.7500"
    assert body["status"] == "approved"
    assert isinstance(body["conversion_id"], int)
    assert body["created_at"]


async def test_repeat_is_200_with_the_same_body_and_no_second_event(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str, db: asyncpg.Connection
) -> None:
    click_id = await _click(database_url, setup)
    headers = {"X-Api-Key": setup.advertiser_key}
    first = await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id, "payout": "1.25"}, headers=headers
    )
    again = await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id, "payout": "9.99"}, headers=headers
    )
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    assert first.json()["payout"] == "1.2500"
    count = await db.fetchval("SELECT count(*) FROM conversions WHERE click_id = $1", click_id)
    assert count == 1
    events = await db.fetchval(
        "SELECT count(*) FROM outbox o JOIN conversions c ON c.event_id = o.event_id "
        "WHERE c.click_id = $1",
        click_id,
    )
    assert events == 1


async def test_txid_distinguishes_conversions_of_one_click(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    click_id = await _click(database_url, setup)
    headers = {"X-Api-Key": setup.advertiser_key}
    a = await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id, "txid": "T-1"}, headers=headers
    )
    b = await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id, "txid": "T-2"}, headers=headers
    )
    a2 = await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id, "txid": "T-1"}, headers=headers
    )
    assert (a.status_code, b.status_code, a2.status_code) == (201, 201, 200)
    assert a.json()["conversion_id"] != b.json()["conversion_id"]
    assert a2.json()["conversion_id"] == a.json()["conversion_id"]
    assert a.json()["txid"] == "T-1"


async def test_click_id_as_string_is_accepted(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    click_id = await _click(database_url, setup)
    response = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": str(click_id), "payout": 2},
        headers={"X-Api-Key": setup.advertiser_key},
    )
    assert response.status_code == 201
    assert response.json()["payout"] == "2.0000"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"X-Api-Key": ""}, id="empty"),
        pytest.param({"X-Api-Key": "adv_not-a-real-key"}, id="unknown"),
        pytest.param({"X-Api-Key": "x" * 5000}, id="huge"),
    ],
)
async def test_missing_or_bad_key_is_401(
    gateway: httpx.AsyncClient,
    setup: Setup,
    database_url: str,
    headers: dict[str, str],
    db: asyncpg.Connection,
) -> None:
    click_id = await _click(database_url, setup)
    response = await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id}, headers=headers
    )
    assert response.status_code == 401
    assert "API key" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM conversions WHERE click_id=$1", click_id) == 0


async def test_publisher_key_is_not_an_advertiser_key(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    publisher = await create_publisher(gateway)
    click_id = await _click(database_url, setup)
    response = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id},
        headers={"X-Api-Key": publisher["api_key"]},
    )
    assert response.status_code == 401


async def test_another_advertisers_click_is_403(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str, db: asyncpg.Connection
) -> None:
    other = await create_advertiser(gateway)
    click_id = await _click(database_url, setup)
    response = await gateway.post(
        "/api/v1/conversions", json={"click_id": click_id}, headers={"X-Api-Key": other["api_key"]}
    )
    assert response.status_code == 403
    assert str(click_id) in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM conversions WHERE click_id=$1", click_id) == 0


async def test_fallback_click_without_offer_is_403(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    click_id = await create_click(
        database_url,
        publisher_id=setup.publisher_id,
        smartlink_id=setup.smartlink_id,
        offer_id=None,
    )
    response = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id},
        headers={"X-Api-Key": setup.advertiser_key},
    )
    assert response.status_code == 403


async def test_unknown_click_is_404(gateway: httpx.AsyncClient, setup: Setup) -> None:
    hour_ago = time.time_ns() // 1_000_000 - 3_600_000
    for click_id in (new_click_id(hour_ago), 12345):
        response = await gateway.post(
            "/api/v1/conversions",
            json={"click_id": click_id},
            headers={"X-Api-Key": setup.advertiser_key},
        )
        assert response.status_code == 404, click_id
        assert "not found" in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"click_id": "CLICK", "payout": "1"},
        {"click_id": 0},
        {"click_id": -4},
        {"click_id": 2**64},
        {"click_id": 1.5},
        {"click_id": None},
        {"payout": "abc"},
        {"payout": "-0.01"},
        {"payout": "NaN"},
        {"payout": "-Infinity"},
        {"payout": "Infinity"},
        {"payout": "1e400"},
        {"payout": "10000.01"},
        {"payout": "0.00001"},
        {"payout": [1]},
        {"payout": True},
        {"txid": "t" * 129},
    ],
)
async def test_bad_body_is_422(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str, body: dict[str, object]
) -> None:
    click_id = await _click(database_url, setup)
    full = {"click_id": click_id, **body}
    response = await gateway.post(
        "/api/v1/conversions", json=full, headers={"X-Api-Key": setup.advertiser_key}
    )
    assert response.status_code == 422, (body, response.text)
    assert response.json()["detail"]


async def test_max_payout_is_accepted(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    click_id = await _click(database_url, setup)
    response = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id, "payout": "10000"},
        headers={"X-Api-Key": setup.advertiser_key},
    )
    assert response.status_code == 201
    assert Decimal(response.json()["payout"]) == Decimal("10000")


async def test_s2s_get_has_the_same_semantics(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    click_id = await _click(database_url, setup)
    params = {
        "click_id": str(click_id),
        "payout": "0.3",
        "txid": "abc",
        "key": setup.advertiser_key,
    }
    first = await gateway.get("/api/v1/conversions/s2s", params=params)
    assert first.status_code == 201, first.text
    assert first.json()["payout"] == "0.3000"
    again = await gateway.get("/api/v1/conversions/s2s", params=params)
    assert again.status_code == 200
    assert again.json() == first.json()

    default = await gateway.get(
        "/api/v1/conversions/s2s",
        params={"click_id": str(click_id), "payout": "", "key": setup.advertiser_key},
    )
    assert default.status_code == 201
    assert default.json()["payout"] == "0.7500"


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"key": None}, 401),
        ({"key": "adv_wrong"}, 401),
        ({"payout": "abc"}, 422),
        ({"payout": "-1"}, 422),
        ({"payout": "nan"}, 422),
        ({"payout": "1e9"}, 422),
        ({"click_id": "nope"}, 422),
        ({"click_id": None}, 422),
        ({"click_id": str(new_click_id(time.time_ns() // 1_000_000 - 3_600_000))}, 404),
    ],
)
async def test_s2s_errors(
    gateway: httpx.AsyncClient,
    setup: Setup,
    database_url: str,
    params: dict[str, str | None],
    status: int,
) -> None:
    click_id = await _click(database_url, setup)
    query = {"click_id": str(click_id), "key": setup.advertiser_key, **params}
    response = await gateway.get(
        "/api/v1/conversions/s2s", params={k: v for k, v in query.items() if v is not None}
    )
    assert response.status_code == status, response.text
    assert response.json()["detail"]


async def test_s2s_for_another_advertiser_is_403(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    other = await create_advertiser(gateway)
    click_id = await _click(database_url, setup)
    response = await gateway.get(
        "/api/v1/conversions/s2s", params={"click_id": click_id, "key": other["api_key"]}
    )
    assert response.status_code == 403


async def test_event_carries_every_macro_value(
    gateway: httpx.AsyncClient,
    setup: Setup,
    database_url: str,
    db: asyncpg.Connection,
    observer: EventObserver,
) -> None:
    click_id = await _click(
        database_url,
        setup,
        external_id="ext-42",
        ip="198.51.100.23",
        country="DE",
        os="iOS",
        device="tablet",
        sub_ids=SUB_IDS,
    )
    response = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id, "payout": "0.42", "txid": "order-1"},
        headers={"X-Api-Key": setup.advertiser_key},
    )
    assert response.status_code == 201
    conversion = response.json()

    row = await db.fetchrow(
        "SELECT o.payload, o.exchange, o.routing_key, c.event_id FROM outbox o "
        "JOIN conversions c ON c.event_id = o.event_id WHERE c.id = $1",
        conversion["conversion_id"],
    )
    assert row["exchange"] == "postback.events"
    assert row["routing_key"] == "conversion.created"
    event = decode_conversion_event(row["payload"])
    assert event.event_id == row["event_id"]
    assert event.conversion_id == conversion["conversion_id"]
    assert event.click_id == click_id
    assert event.external_id == "ext-42"
    assert event.publisher_id == setup.publisher_id
    assert event.smartlink_id == setup.smartlink_id
    assert event.offer_id == setup.offer_id
    assert event.advertiser_id == setup.advertiser_id
    assert event.payout == Decimal("0.42")
    assert event.txid == "order-1"
    assert (event.country, event.ip, event.os, event.device) == (
        "DE",
        "198.51.100.23",
        "iOS",
        "tablet",
    )
    assert event.sub_ids.sub1 == "campaign-7"
    assert event.sub_ids.sub2 == "blue"
    assert event.sub_ids.sub3 is None
    assert event.sub_ids.sub5 == "z"
    assert (
        event.occurred_at.isoformat().replace("+00:00", "Z")[:19]
        == conversion["created_at"].replace("+00:00", "Z")[:19]
    )

    # ... and the same event reaches RabbitMQ.
    published = await wait_for(
        lambda: _async(observer.for_conversion(conversion["conversion_id"])),
        message="the conversion event on the broker",
    )
    assert published[0].event() == event


async def _async(value: T) -> T:
    return value


async def test_twenty_concurrent_duplicates_make_one_conversion_and_one_event(
    gateway: httpx.AsyncClient,
    setup: Setup,
    database_url: str,
    db: asyncpg.Connection,
    observer: EventObserver,
) -> None:
    click_id = await _click(database_url, setup)
    headers = {"X-Api-Key": setup.advertiser_key}
    responses = await asyncio.gather(
        *(
            gateway.post(
                "/api/v1/conversions", json={"click_id": click_id, "txid": "dup"}, headers=headers
            )
            for _ in range(20)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201]
    bodies = {r.text for r in responses}
    assert len({r.json()["conversion_id"] for r in responses}) == 1
    assert len(bodies) == 1
    conversion_id = responses[0].json()["conversion_id"]
    assert await db.fetchval("SELECT count(*) FROM conversions WHERE click_id=$1", click_id) == 1
    outbox_rows = await db.fetchval(
        "SELECT count(*) FROM outbox o JOIN conversions c ON c.event_id = o.event_id "
        "WHERE c.click_id = $1",
        click_id,
    )
    assert outbox_rows == 1
    await wait_for(
        lambda: _async(observer.for_conversion(conversion_id)),
        message="the conversion event on the broker",
    )
    # Give any (wrong) second event the same chance to arrive as the first had.
    await wait_for(
        lambda: db.fetchval(
            "SELECT published_at IS NOT NULL FROM outbox o JOIN conversions c "
            "ON c.event_id = o.event_id WHERE c.id = $1",
            conversion_id,
        ),
        message="outbox row marked published",
    )
    assert len(observer.for_conversion(conversion_id)) == 1


async def test_default_payout_follows_an_offer_change(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    headers = {"X-Api-Key": setup.advertiser_key}
    before = await gateway.post(
        "/api/v1/conversions", json={"click_id": await _click(database_url, setup)}, headers=headers
    )
    assert before.json()["payout"] == "0.7500"
    patched = await gateway.patch(
        f"/api/v1/offers/{setup.offer_id}", json={"payout": "1.1"}, headers=ADMIN_HEADERS
    )
    assert patched.status_code == 200
    after = await gateway.post(
        "/api/v1/conversions", json={"click_id": await _click(database_url, setup)}, headers=headers
    )
    assert after.status_code == 201
    assert after.json()["payout"] == "1.1000"


async def test_conversion_for_a_real_click_right_after_the_redirect(
    gateway: httpx.AsyncClient, observer: EventObserver
) -> None:
    """The click may still be in the gateway's write buffer: it must convert anyway."""
    advertiser = await create_advertiser(gateway)
    offer = await create_offer(
        gateway,
        advertiser_id=advertiser["id"],
        url_template="https://adv.example/install?clickid={click_id}",
    )
    link = await create_smartlink(gateway, offer_ids=[offer["id"]])

    async def redirected() -> httpx.Response | None:
        response = await gateway.get(
            f"/get/{link['code']}",
            params={"cid": "pub-click-9", "sub1": "s1", "sub3": "s3"},
            headers={"User-Agent": ANDROID_UA, "X-Forwarded-For": "203.0.113.50"},
        )
        return response if response.status_code == 302 else None

    # The click path's catalogue cache picks the new SmartLink up within its refresh.
    response = await wait_for(redirected, message="the SmartLink redirect")
    assert response is not None
    click_id = int(parse_qs(urlsplit(response.headers["location"]).query)["clickid"][0])

    conversion = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id},
        headers={"X-Api-Key": advertiser["api_key"]},
    )
    assert conversion.status_code == 201, conversion.text
    published = await wait_for(
        lambda: _async(observer.for_conversion(conversion.json()["conversion_id"])),
        message="the event",
    )
    event = published[0].event()
    assert event.click_id == click_id
    assert event.external_id == "pub-click-9"
    assert event.publisher_id == link["publisher_id"]
    assert event.smartlink_id == link["id"]
    assert event.offer_id == offer["id"]
    assert event.ip == "203.0.113.50"
    assert event.os == "Android"
    assert event.device == "mobile"
    assert (event.sub_ids.sub1, event.sub_ids.sub2, event.sub_ids.sub3) == ("s1", None, "s3")


async def test_fifty_concurrent_conversions_each_get_their_own_row_and_event(
    gateway: httpx.AsyncClient,
    setup: Setup,
    database_url: str,
    db: asyncpg.Connection,
    observer: EventObserver,
) -> None:
    """Requests arriving together are group-committed; each still gets its own answer."""
    click_ids = [await _click(database_url, setup) for _ in range(10)]
    headers = {"X-Api-Key": setup.advertiser_key}
    requests = [(c, f"t{n}") for c in click_ids for n in range(5)]
    responses = await asyncio.gather(
        *(
            gateway.post(
                "/api/v1/conversions",
                json={"click_id": str(c), "txid": txid, "payout": f"1.{n:02d}"},
                headers=headers,
            )
            for n, (c, txid) in enumerate(requests)
        )
    )
    assert [r.status_code for r in responses] == [201] * len(requests)
    for n, ((click_id, txid), response) in enumerate(zip(requests, responses, strict=True)):
        body = response.json()
        assert (body["click_id"], body["txid"], body["payout"]) == (
            str(click_id),
            txid,
            f"1.{n:02d}00",
        )
    conversion_ids = [r.json()["conversion_id"] for r in responses]
    assert len(set(conversion_ids)) == len(requests)
    rows = await db.fetch(
        "SELECT c.id, c.txid, c.payout FROM conversions c JOIN outbox o ON o.event_id = c.event_id "
        "WHERE c.click_id = ANY($1::bigint[])",
        click_ids,
    )
    assert len(rows) == len(requests)
    for conversion_id, (_, txid) in zip(conversion_ids, requests, strict=True):
        await wait_for(
            lambda cid=conversion_id: _async(observer.for_conversion(cid)),
            message=f"event of conversion {conversion_id}",
        )
        (observed,) = observer.for_conversion(conversion_id)
        assert observed.event().txid == txid


async def test_post_and_s2s_answer_a_repeat_with_byte_identical_bodies(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    """POST's lean path and the FastAPI route serialise the same conversion alike."""
    click_id = await _click(database_url, setup)
    first = await gateway.post(
        "/api/v1/conversions",
        json={"click_id": click_id, "txid": "same", "payout": "2.5"},
        headers={"X-Api-Key": setup.advertiser_key},
    )
    repeat = await gateway.get(
        "/api/v1/conversions/s2s",
        params={"click_id": str(click_id), "txid": "same", "key": setup.advertiser_key},
    )
    assert (first.status_code, repeat.status_code) == (201, 200)
    assert repeat.content == first.content
    assert repeat.headers["content-type"] == first.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json"]
)
async def test_json_content_type_variants_are_accepted(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str, content_type: str
) -> None:
    click_id = await _click(database_url, setup)
    response = await gateway.post(
        "/api/v1/conversions",
        content=f'{{"click_id": {click_id}}}'.encode(),
        headers={"X-Api-Key": setup.advertiser_key, "Content-Type": content_type},
    )
    assert response.status_code == 201, response.text
    assert response.json()["click_id"] == str(click_id)


async def test_a_large_padded_body_is_read_in_full(
    gateway: httpx.AsyncClient, setup: Setup, database_url: str
) -> None:
    """Bodies beyond the lean path's limit are handed to FastAPI with nothing lost."""
    click_id = await _click(database_url, setup)
    body = b'{"click_id": ' + str(click_id).encode() + b"," + b" " * 100_000 + b'"txid": "big"}'
    response = await gateway.post(
        "/api/v1/conversions",
        content=body,
        headers={"X-Api-Key": setup.advertiser_key, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["txid"] == "big"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"click_id=1", "application/x-www-form-urlencoded"),
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
    ],
)
async def test_non_json_or_broken_bodies_are_422_with_a_reason(
    gateway: httpx.AsyncClient, setup: Setup, content: bytes, content_type: str
) -> None:
    response = await gateway.post(
        "/api/v1/conversions",
        content=content,
        headers={"X-Api-Key": setup.advertiser_key, "Content-Type": content_type},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


async def test_batch_insert_stores_payloads_byte_for_byte_and_money_exactly(
    db: asyncpg.Connection,
) -> None:
    import uuid as uuid_module
    from datetime import UTC, datetime

    from click_gateway.conversions.repository import NewConversion, insert_many_with_events

    base = 9_000_000_000 + int(time.time() * 1000) % 1_000_000_000
    payloads = [
        '{"external_id":"é \\\\ \\" \u2028 😀","n":1}'.encode(),
        b'{"external_id":"plain","n":2}',
    ]
    conversions = [
        NewConversion(
            id=base + n,
            click_id=base + n,
            txid=f"bytes-{n}",
            event_id=uuid_module.uuid4(),
            advertiser_id=1,
            publisher_id=1,
            offer_id=None,
            smartlink_id=None,
            payout=Decimal("1234.5678") if n == 0 else Decimal("0.0001"),
            status="approved",
            created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        )
        for n in range(2)
    ]
    # Inside a transaction that is rolled back: no relay ever sees these rows.
    transaction = db.transaction()
    await transaction.start()
    try:
        inserted = await insert_many_with_events(
            db, list(zip(conversions, payloads, strict=True)), exchange="x", routing_key="y"
        )
        assert inserted == [True, True]
        for conversion, payload in zip(conversions, payloads, strict=True):
            row = await db.fetchrow(
                "SELECT c.payout, c.created_at, o.payload FROM conversions c "
                "JOIN outbox o ON o.event_id = c.event_id WHERE c.id = $1",
                conversion.id,
            )
            assert row["payload"] == payload
            assert row["payout"] == conversion.payout
            assert str(row["payout"]) == str(conversion.payout)
            assert row["created_at"] == conversion.created_at
        # A repeat of the same (click_id, txid) inserts nothing.
        again = await insert_many_with_events(
            db, [(conversions[0], payloads[0])], exchange="x", routing_key="y"
        )
        assert again == [False]
    finally:
        await transaction.rollback()
