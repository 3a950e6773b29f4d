"""Conversion events for pre-filling queues, published with confirms like the outbox relay."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import orjson

from bench.common import say
from postback_core.amqp_batch import Outgoing, publish_batch
from postback_core.contracts import CONVERSION_CREATED, decode_conversion_event
from postback_core.settings import DEFAULT_RETRY_DELAYS
from postback_core.topology import (
    EVENTS_EXCHANGE,
    HEADER_ATTEMPT,
    HEADER_TRIGGER,
    RETRY_EXCHANGE,
    declare_topology,
    retry_routing_key,
)


def event_body(conversion_id: int, publisher_id: int) -> tuple[str, bytes]:
    """(event id, JSON body) of a schema-v1 ``conversion.created`` event."""
    event_id = str(uuid.uuid4())
    body = {
        "schema_version": 1,
        "event_type": CONVERSION_CREATED,
        "event_id": event_id,
        "conversion_id": conversion_id,
        "click_id": 7_000_000_000_000 + conversion_id,
        "external_id": f"ext-{conversion_id}",
        "publisher_id": publisher_id,
        "smartlink_id": 1,
        "offer_id": 1,
        "advertiser_id": 1,
        "payout": "0.5000",
        "currency": "USD",
        "txid": None,
        "country": "US",
        "ip": "8.8.8.8",
        "os": "Android",
        "device": "mobile",
        "sub_ids": {"sub1": "s1", "sub2": None, "sub3": None, "sub4": None, "sub5": None},
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    return event_id, orjson.dumps(body)


# Fail loudly here rather than in the dispatcher if the contract moves on.
decode_conversion_event(event_body(1, 1)[1])


async def publish_events(
    amqp_url: str,
    conversion_ids: Iterable[int],
    publisher_ids: list[int],
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
    into_retry_tier: float | None = None,
    window: int = 2000,
    connections: int = 1,
) -> dict[str, float]:
    """Publish one event per conversion id, with confirms; returns count, seconds, rate.

    ``into_retry_tier`` publishes straight into that retry tier's queue instead
    (messages that wait there for the tier's TTL) - used to load the broker.
    """
    ids = list(conversion_ids)
    shards = [ids[n::connections] for n in range(connections)]
    start = time.perf_counter()

    async def publish_shard(shard: list[int]) -> None:
        connection = await aio_pika.connect(amqp_url, timeout=15)
        try:
            channel = await connection.channel(publisher_confirms=True)
            topology = await declare_topology(channel, retry_delays)
            if into_retry_tier is None:
                exchange, routing_key = topology.events.name, CONVERSION_CREATED
                headers: dict[str, Any] | None = None
            else:
                exchange, routing_key = topology.retry.name, retry_routing_key(into_retry_tier)
                headers = {HEADER_ATTEMPT: 1, HEADER_TRIGGER: "retry"}
            # The relay's own batch publisher: one socket write per window, one
            # confirm per message (a 100,000-message backlog in seconds, not 20 s).
            underlay = await channel.get_underlay_channel()
            assert isinstance(underlay, aiormq.Channel)
            for offset in range(0, len(shard), window):
                messages = []
                for cid in shard[offset : offset + window]:
                    event_id, body = event_body(cid, publisher_ids[cid % len(publisher_ids)])
                    messages.append(
                        Outgoing(exchange, routing_key, body, message_id=event_id, headers=headers)
                    )
                outcomes = await publish_batch(underlay, messages, confirm_timeout=60)
                failed = [o for o in outcomes if o is not None]
                if failed:
                    raise RuntimeError(
                        f"{len(failed)} prefill messages not confirmed: {failed[0]!r}"
                    )
        finally:
            await connection.close()

    await asyncio.gather(*(publish_shard(s) for s in shards if s))
    elapsed = time.perf_counter() - start
    where = "events exchange" if into_retry_tier is None else f"retry tier {into_retry_tier:g}s"
    say(f"published {len(ids):,} events to the {where} in {elapsed:.1f}s")
    return {
        "count": len(ids),
        "seconds": round(elapsed, 3),
        "rate_per_s": round(len(ids) / elapsed, 1) if elapsed else 0.0,
    }


async def queue_depth(amqp_url: str, queue_name: str) -> int:
    connection = await aio_pika.connect(amqp_url, timeout=15)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def purge_queue(amqp_url: str, queue_name: str) -> None:
    """Empty a queue of the topology (declaring the topology first if nobody has yet)."""
    connection = await aio_pika.connect(amqp_url, timeout=15)
    try:
        channel = await connection.channel()
        await declare_topology(channel, DEFAULT_RETRY_DELAYS)
        queue = await channel.declare_queue(queue_name, passive=True)
        await queue.purge()
    finally:
        await connection.close()


__all__ = [
    "EVENTS_EXCHANGE",
    "RETRY_EXCHANGE",
    "event_body",
    "publish_events",
    "purge_queue",
    "queue_depth",
]
