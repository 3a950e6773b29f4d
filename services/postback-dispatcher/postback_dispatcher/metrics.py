"""The dispatcher's ``/metrics`` and the calls the delivery path reports through.

Every consumer process (the serving one and each ``DISPATCHER_WORKERS`` extra)
tallies in plain integers of its own and runs a ``DispatcherMetrics`` pump that
moves them into prometheus-client's (multiprocess) metrics once a second:

- ``observe_attempt`` / ``observe_delivered`` / ``observe_dead_letter``: what
  the consumer calls per postback (no lock, no mmap write on the hot path);
  ``observe_attempt`` also writes the one INFO line per delivery outcome;
- the pump also reads ``PostbackConsumer.snapshot()`` (messages by result,
  breaker figures, in-flight postbacks).

What is true of the whole dispatcher rather than of a process — retry-tier
and work-queue depths, consumers on the work queue, dead letters open and the
payout they hold — is read at scrape time from RabbitMQ (passive declares) and
PostgreSQL by the process that serves ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from postback_core.enums import AttemptOutcome, DeadLetterReason, StatusClass
from postback_core.metrics import (
    CONTENT_TYPE,
    DELIVERY_BUCKETS,
    REQUEST_BUCKETS,
    Exposition,
    LocalHistogram,
    MetricsPump,
    Tally,
    gauge,
)
from postback_core.topology import DEAD_LETTER_QUEUE, WORK_QUEUE, retry_queue_name
from postback_dispatcher.dead_letters import repository as dead_letter_repository

if TYPE_CHECKING:
    from postback_dispatcher.consumer import PostbackConsumer
    from postback_dispatcher.runtime import DispatcherRuntime

log = logging.getLogger(__name__)
delivery_log = logging.getLogger("postback_dispatcher.delivery")

REGISTRY = CollectorRegistry(auto_describe=True)
NO_REASON = "none"
BROKER_TIMEOUT_SECONDS = 5.0

ATTEMPTS = Counter(
    "postback_attempts",
    "Postback attempts, by outcome, HTTP status class and dead-letter reason.",
    ["outcome", "status_class", "reason"],
    registry=REGISTRY,
)
ATTEMPT_DURATION = Histogram(
    "postback_attempt_duration_seconds",
    "Time one postback attempt took (request sent to answer or error).",
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "postback_delivery_latency_seconds",
    "Time from the conversion being accepted to the publisher's 2xx (retries included).",
    buckets=DELIVERY_BUCKETS,
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "postback_dead_lettered",
    "Postbacks (or unreadable messages) sent to the dead-letter queue, by reason.",
    ["reason"],
    registry=REGISTRY,
)
MESSAGES = Counter(
    "postback_dispatcher_messages",
    "Work-queue messages handled by the consumers, by result.",
    ["result"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "postback_dispatcher_in_flight",
    "Postbacks being handled right now (all consumer processes).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
BREAKER_OPEN_HOSTS = Gauge(
    "postback_breaker_open_hosts",
    "Target hosts whose circuit breaker is open (largest over consumer processes).",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
BREAKER_OPENED = Counter(
    "postback_breaker_opened",
    "Times a target host's circuit breaker opened.",
    registry=REGISTRY,
)
BREAKER_SHORT_CIRCUITED = Counter(
    "postback_breaker_short_circuited",
    "Postbacks not sent because their host's breaker was open (deferred, no attempt used).",
    registry=REGISTRY,
)

ATTEMPT_TALLY = Tally(ATTEMPTS)
DEAD_LETTER_TALLY = Tally(DEAD_LETTERED)
ATTEMPT_DURATION_LOCAL = LocalHistogram(ATTEMPT_DURATION, REQUEST_BUCKETS)
DELIVERY_LATENCY_LOCAL = LocalHistogram(DELIVERY_LATENCY, DELIVERY_BUCKETS)

# snapshot() counter → MESSAGES result label
SNAPSHOT_RESULTS = {
    "delivered": "delivered",
    "retried": "retried",
    "dead_lettered": "dead_lettered",
    "skipped": "skipped",
    "duplicates_dropped": "duplicate",
    "poison": "poison",
    "breaker_open": "deferred",
    "errors": "error",
}
SNAPSHOT_COUNTERS = {
    "breaker_opened_total": BREAKER_OPENED,
    "breaker_short_circuited_total": BREAKER_SHORT_CIRCUITED,
}


def status_class(http_status: int | None) -> StatusClass:
    if http_status is None or not 100 <= http_status <= 599:
        return StatusClass.NONE
    return StatusClass(f"{http_status // 100}xx")


def observe_attempt(
    outcome: AttemptOutcome,
    *,
    http_status: int | None,
    duration_seconds: float | None,
    reason: DeadLetterReason | None = None,
    conversion_id: int | None = None,
    event_id: object | None = None,
    attempt_no: int | None = None,
    url_masked: str | None = None,
    error_class: str | None = None,
) -> None:
    """One postback attempt's outcome: counted, timed and logged (one INFO line).

    ``url_masked`` must already have its security token masked.
    """
    klass = status_class(http_status)
    ATTEMPT_TALLY.add(outcome.value, klass.value, reason.value if reason else NO_REASON)
    if duration_seconds is not None:
        ATTEMPT_DURATION_LOCAL.observe(duration_seconds)
    fields = {
        "outcome": outcome.value,
        "conversion_id": conversion_id,
        "event_id": None if event_id is None else str(event_id),
        "attempt": attempt_no,
        "http_status": http_status,
        "status_class": klass.value,
        "reason": reason.value if reason else None,
        "duration_ms": None if duration_seconds is None else round(duration_seconds * 1000, 2),
        "url": url_masked,
        "error_class": error_class,
    }
    # Unknown fields are left out (the delivery context may already carry the ids).
    delivery_log.info(
        "postback %s", outcome.value, extra={k: v for k, v in fields.items() if v is not None}
    )


def observe_delivered(latency_seconds: float) -> None:
    """Conversion accepted → publisher's 2xx, for the delivery-latency histogram."""
    DELIVERY_LATENCY_LOCAL.observe(max(0.0, latency_seconds))


