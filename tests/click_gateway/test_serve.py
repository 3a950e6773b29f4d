"""``click-gateway serve`` as operators run it: worker processes, graceful stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from postback_core.db.base import asyncpg_dsn
from tests.click_gateway.clicks_support import (
    BROWSER,
    click_id_of,
    create_advertiser,
    create_offer,
    create_publisher,
    create_smartlink,
)
from tests.support.polling import wait_for
from tests.support.servers import free_port

CLI = Path(sys.executable).with_name("click-gateway")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=2)
    yield pool
    await pool.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # exited meanwhile
        return ""


@pytest.mark.skipif(not Path("/proc/self/comm").exists(), reason="needs Linux /proc")
async def test_two_workers_serve_clicks_and_store_every_one_on_sigterm(
    database_url: str, amqp_url: str, db: asyncpg.Pool
) -> None:
    publisher_id = await create_publisher(db)
    offer_id = await create_offer(db, await create_advertiser(db))
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    port = free_port()
    env = {
        **os.environ,
        "ENV": "dev",
        "DATABASE_URL": database_url,
        "AMQP_URL": amqp_url,
        "GATEWAY_PORT": str(port),
        "GATEWAY_WORKERS": "2",
        "HOST": "127.0.0.1",
        # Long enough that the clicks are still buffered when SIGTERM arrives.
        "CLICK_FLUSH_INTERVAL_MS": "900",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [str(CLI), "serve", "--no-migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, timeout=30, message="gateway ready")

            async def both_workers_named() -> list[int] | None:
                # One worker may answer /readyz before the other has started.
                named = [pid for pid in _children(proc.pid) if _comm(pid) == "click-gateway"]
                return named if len(named) == 2 else None

            await wait_for(both_workers_named, timeout=30, message="two click-gateway workers")

            async def click(n: int) -> int | None:
                response = await client.get(f"/get/{code}?cid=serve-{n}", headers=BROWSER)
                return click_id_of(response) if response.status_code == 302 else None

            await wait_for(lambda: click(-1), timeout=10, message="smartlink served")
            click_ids = await asyncio.gather(*(click(n) for n in range(200)))
            assert None not in click_ids
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
        assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
        stored = await db.fetchval(
            "SELECT count(*) FROM clicks WHERE click_id = ANY($1::bigint[])", click_ids
        )
        assert stored == len(click_ids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
