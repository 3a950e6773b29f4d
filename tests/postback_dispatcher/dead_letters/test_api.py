"""The operators' dead-letter API against a real dispatcher, database and broker."""

from __future__ import annotations

import gc
import warnings
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select, text, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_core.db.base import unit_of_work
from postback_core.db.models import DeadLetter, Delivery, DeliveryAttempt
from postback_core.topology import HEADER_ATTEMPT, HEADER_SEQUENCE, HEADER_TRIGGER
from postback_dispatcher.dead_letters.repository import DeadLetterFilters
from tests.postback_dispatcher.portal_fixtures import (
    EventTap,
    create_publisher,
    insert_dead_letter,
)
from tests.support.polling import wait_for
from tests.support.servers import Receiver

Db = async_sessionmaker[AsyncSession]


async def _state(db: Db, dead_letter_id: int) -> str:
    async with db() as session:
        return (
            await session.execute(select(DeadLetter.state).where(DeadLetter.id == dead_letter_id))
        ).scalar_one()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/dead-letters"),
        ("GET", "/api/v1/dead-letters/stats"),
        ("GET", "/api/v1/dead-letters/1"),
        ("POST", "/api/v1/dead-letters/1/replay"),
        ("POST", "/api/v1/dead-letters/replay"),
        ("DELETE", "/api/v1/dead-letters/1"),
        ("POST", "/api/v1/dead-letters/purge"),
    ],
)
async def test_every_endpoint_requires_the_admin_token(
    api: httpx.AsyncClient, method: str, path: str
) -> None:
    anonymous = await api.request(method, path, json={"confirm": True})
    assert anonymous.status_code == 401
    assert "Bearer" in anonymous.json()["detail"]
    wrong = await api.request(
        method, path, json={"confirm": True}, headers={"Authorization": "Bearer not-the-token"}
    )
    assert wrong.status_code == 401


async def test_list_shows_open_items_with_masked_url_and_decimal_payout(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str]
) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id, payout="1.2500", offer_id=77)
    gone = await insert_dead_letter(db, publisher_id=publisher.id)
    async with unit_of_work(db) as session:
        await session.execute(
            update(DeadLetter).where(DeadLetter.id == gone.id).values(state="purged")
        )

    response = await api.get(
        "/api/v1/dead-letters", params={"publisher_id": publisher.id}, headers=admin_headers
    )

    assert response.status_code == 200
    body = response.json()
    assert [item["id"] for item in body["items"]] == [row.id]
    item = body["items"][0]
    assert item["payout"] == "1.2500"
    assert item["offer_id"] == 77
    assert item["conversion_id"] == row.conversion_id
    assert item["click_id"] == str(row.click_id)  # 64-bit ids travel as strings
    assert item["url"].endswith("token=***")
    assert item["attempts"] == 2
    assert item["last_status"] == 503
    assert item["reason"] == "exhausted"
    for key in ("last_error", "first_attempt_at", "last_attempt_at", "dead_at"):
        assert item[key]
    assert body["next_cursor"] is None


async def test_filters_narrow_the_list(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str]
) -> None:
    publisher = await create_publisher(db)
    now = datetime.now(UTC)
    old = await insert_dead_letter(
        db, publisher_id=publisher.id, offer_id=1, dead_at=now - timedelta(days=2)
    )
    blocked = await insert_dead_letter(
        db, publisher_id=publisher.id, offer_id=2, reason="ssrf_blocked", last_status=None
    )
    not_found = await insert_dead_letter(
        db, publisher_id=publisher.id, offer_id=2, reason="permanent_http_4xx", last_status=404
    )

    async def ids(**params: object) -> list[int]:
        response = await api.get(
            "/api/v1/dead-letters",
            params={"publisher_id": publisher.id, **params},
            headers=admin_headers,
        )
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(offer_id=2) == [not_found.id, blocked.id]
    assert await ids(reason="ssrf_blocked") == [blocked.id]
    assert await ids(last_status=404) == [not_found.id]
    assert await ids(until=(now - timedelta(days=1)).isoformat()) == [old.id]
    assert old.id not in await ids(since=(now - timedelta(hours=1)).isoformat())
    bad = await api.get(
        "/api/v1/dead-letters", params={"since": "yesterday-ish"}, headers=admin_headers
    )
    assert bad.status_code == 422


