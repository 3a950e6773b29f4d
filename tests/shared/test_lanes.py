"""Dedicated connections for batchers: reused, bounded, and replaced when they break."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from postback_core.db.base import asyncpg_dsn
from postback_core.db.lanes import ConnectionLanes
from tests.support.polling import wait_for


async def _backend_pid(conn: asyncpg.Connection) -> int:
    pid: int = await conn.fetchval("SELECT pg_backend_pid()")
    return pid


async def _gone(admin: asyncpg.Connection, pid: int) -> bool:
    alive = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
    return alive == 0


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


async def test_a_lane_that_died_idle_is_replaced_before_use(database_url: str) -> None:
    dsn = asyncpg_dsn(database_url)
    lanes = ConnectionLanes(dsn, 1, application_name="test-lanes-idle")
    await lanes.start()
    admin = await asyncpg.connect(dsn)
    try:
        first = await lanes.run(_backend_pid)
        await admin.execute("SELECT pg_terminate_backend($1)", first)
        await wait_for(lambda: _gone(admin, first), message="the terminated backend to go away")
        # If the client noticed the EOF already, this reconnects silently; if not,
        # this one call fails. Either way the lane is usable again right after.
        with contextlib.suppress(
            asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresError, OSError
        ):
            await lanes.run(_backend_pid)
        second = await lanes.run(_backend_pid)
        assert second != first
    finally:
        await admin.close()
        await lanes.close()


async def test_work_on_a_lane_that_breaks_fails_and_the_next_use_reconnects(
    database_url: str,
) -> None:
    dsn = asyncpg_dsn(database_url)
    lanes = ConnectionLanes(dsn, 1, application_name="test-lanes-broken")
    await lanes.start()
    admin = await asyncpg.connect(dsn)
    try:
        first = await lanes.run(_backend_pid)
        sleeping = asyncio.ensure_future(
            lanes.run(lambda conn: conn.execute("SELECT pg_sleep(30)"))
        )
        await wait_for(
            lambda: admin.fetchval(
                "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%sleep%'",
                first,
            ),
            message="the query to be running",
        )
        await admin.execute("SELECT pg_terminate_backend($1)", first)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await sleeping
        second = await lanes.run(_backend_pid)
        assert second != first
    finally:
        await admin.close()
        await lanes.close()
