"""Group commit: concurrent calls share batches, results and failures stay per caller."""

from __future__ import annotations

import asyncio

import pytest

from postback_core.batching import MicroBatcher


async def _settle() -> None:
    """Let every ready task run to its next wait (no timing involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def double(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        return [ValueError(f"odd {i}") if i == 13 else i * 2 for i in items]


async def test_an_idle_batcher_runs_a_single_call_at_once() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder.double)
    assert await batcher.submit(4) == 8
    assert recorder.batches == [[4]]


async def test_calls_made_in_the_same_loop_iteration_share_one_batch() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder.double)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(10)]
    assert await asyncio.gather(*calls) == [i * 2 for i in range(10)]
    assert recorder.batches == [list(range(10))]


async def test_calls_arriving_while_batches_run_share_the_next_batch() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder.double, max_in_flight=1)
    first = asyncio.ensure_future(batcher.submit(0))
    await _settle()  # the first batch is running (and blocked)
    later = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 10)]
    await _settle()
    recorder.release.set()
    assert await asyncio.gather(first, *later) == [i * 2 for i in range(10)]
    assert recorder.batches == [[0], list(range(1, 10))]


async def test_max_batch_splits_and_max_in_flight_runs_batches_side_by_side() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder.double, max_batch=3, max_in_flight=2)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(8)]
    await _settle()
    assert recorder.batches == [[0, 1, 2], [3, 4, 5]]  # two in flight, the rest waiting
    recorder.release.set()
    assert await asyncio.gather(*calls) == [i * 2 for i in range(8)]
    assert recorder.batches == [[0, 1, 2], [3, 4, 5], [6, 7]]


async def test_an_item_level_failure_fails_only_its_caller() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder.double, max_in_flight=1)
    results = await asyncio.gather(
        *(batcher.submit(i) for i in (12, 13, 14)), return_exceptions=True
    )
    assert results[0] == 24 and results[2] == 28
    assert isinstance(results[1], ValueError) and "odd 13" in str(results[1])


async def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_working() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database went away")
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(flaky)
    with pytest.raises(ConnectionError):
        await batcher.submit(1)
    assert await batcher.submit(2) == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_others() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(recorder.double, max_in_flight=1)
    first = asyncio.ensure_future(batcher.submit(1))
    second = asyncio.ensure_future(batcher.submit(2))
    await _settle()
    first.cancel()
    recorder.release.set()
    assert await second == 4
    await batcher.drain()
    assert recorder.batches == [[1, 2]]