async def test_keyset_pagination_walks_every_item_once_newest_first(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str]
) -> None:
    publisher = await create_publisher(db)
    same_moment = datetime.now(UTC) - timedelta(minutes=3)
    rows = [
        await insert_dead_letter(
            db,
            publisher_id=publisher.id,
            # ties on dead_at must still page correctly (id breaks them)
            dead_at=same_moment if i % 2 else same_moment - timedelta(seconds=i),
        )
        for i in range(7)
    ]
    expected = [r.id for r in sorted(rows, key=lambda r: (r.dead_at, r.id), reverse=True)]

    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, object] = {"publisher_id": publisher.id, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await api.get("/api/v1/dead-letters", params=params, headers=admin_headers)
        assert response.status_code == 200
        body = response.json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages == 3

    bad = await api.get(
        "/api/v1/dead-letters", params={"cursor": "definitely-not-ours"}, headers=admin_headers
    )
    assert bad.status_code == 422
    assert "cursor" in bad.json()["detail"]


async def test_listing_query_uses_the_partial_index(db: Db) -> None:
    """Page time must not grow with the table: the plan walks an open-rows index, no sort."""
    plans: list[str] = []
    for filters in (DeadLetterFilters(), DeadLetterFilters(publisher_id=1)):
        stmt = (
            select(DeadLetter.id)
            .where(*filters.conditions())
            .where(tuple_(DeadLetter.dead_at, DeadLetter.id) < tuple_(datetime.now(UTC), 10**12))
            .order_by(DeadLetter.dead_at.desc(), DeadLetter.id.desc())
            .limit(51)
        )
        sql = str(
            stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
        )
        async with db() as session:
            await session.execute(text("SET LOCAL enable_seqscan = off"))
            plans.append("\n".join((await session.execute(text("EXPLAIN " + sql))).scalars()))
    assert "ix_dead_letters_open_dead_at" in plans[0]
    assert "ix_dead_letters_open_publisher" in plans[1]
    assert all("Sort" not in plan for plan in plans)


async def test_detail_has_the_full_attempt_history(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str]
) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id, attempts=3)

    response = await api.get(f"/api/v1/dead-letters/{row.id}", headers=admin_headers)

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == row.id
    assert body["state"] == "dead"
    assert [a["attempt_no"] for a in body["attempt_history"]] == [1, 2, 3]
    assert [a["trigger"] for a in body["attempt_history"]] == ["first", "retry", "retry"]
    assert body["attempt_history"][-1]["outcome"] == "dead"
    assert body["attempt_history"][0]["http_status"] == 503
    missing = await api.get("/api/v1/dead-letters/999999999", headers=admin_headers)
    assert missing.status_code == 404
    assert "not found" in missing.json()["detail"]


async def test_replay_publishes_a_new_sequence_and_refuses_a_second_time(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str], event_tap: EventTap
) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id)

    first = await api.post(f"/api/v1/dead-letters/{row.id}/replay", headers=admin_headers)

    assert first.status_code == 202
    assert first.json() == {"id": row.id, "state": "replayed", "sequence": 1}
    listed = await api.get(
        "/api/v1/dead-letters", params={"publisher_id": publisher.id}, headers=admin_headers
    )
    assert listed.json()["items"] == []
    messages = await wait_for(event_tap.drain, message="the replayed event")
    assert len(messages) == 1
    message = messages[0]
    assert message.body == row.payload  # type: ignore[attr-defined]
    headers = message.headers  # type: ignore[attr-defined]
    assert headers[HEADER_TRIGGER] == "replay"
    assert headers[HEADER_SEQUENCE] == 1
    assert headers[HEADER_ATTEMPT] == 0
    assert message.delivery_mode == 2  # type: ignore[attr-defined]  # persistent

    second = await api.post(f"/api/v1/dead-letters/{row.id}/replay", headers=admin_headers)
    assert second.status_code == 409
    assert "already replayed" in second.json()["detail"]

    # It dead-lettered again: the archiver revives the row; replay is allowed once more.
    async with unit_of_work(db) as session:
        await session.execute(
            update(DeadLetter).where(DeadLetter.id == row.id).values(state="dead", sequence=1)
        )
    third = await api.post(f"/api/v1/dead-letters/{row.id}/replay", headers=admin_headers)
    assert third.status_code == 202
    assert third.json()["sequence"] == 2


