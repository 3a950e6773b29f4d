"""RabbitMQ topology for conversion events, declared in one place for both services.

    gateway ──publish──▶ [postback.events] (topic) ──conversion.*──▶ (postback.work)  quorum
                                                                          │ dispatcher consumes
    dispatcher ─retry─▶ [postback.retry] (direct) ─tier name─▶ (postback.retry.<ms>ms)
                         queue TTL = tier delay, dead-letters straight back to (postback.work)
    dispatcher ─dead──▶ [postback.dead] (fanout) ─────────────▶ (postback.dead-letters) quorum

One retry queue per backoff tier with a queue-level TTL means no head-of-line
blocking: every message in a tier waits the same time. Tier queues are named by
their delay, so changing POSTBACK_RETRY_DELAYS declares new queues instead of
colliding with the immutable arguments of existing ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

EVENTS_EXCHANGE = "postback.events"
WORK_QUEUE = "postback.work"
RETRY_EXCHANGE = "postback.retry"
DEAD_EXCHANGE = "postback.dead"
DEAD_LETTER_QUEUE = "postback.dead-letters"

# Backstop against poison loops that escape the dispatcher's own attempt
# accounting (e.g. a consumer that crashes before it can record anything).
WORK_QUEUE_DELIVERY_LIMIT = 50

# Message headers the dispatcher keeps across hops.
HEADER_ATTEMPT = "x-postback-attempt"  # attempts already made, in this delivery sequence
HEADER_TRIGGER = "x-postback-trigger"  # first | retry | replay
HEADER_SEQUENCE = "x-postback-sequence"  # replay generation; bumps on each explicit replay
HEADER_FIRST_ATTEMPT_AT = "x-postback-first-attempt-at"
HEADER_LAST_STATUS = "x-postback-last-status"
HEADER_LAST_ERROR = "x-postback-last-error"
HEADER_DEAD_REASON = "x-postback-dead-reason"
HEADER_HISTORY = "x-postback-history"
HEADER_DEFERRALS = "x-postback-deferrals"  # times a paused target deferred it (this attempt)
# An oversized message's dead letter carries an excerpt; these describe the original.
HEADER_BODY_BYTES = "x-postback-body-bytes"
HEADER_BODY_SHA256 = "x-postback-body-sha256"


def retry_queue_name(delay_seconds: float) -> str:
    return f"{WORK_QUEUE}.retry.{round(delay_seconds * 1000)}ms"


def retry_routing_key(delay_seconds: float) -> str:
    return f"tier.{round(delay_seconds * 1000)}ms"


@dataclass(frozen=True)
class Topology:
    events: AbstractExchange
    retry: AbstractExchange
    dead: AbstractExchange
    work_queue: AbstractQueue
    dead_letter_queue: AbstractQueue
    retry_queues: dict[float, AbstractQueue]


async def declare_topology(channel: AbstractChannel, retry_delays: tuple[float, ...]) -> Topology:
    """Declare (idempotently) every exchange and queue; safe to call from any process."""
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    retry = await channel.declare_exchange(
        RETRY_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dead = await channel.declare_exchange(DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)

    dead_letter_queue = await channel.declare_queue(
        DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_letter_queue.bind(dead)

    work_queue = await channel.declare_queue(
        WORK_QUEUE,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": WORK_QUEUE_DELIVERY_LIMIT,
            # Messages the broker gives up on (delivery limit) land in the DLQ too.
            "x-dead-letter-exchange": DEAD_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    await work_queue.bind(events, routing_key="conversion.*")

    retry_queues: dict[float, AbstractQueue] = {}
    for delay in dict.fromkeys(retry_delays):
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-message-ttl": round(delay * 1000),
            # Straight back to the work queue through the default exchange, so
            # retries never reach other consumers bound to the events exchange.
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": WORK_QUEUE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        queue = await channel.declare_queue(
            retry_queue_name(delay), durable=True, arguments=arguments
        )
        await queue.bind(retry, routing_key=retry_routing_key(delay))
        retry_queues[delay] = queue

    return Topology(
        events=events,
        retry=retry,
        dead=dead,
        work_queue=work_queue,
        dead_letter_queue=dead_letter_queue,
        retry_queues=retry_queues,
    )
