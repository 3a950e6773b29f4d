"""Prometheus metrics shared by both services: multiprocess set-up, hot-path tallies, exposition.

Both services run several worker processes, and a scrape reaches only one of
them, so with more than one process every metric lives in prometheus-client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``) and ``/metrics`` aggregates
them. ``metrics_dir.prepare_multiprocess_dir`` sets that up automatically in the serving
command, before any worker starts: a fresh private directory per run (under
the operator's ``PROMETHEUS_MULTIPROC_DIR`` if set, else the temp dir), so two
services or two runs never mix or inherit each other's files, removed on exit.

Hot paths (the click redirect, conversions) never touch a prometheus metric:
each multiprocess update is a lock and an mmap write. They count into
``Tally`` / ``LocalHistogram`` (plain integers of this process), and a
``MetricsPump`` moves the totals into the prometheus metrics once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.utils import INF

from postback_core.metrics_dir import MULTIPROC_ENV, pid_alive

log = logging.getLogger(__name__)
# ``*_created`` series double every counter's output for nothing Prometheus needs.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PUMP_INTERVAL_SECONDS = 1.0
# Seconds; the click handler answers in well under a millisecond.
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
# Seconds; postbacks and flushes: a few ms to the timeout.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
# Seconds from conversion accepted to 2xx: first try, then the retry tiers (5 s .. hours).
DELIVERY_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    7200.0,
    36000.0,
    86400.0,
)


def forget_dead_processes(path: str) -> None:
    """Drop the live gauges (buffer depth, in flight) of worker processes that are gone.

    Counters and histograms of a dead worker stay: what it counted happened.
    """
    for name in os.listdir(path):
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = name[: -len(".db")].rsplit("_", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                mark_process_dead(int(pid), path)


class Exposition:
    """Renders one service's metrics: its own registry, or every process's files."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # What this process's metrics were created as (decided when prometheus_client
        # was imported), not what the environment says now.
        multiprocess = values.ValueClass is not values.MutexValue
        self._path = os.environ.get(MULTIPROC_ENV) if multiprocess else None
        if self._path:
            self._registry = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self._registry, path=self._path)
        else:
            self._registry = registry

    def render(self, scraped: Iterable[GaugeMetricFamily] = ()) -> bytes:
        """The text format; ``scraped`` are families computed for this scrape (DB, broker)."""
        if self._path:
            forget_dead_processes(self._path)
        text = generate_latest(self._registry)
        extra = CollectorRegistry(auto_describe=False)
        families = list(scraped)
        if families:
            extra.register(_Fixed(families))
            text += generate_latest(extra)
        return text


class _Fixed(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self._families = families

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """A gauge computed at scrape time (not stored in any process's files)."""
    return GaugeMetricFamily(name, documentation, value=value)


class Tally:
    """Plain per-process counts by label values, moved into a Counter by the pump."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.counts: dict[tuple[str, ...], int] = {}

    def add(self, *labels: str) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def flush(self) -> None:
        counts, self.counts = self.counts, {}
        for labels, amount in counts.items():
            self.counter.labels(*labels).inc(amount)


class LocalHistogram:
    """A histogram of this process in plain integers (one ``bisect`` per observation).

    ``flush`` adds the observations to ``histogram`` (same buckets) without
    replaying them one by one.
    """

    def __init__(self, histogram: Histogram, buckets: Sequence[float]) -> None:
        self.histogram = histogram
        self.bounds = (*buckets, INF)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def flush(self) -> None:
        counts, total = self.counts, self.total
        if not any(counts):
            return
        self.counts, self.total = [0] * len(self.bounds), 0.0
        add_observations(self.histogram, counts, total)


def add_observations(histogram: Histogram, bucket_counts: Sequence[int], total: float) -> None:
    """Add pre-bucketed observations (non-cumulative counts per upper bound) to a Histogram.

    prometheus-client has no public call for this; its Histogram keeps one value
    per bucket (non-cumulative) and one for the sum, which is what we add to.
    """
    buckets = histogram._buckets
    if len(buckets) != len(bucket_counts):
        raise ValueError("bucket layouts differ")
    for value, amount in zip(buckets, bucket_counts, strict=True):
        if amount:
            value.inc(amount)
    histogram._sum.inc(total)


class MetricsPump:
    """Once a second (and at stop), runs the flush callbacks of this process's tallies."""

    def __init__(self, flushes: Sequence[Callable[[], None]], name: str) -> None:
        self._flushes = list(flushes)
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def add(self, flush: Callable[[], None]) -> None:
        self._flushes.append(flush)

    def flush(self) -> None:
        for flush in self._flushes:
            try:
                flush()
            except Exception:
                log.exception("metrics flush failed")

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PUMP_INTERVAL_SECONDS)
            self.flush()