async def test_concurrent_replays_of_one_item_send_it_once(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str], event_tap: EventTap
) -> None:
    import asyncio

    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id)

    answers = await asyncio.gather(
        *(
            api.post(f"/api/v1/dead-letters/{row.id}/replay", headers=admin_headers)
            for _ in range(5)
        )
    )

    assert sorted(a.status_code for a in answers) == [202, 409, 409, 409, 409]
    await wait_for(event_tap.drain, message="the replayed event")
    assert len(await event_tap.drain()) == 1


async def test_replay_that_the_broker_does_not_take_leaves_the_item_listed(db: Db) -> None:
    from postback_dispatcher.dead_letters import service
    from postback_dispatcher.dead_letters.publisher import ReplayPublisher
    from tests.support.servers import free_port

    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id)
    unreachable = ReplayPublisher(
        f"amqp://guest:guest@127.0.0.1:{free_port()}/", (1.0,), confirm_timeout=2
    )

    with pytest.raises(service.BrokerUnavailable):
        await service.replay_one(db, unreachable, row.id)

    assert await _state(db, row.id) == "dead"
    await unreachable.close()
    # aio-pika leaves the failed connection object to the garbage collector, whose
    # finaliser schedules a close that nobody awaits: collect it here, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gc.collect()


async def test_bulk_replay_dry_run_counts_and_totals_then_replays_all(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str], event_tap: EventTap
) -> None:
    publisher = await create_publisher(db)
    other = await create_publisher(db)
    for payout in ("0.10", "0.20", "0.3333"):
        await insert_dead_letter(db, publisher_id=publisher.id, payout=payout)
    untouched = await insert_dead_letter(db, publisher_id=other.id, payout="9.99")

    dry = await api.post(
        "/api/v1/dead-letters/replay",
        json={"publisher_id": publisher.id, "dry_run": True},
        headers=admin_headers,
    )
    assert dry.status_code == 200
    assert dry.json()["count"] == 3
    assert Decimal(dry.json()["payout_total"]) == Decimal("0.6333")
    assert isinstance(dry.json()["payout_total"], str)
    assert await event_tap.drain() == []

    real = await api.post(
        "/api/v1/dead-letters/replay", json={"publisher_id": publisher.id}, headers=admin_headers
    )
    assert real.status_code == 200
    assert real.json()["count"] == 3
    listed = await api.get(
        "/api/v1/dead-letters", params={"publisher_id": publisher.id}, headers=admin_headers
    )
    assert listed.json()["items"] == []
    await wait_for(
        lambda: _count_at_least(event_tap, 3), message="three replayed events on the exchange"
    )
    assert len(event_tap.messages) == 3
    assert await _state(db, untouched.id) == "dead"


async def _count_at_least(tap: EventTap, n: int) -> bool:
    return len(await tap.drain()) >= n


