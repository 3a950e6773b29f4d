"""A PostgreSQL 15 cluster of our own (Debian's postgresql-common tools), on its own port.

Created with ``pg_createcluster``, restarted with ``pg_ctlcluster``, removed with
``pg_dropcluster --stop``. The shared cluster on 5432 is never addressed: every
command names our cluster (``chaos_<suffix>``).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from bench.chaos.common import arun, pick_ports, port_accepts, run

PG_VERSION = "15"
START_TIMEOUT = 60.0


class PostgresCluster:
    def __init__(self, suffix: str) -> None:
        self.name = f"chaos_{suffix}"
        self.port = pick_ports(1)[0]
        self.created = False

    @property
    def database_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postback_chaos"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postback_chaos"

    async def create(self) -> None:
        self.created = True  # from here on, clean-up must try to drop it
        await arun(
            [
                "pg_createcluster",
                PG_VERSION,
                self.name,
                "--port",
                str(self.port),
                "--start",
                "-o",
                "max_connections=200",
                "--",
                "--auth=trust",
            ],
            timeout=180,
        )
        await self.wait_up()

    async def restart(self) -> None:
        """Fast shutdown (open connections are cut) and start again."""
        await arun(["pg_ctlcluster", PG_VERSION, self.name, "restart", "-m", "fast"], timeout=120)
        await self.wait_up()

    async def wait_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if await port_accepts(self.port):
                try:
                    conn = await asyncpg.connect(
                        f"postgresql://postgres@127.0.0.1:{self.port}/postgres", timeout=3
                    )
                except (OSError, asyncpg.PostgresError, TimeoutError):
                    pass
                else:
                    await conn.close()
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL cluster {self.name} not up on {self.port}")
            await asyncio.sleep(0.2)

    def drop(self) -> None:
        """Stop and remove the cluster with its data (the clean-up step; synchronous)."""
        if self.created:
            run(["pg_dropcluster", "--stop", PG_VERSION, self.name], timeout=120, check=False)
            self.created = False
