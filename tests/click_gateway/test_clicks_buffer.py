"""The click write buffer: COPY batches, and no click lost when PostgreSQL misbehaves."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from click_gateway.clicks import repository
from click_gateway.clicks.buffer import ClickBuffer
from click_gateway.clicks.ids import ClickIdGenerator, click_created_at, click_id_ms
from postback_core.db.base import asyncpg_dsn
from tests.support.polling import wait_for


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=4)
    yield pool
    await pool.close()


ids = ClickIdGenerator(node=1000, key=b"k" * 32)


def click_row(click_id: int, external_id: str = "ext") -> tuple[object, ...]:
    return (
        click_id,
        repository.encode_timestamptz_ms(click_id_ms(click_id)),
        external_id,
        1,
        2,
        None,
        repository.encode_inet("2001:db8::1"),
        None,
        "Linux",
        "desktop",
        "Mozilla/5.0 (X11; Linux x86_64)",
        None,
        None,
        None,
        None,
        "s5",
        False,
        "GET",
    )


async def stored(db: asyncpg.Pool, click_ids: list[int]) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM clicks WHERE click_id = ANY($1)", click_ids
    )
    return count


async def test_rows_survive_a_lost_connection_and_an_unreachable_database(
    database_url: str, db: asyncpg.Pool
) -> None:
    good_dsn = asyncpg_dsn(database_url)
    buffer = ClickBuffer(good_dsn, interval_ms=20, max_rows=1000)
    await buffer.start()
    try:
        first = [ids.next_id() for _ in range(50)]
        for click_id in first:
            buffer.add(click_id, click_row(click_id))
        await wait_for(lambda: _all_stored(db, first), timeout=2, message="first batch")

        # PostgreSQL becomes unreachable: our connection is killed, reconnects fail.
        assert buffer._conn is not None
        server_pid = buffer._conn.get_server_pid()
        buffer.dsn = good_dsn.rsplit("/", 1)[0] + "/no_such_database_for_clicks"
        await db.execute("SELECT pg_terminate_backend($1)", server_pid)
        second = [ids.next_id() for _ in range(50)]
        for click_id in second:
            buffer.add(click_id, click_row(click_id, "during-outage"))

        async def failed_and_kept() -> bool:
            return buffer.failed_flushes >= 2 and all(buffer.get(c) for c in second)

        await wait_for(failed_and_kept, timeout=5, message="flush failures with rows kept")
        assert await stored(db, second) == 0

        # Back: everything buffered is written, exactly once.
        buffer.dsn = good_dsn
        await wait_for(lambda: _all_stored(db, second), timeout=3, message="rows after outage")
        assert await stored(db, first + second) == 100
        assert not buffer.pending and not buffer.in_flight
        row = await db.fetchrow(
            "SELECT external_id, host(ip) AS ip, sub5, created_at FROM clicks WHERE click_id = $1",
            second[0],
        )
        assert tuple(row) == ("during-outage", "2001:db8::1", "s5", click_created_at(second[0]))
    finally:
        await buffer.stop()


async def _all_stored(db: asyncpg.Pool, click_ids: list[int]) -> bool:
    return await stored(db, click_ids) == len(click_ids)


async def test_a_retry_after_an_unknown_outcome_skips_rows_already_stored(
    database_url: str, db: asyncpg.Pool
) -> None:
    click_ids = [ids.next_id() for _ in range(10)]
    rows = [click_row(c) for c in click_ids]
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await repository.prepare_copy_connection(conn)
        await repository.copy_clicks(conn, rows[:6])  # "committed, but we never heard back"
        await repository.insert_clicks_skipping_existing(conn, rows)
    finally:
        await conn.close()

    assert await stored(db, click_ids) == 10


async def test_max_rows_triggers_an_early_flush(database_url: str, db: asyncpg.Pool) -> None:
    buffer = ClickBuffer(asyncpg_dsn(database_url), interval_ms=900, max_rows=20)
    await buffer.start()
    try:
        click_ids = [ids.next_id() for _ in range(20)]
        added = time.monotonic()
        for click_id in click_ids:
            buffer.add(click_id, click_row(click_id))
        await wait_for(lambda: _all_stored(db, click_ids), timeout=2, message="early flush")
        assert time.monotonic() - added < 0.8  # well before the 900 ms interval
    finally:
        await buffer.stop()


async def test_a_full_buffer_refuses_instead_of_dropping(database_url: str) -> None:
    buffer = ClickBuffer(asyncpg_dsn(database_url), interval_ms=900, max_rows=1000, capacity=3)
    for _ in range(3):
        click_id = ids.next_id()
        assert buffer.has_room()
        buffer.add(click_id, click_row(click_id))
    assert not buffer.has_room()
    assert len(buffer.pending) == 3
    assert datetime.now(UTC) >= click_created_at(click_id)