def observe_dead_letter(reason: DeadLetterReason) -> None:
    DEAD_LETTER_TALLY.add(reason.value)


class DispatcherMetrics:
    """One consumer process's pump: its tallies and its consumer's snapshot, once a second."""

    def __init__(self, consumer: PostbackConsumer) -> None:
        self.consumer = consumer
        self._reported: dict[str, int] = {}
        self.pump = MetricsPump(
            [
                self._flush_snapshot,
                ATTEMPT_TALLY.flush,
                DEAD_LETTER_TALLY.flush,
                ATTEMPT_DURATION_LOCAL.flush,
                DELIVERY_LATENCY_LOCAL.flush,
            ],
            name="dispatcher-metrics",
        )

    def _flush_snapshot(self) -> None:
        snapshot = self.consumer.snapshot()
        for key, result in SNAPSHOT_RESULTS.items():
            delta = self._delta(key, snapshot)
            if delta:
                MESSAGES.labels(result).inc(delta)
        for key, counter in SNAPSHOT_COUNTERS.items():
            delta = self._delta(key, snapshot)
            if delta:
                counter.inc(delta)
        IN_FLIGHT.set(snapshot.get("in_flight", 0))
        BREAKER_OPEN_HOSTS.set(len(snapshot.get("breaker_open_hosts", ())))

    def _delta(self, key: str, snapshot: Mapping[str, Any]) -> int:
        value = int(snapshot.get(key, 0))
        delta = value - self._reported.get(key, 0)
        self._reported[key] = value
        return max(0, delta)

    async def start(self) -> None:
        # Families visible from the start (rates and alerts see 0 rather than nothing).
        for result in SNAPSHOT_RESULTS.values():
            MESSAGES.labels(result)
        for reason in DeadLetterReason:
            DEAD_LETTERED.labels(reason.value)
        await self.pump.start()

    async def stop(self) -> None:
        await self.pump.stop()


