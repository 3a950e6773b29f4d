"""DISPATCHER_WORKERS: extra consumer processes share the work queue and stop gracefully."""

from __future__ import annotations

import asyncio
import os
import signal

import aio_pika
import asyncpg

from postback_core.settings import AUTO_WORKERS_MAX
from postback_core.topology import WORK_QUEUE
from postback_dispatcher.settings import DispatcherSettings
from postback_dispatcher.workers import worker_settings
from tests.postback_dispatcher.conftest import (
    create_publisher_with_settings,
    fresh_vhost,
    make_event,
    publish_many,
    running_dispatcher,
)
from tests.support.polling import wait_for
from tests.support.servers import Receiver


async def _consumers(amqp_url: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(WORK_QUEUE, passive=True)
        result = queue.declaration_result
        return int(result.consumer_count or 0)
    finally:
        await connection.close()


async def _delivered(pg: asyncpg.Pool, conversion_ids: list[int]) -> int:
    count: int = await pg.fetchval(
        "SELECT count(*) FROM deliveries WHERE conversion_id = ANY($1::bigint[])"
        " AND status = 'delivered'",
        conversion_ids,
    )
    return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_per_host_cap_is_shared_out() -> None:
    settings = DispatcherSettings(ENV="dev", DISPATCHER_WORKERS=3, POSTBACK_PER_HOST_CONCURRENCY=64)
    assert worker_settings(settings).per_host_concurrency == 22
    assert worker_settings(settings).concurrency == settings.concurrency  # prefetch per worker
    single = DispatcherSettings(ENV="dev", DISPATCHER_WORKERS=1)
    assert worker_settings(single) is single


def test_workers_default_to_one_per_cpu_at_most_four() -> None:
    auto = DispatcherSettings(ENV="dev", _env_file=None)
    assert auto.workers == max(1, min(len(os.sched_getaffinity(0)), AUTO_WORKERS_MAX))
    assert DispatcherSettings(ENV="dev", DISPATCHER_WORKERS=3).workers == 3


async def test_workers_share_the_queue_and_all_drain_on_stop(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    in_flight = [0, 0]  # now, peak

    async def slow(request: object) -> int:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            await asyncio.sleep(0.3)
        finally:
            in_flight[0] -= 1
        return 200

    receiver.responder = slow
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/w")
    events = [make_event(publisher_id) for _ in range(80)]
    ids = [e.conversion_id for e in events]
    async with fresh_vhost() as amqp_url:
        async with running_dispatcher(
            database_url,
            amqp_url,
            DISPATCHER_WORKERS=2,
            DISPATCHER_CONCURRENCY=6,
            SHUTDOWN_GRACE_SECONDS=5,
        ) as handle:
            workers = handle.runtime.workers
            assert workers is not None and len(workers.pids) == 1
            worker_pid = workers.pids[0]
            assert await _consumers(amqp_url) == 2
            await publish_many(amqp_url, events)

            async def some_arrived() -> bool:
                return len(receiver.requests) >= 16

            await wait_for(some_arrived, timeout=20, message="requests from both processes")
        # Both processes sent at once (6 in flight each at most), and on stop both let
        # every request they had started finish and recorded it before exiting.
        assert in_flight[1] > 6
        assert not _alive(worker_pid)
        started = len(receiver.requests)
        assert await _delivered(pg, ids) == started < len(events)

        async with running_dispatcher(
            database_url, amqp_url, DISPATCHER_WORKERS=2, DISPATCHER_CONCURRENCY=32
        ):
            await wait_for(lambda: _finished(pg, ids), timeout=20, message="the rest after restart")
    assert sorted(r.headers["X-Postback-Id"] for r in receiver.requests) == sorted(
        str(e.event_id) for e in events
    )  # each exactly once


async def _finished(pg: asyncpg.Pool, ids: list[int]) -> bool:
    return await _delivered(pg, ids) == len(ids)


async def test_a_dead_worker_is_started_again(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/again")
    async with (
        fresh_vhost() as amqp_url,
        running_dispatcher(database_url, amqp_url, DISPATCHER_WORKERS=2) as handle,
    ):
        workers = handle.runtime.workers
        assert workers is not None
        (first,) = workers.pids
        os.kill(first, signal.SIGKILL)

        async def replaced() -> bool:
            return workers.restarts == 1 and bool(workers.pids) and workers.pids != [first]

        await wait_for(replaced, timeout=30, message="a new worker")
        await wait_for(lambda: _consumers_are(amqp_url, 2), timeout=10, message="consumers")
        events = [make_event(publisher_id) for _ in range(20)]
        await publish_many(amqp_url, events)
        await wait_for(
            lambda: _finished(pg, [e.conversion_id for e in events]),
            timeout=20,
            message="deliveries after the restart",
        )


async def _consumers_are(amqp_url: str, n: int) -> bool:
    return await _consumers(amqp_url) == n


async def test_light_traffic_stays_in_the_serving_process(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    """Consumer priority: workers take only the overflow, so a trickle is batched in one place."""
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/light")
    events = [make_event(publisher_id) for _ in range(10)]
    ids = [e.conversion_id for e in events]
    async with (
        fresh_vhost() as amqp_url,
        running_dispatcher(database_url, amqp_url, DISPATCHER_WORKERS=2) as handle,
    ):
        assert await _consumers(amqp_url) == 2
        for sent, event in enumerate(events, 1):
            await publish_many(amqp_url, [event])

            async def arrived(n: int = sent) -> bool:
                return len(receiver.requests) >= n

            await wait_for(arrived, timeout=10, message=f"postback {sent}")
        await wait_for(lambda: _finished(pg, ids), timeout=10, message="all recorded")

        async def all_in_serving_process() -> bool:
            return handle.runtime.consumer.metrics.delivered == len(events)

        await wait_for(all_in_serving_process, timeout=5, message="every delivery counted here")
