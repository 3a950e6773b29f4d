"""A few dedicated connections for group-committing batchers.

Measured on our 2-core machine, one ``asyncpg`` pool acquire/release costs
more CPU (~120-200 us, even with a no-op reset) than the query it wraps
(``SELECT 1`` on a held connection: ~75 us). A batcher with ``n`` batches in
flight needs exactly ``n`` connections, so it holds them: taking a free one is
a list pop. A connection that broke is replaced on its next use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

ResultT = TypeVar("ResultT")
# Server errors that end the session (class 08 connection, class 57 operator
# intervention such as pg_terminate_backend or a shutdown).
_LINK_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError)


class ConnectionLanes:
    def __init__(
        self,
        dsn: str,
        count: int,
        *,
        application_name: str,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("at least one lane")
        self.dsn = dsn
        self.count = count
        self.server_settings = {**(server_settings or {}), "application_name": application_name}
        self._free: asyncio.LifoQueue[asyncpg.Connection | None] = asyncio.LifoQueue()
        self._all: set[asyncpg.Connection] = set()
        self._started = False

    async def start(self) -> None:
        """Open the first lane now (fail fast on bad config); the others on first use."""
        if self._started:
            return
        self._started = True
        # LIFO: the most recently used (warm) connection goes out first.
        for _ in range(self.count - 1):
            self._free.put_nowait(None)
        self._free.put_nowait(await self._connect())

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[ResultT]]) -> ResultT:
        """``work(connection)`` on a free lane; waits only if all lanes are busy."""
        try:
            conn = self._free.get_nowait()
        except asyncio.QueueEmpty:
            conn = await self._free.get()
        try:
            if conn is None or conn.is_closed():
                self._forget(conn)
                conn = await self._connect()
            return await work(conn)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, _LINK_ERRORS):
                await self._discard(conn)
                conn = None
            raise  # an ordinary SQL error: the connection is fine
        except BaseException:
            # The link failed, or we don't know its state (cancelled mid-query,
            # client-side protocol error): drop it, the next use reconnects.
            await self._discard(conn)
            conn = None
            raise
        finally:
            self._free.put_nowait(conn)

    async def close(self) -> None:
        for conn in list(self._all):
            await self._discard(conn)

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn, server_settings=self.server_settings
        )
        self._all.add(conn)
        return conn

    def _forget(self, conn: Any) -> None:
        if conn is not None:
            self._all.discard(conn)

    async def _discard(self, conn: asyncpg.Connection | None) -> None:
        if conn is None:
            return
        self._forget(conn)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2)