class ScrapeSources:
    """The whole dispatcher's figures, read when ``/metrics`` is scraped."""

    def __init__(self, runtime: DispatcherRuntime) -> None:
        self.runtime = runtime
        self.exposition = Exposition(REGISTRY)
        self._amqp: AbstractRobustConnection | None = None
        self._lock = asyncio.Lock()

    async def families(self) -> list[GaugeMetricFamily]:
        families = [
            gauge(
                "postback_paused_rules",
                "Delivery rules paused by operators (0 until pause rules exist).",
                0,
            )
        ]
        async with self.runtime.engine.connect() as conn:
            open_count, payout = await dead_letter_repository.open_summary(conn)
        families.append(
            gauge("postback_dead_letters_open", "Dead letters waiting for an operator.", open_count)
        )
        families.append(
            gauge(
                "postback_payout_at_risk",
                "Sum of the payouts of open dead letters (currency units).",
                float(payout),
            )
        )
        families.extend(await self._queue_families())
        return families

    async def _queue_families(self) -> list[GaugeMetricFamily]:
        messages = GaugeMetricFamily(
            "postback_queue_messages", "Messages ready in a RabbitMQ queue.", labels=["queue"]
        )
        retries = GaugeMetricFamily(
            "postback_retry_tier_messages",
            "Postbacks waiting in a retry tier (by delay in seconds).",
            labels=["delay_seconds"],
        )
        consumers = GaugeMetricFamily(
            "postback_work_queue_consumers", "Consumers attached to the work queue."
        )
        broker_up = GaugeMetricFamily(
            "postback_broker_up", "1 when the scrape could read the queues from RabbitMQ."
        )
        try:
            async with asyncio.timeout(BROKER_TIMEOUT_SECONDS):
                depths = await self._queue_depths()
        except Exception as exc:
            log.warning("metrics: queue depths unavailable (%s)", type(exc).__name__)
            broker_up.add_metric([], 0)
            return [broker_up]
        broker_up.add_metric([], 1)
        for name in (WORK_QUEUE, DEAD_LETTER_QUEUE):
            messages.add_metric([name], depths[name][0])
        consumers.add_metric([], depths[WORK_QUEUE][1])
        for delay in self.runtime.settings.postback_retry_delays:
            retries.add_metric([f"{delay:g}"], depths[retry_queue_name(delay)][0])
        return [broker_up, messages, retries, consumers]

    async def _queue_depths(self) -> dict[str, tuple[int, int]]:
        """(messages, consumers) per queue, by passive declare (nothing is created)."""
        async with self._lock:
            if self._amqp is None:
                self._amqp = await aio_pika.connect_robust(
                    self.runtime.settings.amqp_url,
                    client_properties={"connection_name": "postback-dispatcher-metrics"},
                )
            channel = await self._amqp.channel()
            try:
                names = [WORK_QUEUE, DEAD_LETTER_QUEUE] + [
                    retry_queue_name(d) for d in self.runtime.settings.postback_retry_delays
                ]
                depths: dict[str, tuple[int, int]] = {}
                for name in names:
                    queue = await channel.declare_queue(name, passive=True)
                    result = queue.declaration_result
                    depths[name] = (result.message_count or 0, result.consumer_count or 0)
                return depths
            finally:
                await channel.close()

    async def close(self) -> None:
        if self._amqp is not None:
            await self._amqp.close()
            self._amqp = None


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format: every consumer process's figures plus queue and DB gauges."""
    runtime: DispatcherRuntime = request.app.state.runtime
    runtime.metrics.pump.flush()  # this process's latest figures
    families = await runtime.scrape.families()
    return Response(runtime.scrape.exposition.render(families), media_type=CONTENT_TYPE)
