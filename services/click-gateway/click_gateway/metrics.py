"""The gateway's ``/metrics``: clicks, the click buffer, conversions, the outbox.

Clicks and conversions are tallied in plain integers of the worker process
(``ClickService.outcome_counts``, ``CLICK_DURATION_LOCAL``,
``CONVERSION_TALLY``); ``GatewayMetrics.pump`` moves them into the prometheus
metrics once a second, so a click never takes a lock or writes an mmap. The
outbox figures are read from PostgreSQL at scrape time (one indexed query).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from click_gateway.outbox import repository as outbox_repository
from postback_core.enums import ClickOutcome, ConversionOutcome
from postback_core.metrics import (
    CONTENT_TYPE,
    FAST_BUCKETS,
    REQUEST_BUCKETS,
    Exposition,
    LocalHistogram,
    MetricsPump,
    Tally,
    gauge,
)

if TYPE_CHECKING:
    from click_gateway.clicks.service import ClickService
    from click_gateway.runtime import GatewayRuntime

REGISTRY = CollectorRegistry(auto_describe=True)

CLICKS = Counter(
    "click_gateway_clicks",
    "SmartLink clicks answered, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
CLICK_DURATION = Histogram(
    "click_gateway_click_duration_seconds",
    "Time to answer a SmartLink click (request in to redirect sent).",
    buckets=FAST_BUCKETS,
    registry=REGISTRY,
)
CLICK_BUFFER_ROWS = Gauge(
    "click_gateway_click_buffer_rows",
    "Clicks answered but not yet written to PostgreSQL (all worker processes).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
CLICK_FLUSH_DURATION = Histogram(
    "click_gateway_click_flush_duration_seconds",
    "Time to write one batch of buffered clicks to PostgreSQL (COPY).",
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
CLICK_FLUSH_FAILURES = Counter(
    "click_gateway_click_flush_failures",
    "Click batches PostgreSQL did not take (kept and retried).",
    registry=REGISTRY,
)
CONVERSIONS = Counter(
    "click_gateway_conversions",
    "Conversions reported by advertisers, by outcome and conversion status.",
    ["outcome", "status"],
    registry=REGISTRY,
)

CLICK_OUTCOMES = tuple(ClickOutcome)
CLICK_DURATION_LOCAL = LocalHistogram(CLICK_DURATION, FAST_BUCKETS)
CONVERSION_TALLY = Tally(CONVERSIONS)
NO_STATUS = "none"  # label value for refused conversions (nothing was stored)
_REFUSALS = {
    404: ConversionOutcome.CLICK_NOT_FOUND,
    403: ConversionOutcome.FORBIDDEN,
    422: ConversionOutcome.INVALID,
    409: ConversionOutcome.CONFLICT,
}


def count_conversion(created: bool, status: str) -> None:
    CONVERSION_TALLY.add(
        ConversionOutcome.CREATED if created else ConversionOutcome.DUPLICATE, status
    )


def count_refused_conversion(status_code: int) -> None:
    CONVERSION_TALLY.add(_REFUSALS.get(status_code, ConversionOutcome.REFUSED), NO_STATUS)


class GatewayMetrics:
    """This process's side: the pump that moves the tallies into the metrics."""

    def __init__(self, clicks: ClickService) -> None:
        self.clicks = clicks
        self.exposition = Exposition(REGISTRY)
        self._reported = [0] * len(CLICK_OUTCOMES)
        self.pump = MetricsPump(
            [self._flush_clicks, CLICK_DURATION_LOCAL.flush, CONVERSION_TALLY.flush],
            name="gateway-metrics",
        )

    def _flush_clicks(self) -> None:
        counts = self.clicks.outcome_counts
        for index, outcome in enumerate(CLICK_OUTCOMES):
            delta = counts[index] - self._reported[index]
            if delta:
                CLICKS.labels(outcome.value).inc(delta)
                self._reported[index] = counts[index]
        CLICK_BUFFER_ROWS.set(self.clicks.buffer.depth())

    async def start(self) -> None:
        # Every outcome from the start, so rates and alerts see 0 rather than nothing.
        for outcome in CLICK_OUTCOMES:
            CLICKS.labels(outcome.value)
        await self.pump.start()

    async def stop(self) -> None:
        await self.pump.stop()


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format: every worker process's counters plus the outbox figures."""
    runtime: GatewayRuntime = request.app.state.runtime
    runtime.metrics.pump.flush()  # this process's latest figures
    async with runtime.engine.connect() as conn:
        unpublished, oldest_age = await outbox_repository.unpublished_summary(conn)
    body = runtime.metrics.exposition.render(
        [
            gauge(
                "click_gateway_outbox_unpublished",
                "Conversion events written to the outbox, not yet confirmed by RabbitMQ.",
                unpublished,
            ),
            gauge(
                "click_gateway_outbox_lag_seconds",
                "Age of the oldest unpublished outbox row (0 when none).",
                oldest_age,
            ),
        ]
    )
    return Response(body, media_type=CONTENT_TYPE)
