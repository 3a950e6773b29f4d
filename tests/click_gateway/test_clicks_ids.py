"""Click ids: unique across processes, not guessable, creation time recoverable."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from click_gateway.clicks.ids import (
    CLICK_ID_EPOCH_MS,
    LOW_BITS,
    MAX_NODE,
    MAX_SEQUENCE,
    ClickIdGenerator,
    NodeLease,
    Permutation,
    click_created_at,
)
from postback_core.db.base import asyncpg_dsn


class FakeClock:
    """A controllable wall clock (ns) to replay bursts, overflow and clock steps."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms * 1_000_000


KEY = bytes(range(32))
NOW_MS = int(datetime.now(UTC).timestamp() * 1000)


def test_ids_of_two_nodes_are_unique_positive_and_carry_their_time() -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    clock = FakeClock(now_ms)
    first, second = ClickIdGenerator(1, KEY, clock), ClickIdGenerator(2, KEY, clock)
    ids: list[int] = []
    for step in range(200):
        clock.ms = now_ms + step // 50  # 50 ids per node per millisecond
        for _ in range(50):
            ids.extend((first.next_id(), second.next_id()))

    assert len(set(ids)) == len(ids) == 20_000
    assert all(0 < i < 2**63 for i in ids)
    assert click_created_at(ids[0]) == datetime.fromtimestamp(now_ms / 1000, UTC)
    assert click_created_at(ids[-1]) == datetime.fromtimestamp(now_ms / 1000, UTC) + timedelta(
        milliseconds=3
    )
    assert [first.decode(i)[1:] for i in ids[0:6:2]] == [(1, 0), (1, 1), (1, 2)]


def test_neighbouring_ids_are_not_sequential() -> None:
    clock = FakeClock(int(datetime.now(UTC).timestamp() * 1000))
    generator = ClickIdGenerator(7, os.urandom(32), clock)
    same_ms = [generator.next_id() for _ in range(100)]
    clock.ms += 1
    next_ms_first = generator.next_id()

    low_parts = [i & ((1 << LOW_BITS) - 1) for i in same_ms]
    gaps = {b - a for a, b in itertools.pairwise(low_parts)}
    assert len(gaps) > 90  # no constant stride to guess the next id from
    assert sum(1 for a, b in itertools.pairwise(same_ms) if b == a + 1) < 3
    # The first id of each millisecond differs too: the permutation is per-ms.
    assert next_ms_first & ((1 << LOW_BITS) - 1) != low_parts[0]


def test_the_permutation_depends_on_the_cluster_key() -> None:
    clock = FakeClock(NOW_MS + 5)
    a = ClickIdGenerator(3, KEY, clock).next_id()
    b = ClickIdGenerator(3, bytes(reversed(KEY)), clock).next_id()
    assert a != b
    permutation = Permutation(KEY)
    values = {permutation.forward(42, v) for v in range(1 << 12)}
    assert len(values) == 1 << 12  # a permutation: distinct in, distinct out
    assert all(permutation.inverse(42, permutation.forward(42, v)) == v for v in range(500))


def test_sequence_overflow_moves_to_the_next_millisecond() -> None:
    start = NOW_MS
    ticks = iter(range(start, start + 10))

    class SteppingClock:
        """Stays on ``start`` until asked 4096+ times, then advances."""

        calls = 0

        def __call__(self) -> int:
            self.calls += 1
            ms = start if self.calls <= MAX_SEQUENCE + 2 else next(ticks) + 1
            return ms * 1_000_000

    generator = ClickIdGenerator(9, KEY, SteppingClock())
    ids = [generator.next_id() for _ in range(MAX_SEQUENCE + 3)]

    assert len(set(ids)) == len(ids)
    stamps = [(i >> LOW_BITS) + CLICK_ID_EPOCH_MS for i in ids]
    assert stamps[: MAX_SEQUENCE + 1] == [start] * (MAX_SEQUENCE + 1)
    assert min(stamps[MAX_SEQUENCE + 1 :]) > start


def test_a_clock_going_backwards_never_reuses_an_id() -> None:
    clock = FakeClock(NOW_MS + 1000)
    generator = ClickIdGenerator(4, KEY, clock)
    before = [generator.next_id() for _ in range(10)]
    clock.ms -= 500  # NTP step backwards
    after = [generator.next_id() for _ in range(MAX_SEQUENCE + 10)]

    all_ids = before + after
    assert len(set(all_ids)) == len(all_ids)
    assert min(after) > max(before) >> LOW_BITS << LOW_BITS  # time never goes back


def test_node_range_is_enforced() -> None:
    with pytest.raises(ValueError):
        ClickIdGenerator(MAX_NODE + 1, KEY)


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=8)
    yield pool
    await pool.close()


async def test_concurrent_processes_lease_distinct_nodes_and_share_the_key(
    db: asyncpg.Pool,
) -> None:
    leases = [NodeLease(db) for _ in range(8)]
    generators = await asyncio.gather(*(lease.start() for lease in leases))
    try:
        nodes = [lease.node for lease in leases]
        assert len(set(nodes)) == 8
        held = await db.fetch(
            "SELECT node, holder FROM id_nodes WHERE node = ANY($1) AND leased_until > now()",
            nodes,
        )
        assert {(r["node"], r["holder"]) for r in held} == {(x.node, x.holder) for x in leases}
        # One cluster key: every process decodes every other process's ids.
        ids = [g.next_id() for g in generators]
        assert len(set(ids)) == 8
        assert [generators[0].decode(i)[1] for i in ids] == nodes
    finally:
        await asyncio.gather(*(lease.stop() for lease in leases))

    released = await db.fetchval(
        "SELECT count(*) FROM id_nodes WHERE node = ANY($1) AND leased_until > now() + "
        "interval '10 seconds'",
        nodes,
    )
    assert released == 0  # only the short cooldown remains, not the 60 s lease


async def test_an_expired_lease_is_taken_over(db: asyncpg.Pool) -> None:
    await db.execute(
        """
        INSERT INTO id_nodes (node, holder, leased_until)
        SELECT n, 'crashed-process', now() - interval '1 minute'
        FROM generate_series(0, $1::int) AS n
        ON CONFLICT (node) DO UPDATE SET holder = excluded.holder,
            leased_until = excluded.leased_until
        WHERE id_nodes.holder = 'crashed-process' OR id_nodes.leased_until < now()
        """,
        MAX_NODE,
    )
    lease = NodeLease(db)
    await lease.start()
    try:
        holder = await db.fetchval("SELECT holder FROM id_nodes WHERE node = $1", lease.node)
        assert holder == lease.holder
    finally:
        await lease.stop()