async def test_bulk_replay_runs_in_batches_and_honours_limit(db: Db, amqp_url: str) -> None:
    """Bounded batches: a small batch size still replays everything, oldest first."""
    from postback_dispatcher.dead_letters import service
    from postback_dispatcher.dead_letters.publisher import ReplayPublisher

    publisher = await create_publisher(db)
    now = datetime.now(UTC)
    rows = [
        await insert_dead_letter(
            db, publisher_id=publisher.id, dead_at=now - timedelta(minutes=10 - i)
        )
        for i in range(5)
    ]
    replayer = ReplayPublisher(amqp_url, (0.2,))
    try:
        filters = DeadLetterFilters(publisher_id=publisher.id)
        first = await service.replay_matching(db, replayer, filters, limit=2, batch_size=1)
        assert (first.replayed, first.failed) == (2, 0)
        assert [await _state(db, r.id) for r in rows] == ["replayed"] * 2 + ["dead"] * 3
        rest = await service.replay_matching(db, replayer, filters, batch_size=2)
        assert (rest.replayed, rest.failed) == (3, 0)
    finally:
        await replayer.close()


async def test_purge_one_and_purge_matching_need_confirmation(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str]
) -> None:
    publisher = await create_publisher(db)
    single = await insert_dead_letter(db, publisher_id=publisher.id)
    bulk = [await insert_dead_letter(db, publisher_id=publisher.id, offer_id=5) for _ in range(2)]

    deleted = await api.delete(f"/api/v1/dead-letters/{single.id}", headers=admin_headers)
    assert deleted.status_code == 204
    assert await _state(db, single.id) == "purged"
    again = await api.delete(f"/api/v1/dead-letters/{single.id}", headers=admin_headers)
    assert again.status_code == 404

    refused = await api.post(
        "/api/v1/dead-letters/purge",
        json={"publisher_id": publisher.id, "offer_id": 5},
        headers=admin_headers,
    )
    assert refused.status_code == 422
    assert "confirm" in refused.json()["detail"]
    assert [await _state(db, r.id) for r in bulk] == ["dead", "dead"]

    purged = await api.post(
        "/api/v1/dead-letters/purge",
        json={"publisher_id": publisher.id, "offer_id": 5, "confirm": True},
        headers=admin_headers,
    )
    assert purged.status_code == 200
    assert purged.json() == {"count": 2}
    listed = await api.get(
        "/api/v1/dead-letters", params={"publisher_id": publisher.id}, headers=admin_headers
    )
    assert listed.json()["items"] == []


async def test_a_replayed_item_cannot_be_purged(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str], event_tap: EventTap
) -> None:
    publisher = await create_publisher(db)
    row = await insert_dead_letter(db, publisher_id=publisher.id)
    assert (
        await api.post(f"/api/v1/dead-letters/{row.id}/replay", headers=admin_headers)
    ).status_code == 202
    refused = await api.delete(f"/api/v1/dead-letters/{row.id}", headers=admin_headers)
    assert refused.status_code == 409


async def test_stats_give_count_and_payout_at_risk_per_publisher_oldest_first(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str]
) -> None:
    now = datetime.now(UTC)
    recent = await create_publisher(db)
    oldest = await create_publisher(db)
    await insert_dead_letter(db, publisher_id=recent.id, payout="1.00", dead_at=now)
    await insert_dead_letter(db, publisher_id=recent.id, payout="0.25", dead_at=now)
    await insert_dead_letter(
        db, publisher_id=oldest.id, payout="2.00", dead_at=now - timedelta(days=400)
    )

    response = await api.get("/api/v1/dead-letters/stats", headers=admin_headers)

    assert response.status_code == 200
    body = response.json()
    by_publisher = {p["publisher_id"]: p for p in body["publishers"]}
    assert by_publisher[recent.id]["count"] == 2
    assert Decimal(by_publisher[recent.id]["payout_at_risk"]) == Decimal("1.25")
    assert Decimal(by_publisher[oldest.id]["payout_at_risk"]) == Decimal("2.00")
    order = [p["publisher_id"] for p in body["publishers"]]
    assert order[0] == oldest.id  # 400 days old: nothing in this run is older
    assert order.index(oldest.id) < order.index(recent.id)
    assert body["total_count"] >= 3
    assert Decimal(body["total_payout_at_risk"]) >= Decimal("3.25")


