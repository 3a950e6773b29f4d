"""Breaker isolation and graceful stop, each on its own dispatcher and vhost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from postback_dispatcher.archive import dead_letter_record
from tests.postback_dispatcher.conftest import (
    create_publisher_with_settings,
    dead_letter_row,
    delivery_row,
    fresh_vhost,
    make_event,
    publish_many,
    running_dispatcher,
)
from tests.support.polling import wait_for
from tests.support.servers import Receiver


@asynccontextmanager
async def black_hole() -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server that accepts connections and never answers."""
    writers: list[asyncio.StreamWriter] = []
    accepted = [0]

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        writers.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        for writer in writers:
            writer.close()
        server.close()


async def _delivered(pg: asyncpg.Pool, conversion_ids: list[int]) -> bool:
    rows = await pg.fetch(
        "SELECT count(*) AS n FROM deliveries WHERE conversion_id = ANY($1::bigint[])"
        " AND status = 'delivered'",
        conversion_ids,
    )
    return rows[0]["n"] == len(conversion_ids)


async def test_black_hole_host_does_not_slow_a_healthy_host(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    async with (
        fresh_vhost() as amqp_url,
        black_hole() as (hole_url, accepted),
        running_dispatcher(
            database_url,
            amqp_url,
            POSTBACK_TIMEOUT_SECONDS=1,
            POSTBACK_PER_HOST_CONCURRENCY=8,
            POSTBACK_BREAKER_THRESHOLD=3,
            POSTBACK_BREAKER_COOLDOWN_SECONDS=30,
            POSTBACK_RETRY_DELAYS="0.5,1",
            DISPATCHER_CONCURRENCY=64,
        ) as dispatcher,
    ):
        dead_pub = await create_publisher_with_settings(pg, hole_url + "/pb?c={click_id}")
        healthy_pub = await create_publisher_with_settings(pg, receiver.base_url + "/ok")
        doomed = [make_event(dead_pub) for _ in range(300)]
        healthy = [make_event(healthy_pub) for _ in range(30)]
        await publish_many(amqp_url, doomed)
        started = time.monotonic()
        await publish_many(amqp_url, healthy)
        await wait_for(
            lambda: _delivered(pg, [e.conversion_id for e in healthy]),
            timeout=8,
            message="healthy postbacks",
        )
        elapsed = time.monotonic() - started
        # Behind 300 queued black-hole events, the healthy host waits about one timeout
        # (while the breaker learns), not 300 / 8 timeouts.
        assert elapsed < 5, elapsed
        assert len(receiver.matching("/ok")) == 30
        # Only the first few requests went to the black hole; the rest were short-circuited.
        assert accepted[0] <= 8 + 3  # per-host cap + requests before the 3rd failure
        async with httpx.AsyncClient(base_url=dispatcher.base_url) as client:
            metrics = (await client.get("/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        # Counters add up over every dispatcher in this test process; >= is all we know.
        assert families["postback_breaker_opened"].samples[0].value >= 1
        assert families["postback_breaker_open_hosts"].type == "gauge"
        snapshot = dispatcher.runtime.consumer.snapshot()
        assert snapshot["breaker_short_circuited_total"] > 100
        sample = await pg.fetch(
            # Short-circuited postbacks are deferred, not charged: no attempt, no log row.
            "SELECT outcome FROM delivery_attempts WHERE conversion_id = ANY($1::bigint[])",
            [e.conversion_id for e in doomed],
        )
        assert "breaker_open" not in {r["outcome"] for r in sample}
        assert len(sample) <= accepted[0]


async def test_graceful_stop_finishes_in_flight_and_loses_nothing(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    async def slow(request):
        await asyncio.sleep(0.4)
        return 200

    receiver.responder = slow
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/slow")
    events = [make_event(publisher_id) for _ in range(40)]
    async with fresh_vhost() as amqp_url:
        async with running_dispatcher(
            database_url, amqp_url, DISPATCHER_CONCURRENCY=8, SHUTDOWN_GRACE_SECONDS=5
        ):
            await publish_many(amqp_url, events)

            async def some_arrived() -> bool:
                return len(receiver.requests) >= 4

            await wait_for(some_arrived, message="first requests in flight")
        # Stopped mid-stream: every request that started has finished and was recorded.
        started = len(receiver.requests)
        finished = await pg.fetchval(
            "SELECT count(*) FROM deliveries WHERE conversion_id = ANY($1::bigint[])"
            " AND status = 'delivered'",
            [e.conversion_id for e in events],
        )
        assert finished == started < len(events)

        async with running_dispatcher(database_url, amqp_url, DISPATCHER_CONCURRENCY=32):
            await wait_for(
                lambda: _delivered(pg, [e.conversion_id for e in events]),
                timeout=15,
                message="the rest after restart",
            )
        assert sorted(r.headers["X-Postback-Id"] for r in receiver.requests) == sorted(
            str(e.event_id) for e in events
        )  # each exactly once
        row = await delivery_row(pg, events[-1].conversion_id)
        assert row is not None and row["attempts"] == 1


async def test_guard_on_dead_letters_private_targets_without_a_request(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/internal")
    event = make_event(publisher_id)
    async with (
        fresh_vhost() as amqp_url,
        running_dispatcher(database_url, amqp_url, POSTBACK_ALLOW_PRIVATE_TARGETS=False),
    ):
        await publish_many(amqp_url, [event])
        dead = await wait_for(lambda: dead_letter_row(pg, str(event.event_id)))
    assert dead["reason"] == "ssrf_blocked" and dead["attempts"] == 1
    assert receiver.requests == []
    (attempt,) = await pg.fetch(
        "SELECT * FROM delivery_attempts WHERE conversion_id = $1", event.conversion_id
    )
    assert attempt["error_class"] == "SSRFBlocked" and attempt["outcome"] == "dead"


def test_broker_dead_lettered_messages_are_archived_with_their_reason() -> None:
    """What the quorum queue's delivery limit produces: no dispatcher headers at all."""
    event = make_event(1)
    record = dead_letter_record(
        event.to_json(), {"x-first-death-reason": "delivery_limit", "x-delivery-count": 50}
    )
    assert record.reason == "delivery_limit"
    assert record.event_key == str(event.event_id) and record.sequence == 0
    poison = dead_letter_record(b"\x00garbage", {})
    assert poison.event_key.startswith("sha256:") and poison.event_id is None
