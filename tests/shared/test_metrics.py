"""The shared metrics plumbing: hot-path tallies, their flush, the multiprocess directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from postback_core.metrics import (
    FAST_BUCKETS,
    LocalHistogram,
    MetricsPump,
    Tally,
    forget_dead_processes,
)
from postback_core.metrics_dir import MULTIPROC_ENV, prepare_multiprocess_dir


def test_a_local_histogram_flushes_exactly_what_observe_would_have_recorded() -> None:
    observed = [0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.002, 0.002, 0.7, 3.0, 120.0]
    direct_registry, pumped_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h_seconds", "d", buckets=FAST_BUCKETS, registry=direct_registry)
    pumped = Histogram("h_seconds", "d", buckets=FAST_BUCKETS, registry=pumped_registry)
    local = LocalHistogram(pumped, FAST_BUCKETS)
    for value in observed:
        direct.observe(value)
        local.observe_ns(round(value * 1e9))
    assert generate_latest(pumped_registry) != generate_latest(direct_registry)  # not yet
    local.flush()
    local.flush()  # nothing new: adds nothing
    assert generate_latest(pumped_registry) == generate_latest(direct_registry)


def test_a_local_histogram_only_takes_doubling_bounds() -> None:
    histogram = Histogram("odd_seconds", "d", buckets=(0.1, 0.5, 1.0), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="doubling_buckets"):
        LocalHistogram(histogram, (0.1, 0.5, 1.0))


def test_a_tally_moves_its_counts_into_the_counter_once() -> None:
    registry = CollectorRegistry()
    counter = Counter("things", "d", ["kind"], registry=registry)
    tally = Tally(counter)
    for _ in range(3):
        tally.add("a")
    tally.add("b")
    pump = MetricsPump([tally.flush], name="test")
    pump.flush()
    pump.flush()
    assert registry.get_sample_value("things_total", {"kind": "a"}) == 3
    assert registry.get_sample_value("things_total", {"kind": "b"}) == 1


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_each_run_gets_a_private_directory_and_dead_runs_are_cleaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    stale = tmp_path / f"click-gateway-{_dead_pid()}-old"
    stale.mkdir()
    (stale / "counter_123.db").write_bytes(b"stale counts")
    alive = tmp_path / "postback-dispatcher-1-live"  # pid 1 is always alive
    alive.mkdir()
    unrelated = tmp_path / "something-else"
    unrelated.mkdir()

    path = prepare_multiprocess_dir("click-gateway")

    assert path.parent == tmp_path and path.is_dir() and not any(path.iterdir())
    assert os.environ[MULTIPROC_ENV] == str(path)  # what the workers will inherit
    assert path.name.startswith(f"click-gateway-{os.getpid()}-")
    assert not stale.exists()
    assert alive.exists() and unrelated.exists()


def test_live_gauges_of_dead_workers_are_dropped_and_their_counters_kept(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    for name in (f"gauge_livesum_{dead}.db", f"gauge_livesum_{alive}.db", f"counter_{dead}.db"):
        (tmp_path / name).write_bytes(b"")
    forget_dead_processes(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"gauge_livesum_{alive}.db", f"counter_{dead}.db"]
    )