async def test_a_replay_is_delivered_once_as_one_new_delivery_sequence(
    api: httpx.AsyncClient, db: Db, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    """End to end through the real consumer: the fixed URL gets exactly one postback."""
    publisher = await create_publisher(
        db, url_template=f"{receiver.base_url}/fixed?cid={{external_id}}&p={{payout}}"
    )
    row = await insert_dead_letter(
        db, publisher_id=publisher.id, payout="2.50", external_id="ext-once"
    )

    response = await api.post(f"/api/v1/dead-letters/{row.id}/replay", headers=admin_headers)
    assert response.status_code == 202

    async def delivered() -> Delivery | None:
        async with db() as session:
            found = await session.get(Delivery, row.conversion_id)
            if found is not None:
                await session.refresh(found)
            return found if found is not None and found.status == "delivered" else None

    delivery = await wait_for(delivered, timeout=15, message="the replayed postback delivered")
    assert delivery.sequence == 1
    assert [r.query for r in receiver.matching("/fixed")] == [{"cid": "ext-once", "p": "2.50"}]
    async with db() as session:
        replays = (
            await session.scalars(
                select(DeliveryAttempt).where(
                    DeliveryAttempt.conversion_id == row.conversion_id,
                    DeliveryAttempt.trigger == "replay",
                )
            )
        ).all()
    assert [(a.sequence, a.attempt_no, a.outcome) for a in replays] == [(1, 1, "delivered")]
    detail = await api.get(f"/api/v1/dead-letters/{row.id}", headers=admin_headers)
    assert detail.json()["state"] == "replayed"
    assert detail.json()["attempt_history"][-1]["trigger"] == "replay"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/dead-letters", None),
        ("POST", "/api/v1/dead-letters/replay", {"dry_run": True}),
        ("POST", "/api/v1/dead-letters/purge", {"dry_run": True}),
    ],
)
async def test_an_unknown_reason_filter_is_422_not_an_empty_match(
    api: httpx.AsyncClient,
    admin_headers: dict[str, str],
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    for reason in ("permanent", "PERMANENT_HTTP_4XX", "exhausted\x00"):
        if body is None:
            response = await api.get(path, params={"reason": reason}, headers=admin_headers)
        else:
            response = await api.request(
                method, path, json=body | {"reason": reason}, headers=admin_headers
            )
        assert response.status_code == 422, (reason, response.text)
        assert response.json()["detail"][0]["loc"][-1] == "reason"


async def test_the_database_refuses_a_reason_state_or_outcome_outside_the_enumerations(
    db: Db,
) -> None:
    publisher = await create_publisher(db)
    with pytest.raises(IntegrityError, match="ck_dead_letters_reason_known"):
        await insert_dead_letter(db, publisher_id=publisher.id, reason="permanent")
    row = await insert_dead_letter(db, publisher_id=publisher.id)
    for statement, constraint in (
        ("UPDATE dead_letters SET state = 'archived' WHERE id = :id", "state_known"),
        (
            "UPDATE delivery_attempts SET outcome = 'ok' WHERE conversion_id = :cid",
            "outcome_known",
        ),
        (
            "UPDATE delivery_attempts SET trigger = 'manual' WHERE conversion_id = :cid",
            "trigger_known",
        ),
    ):
        with pytest.raises(IntegrityError, match=constraint):
            async with unit_of_work(db) as session:
                await session.execute(text(statement), {"id": row.id, "cid": row.conversion_id})


@pytest.mark.parametrize(
    "filters",
    [{"publisher_id": 2**63}, {"offer_id": 10**20}, {"publisher_id": 0}, {"last_status": 1000}],
)
async def test_out_of_range_filters_are_422_not_a_database_error(
    api: httpx.AsyncClient, admin_headers: dict[str, str], filters: dict[str, int]
) -> None:
    listed = await api.get("/api/v1/dead-letters", params=filters, headers=admin_headers)
    assert listed.status_code == 422, listed.text
    for path in ("/api/v1/dead-letters/replay", "/api/v1/dead-letters/purge"):
        response = await api.post(path, json=filters | {"dry_run": True}, headers=admin_headers)
        assert response.status_code == 422, (path, response.text)
