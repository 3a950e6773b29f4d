"""Dedicated connections for batchers: reused, bounded, and replaced when they break."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from postback_core.db.base import asyncpg_dsn
from postback_core.db.lanes import ConnectionLanes


async def _backend_pid(conn: asyncpg.Connection) -> int:
    pid: int = await conn.fetchval("SELECT pg_backend_pid()")
    return pid


async def test_lanes_reuse_their_connections_and_run_at_most_count_at_once(
    database_url: str,
) -> None:
    lanes = ConnectionLanes(asyncpg_dsn(database_url), 2, application_name="test-lanes")
    await lanes.start()
    try:
        pids = {await lanes.run(_backend_pid) for _ in range(10)}
        assert len(pids) == 1  # one lane was enough, and it was reused

        running = 0
        peak = 0

        async def slow(conn: asyncpg.Connection) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            pid = await conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)")
            running -= 1
            return int(pid)

        busy_pids = await asyncio.gather(*(lanes.run(slow) for _ in range(6)))
        assert peak == 2
        assert len(set(busy_pids)) == 2
    finally:
        await lanes.close()


async def test_a_broken_lane_fails_its_work_and_is_replaced(database_url: str) -> None:
    dsn = asyncpg_dsn(database_url)
    lanes = ConnectionLanes(dsn, 1, application_name="test-lanes-broken")
    await lanes.start()
    admin = await asyncpg.connect(dsn)
    try:
        first = await lanes.run(_backend_pid)
        await admin.execute("SELECT pg_terminate_backend($1)", first)
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
            await lanes.run(_backend_pid)
        second = await lanes.run(_backend_pid)
        assert second != first
    finally:
        await admin.close()
        await lanes.close()
