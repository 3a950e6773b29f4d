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
from collections.abc import Callable, Iterable, Sequence
from math import log2

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

from postback_core.metrics_dir import MULTIPROC_ENV, pid_alive

log = logging.getLogger(__name__)
# ``*_created`` series double every counter's output for nothing Prometheus needs.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PUMP_INTERVAL_SECONDS = 1.0


def doubling_buckets(smallest_exponent: int, largest_exponent: int) -> tuple[float, ...]:
    """Histogram bounds of 2**k nanoseconds, in seconds (each bucket twice the last).

    Powers of two let ``LocalHistogram`` find an observation's bucket with one
    ``int.bit_length`` instead of a search over float bounds.
    """
    return tuple(2**k / 1e9 for k in range(smallest_exponent, largest_exponent + 1))


# 33 µs .. 1.07 s: the click handler answers in well under a millisecond.
FAST_BUCKETS = doubling_buckets(15, 30)
# 1 ms .. 34 s: postbacks and click flushes, up to past the postback timeout.
REQUEST_BUCKETS = doubling_buckets(20, 35)
# 33 ms .. 39 h: conversion accepted → 2xx, first try through the last retry tier.
DELIVERY_BUCKETS = doubling_buckets(25, 47)


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
    """A histogram of this process, recorded as raw nanoseconds and binned off the hot path.

    ``observe_ns`` *is* ``list.append`` (a C call: the click path times every
    click for the price of the two clock reads and one append); ``flush`` bins
    what was recorded into ``doubling_buckets`` bounds with one ``bit_length``
    each and adds it to ``histogram``. The list holds at most one pump interval
    of observations. A duration of exactly a power of two nanoseconds lands one
    bucket up (immaterial at nanosecond resolution).
    """

    def __init__(self, histogram: Histogram, buckets: Sequence[float]) -> None:
        shift = round(log2(buckets[0] * 1e9))
        if buckets != doubling_buckets(shift, shift + len(buckets) - 1):
            raise ValueError("LocalHistogram needs doubling_buckets bounds")
        self.histogram = histogram
        self.shift = shift
        self.buckets = len(buckets)  # index of the +Inf bucket
        self._recorded: list[int] = []
        self.observe_ns: Callable[[int], None] = self._recorded.append

    def observe(self, seconds: float) -> None:
        self.observe_ns(int(max(0.0, seconds) * 1e9))

    def flush(self) -> None:
        recorded = self._recorded
        if not recorded:
            return
        values = recorded.copy()
        recorded.clear()  # the same list: ``observe_ns`` stays bound to it
        counts = [0] * (self.buckets + 1)
        shift, last = self.shift, self.buckets
        for nanoseconds in values:
            index = (max(nanoseconds, 0) >> shift).bit_length()
            counts[index if index < last else last] += 1
        add_observations(self.histogram, counts, sum(values) / 1e9)


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
