"""The click write buffer: clicks are answered from memory and reach PostgreSQL by COPY.

A click row is added to ``pending`` (keyed by click id, so ``find_click`` can
see it); a single flusher task moves ``pending`` into ``in_flight`` and COPYs
it every ``interval`` or as soon as ``max_rows`` are waiting. A failed flush
keeps its rows in ``in_flight`` and the next attempt retries them together
with whatever arrived meanwhile: rows are never dropped for a transient
failure. Memory is bounded by ``capacity``: beyond it the service refuses new
clicks (503) rather than redirect visitors it could not record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from click_gateway.clicks import repository
from click_gateway.metrics import CLICK_FLUSH_DURATION, CLICK_FLUSH_FAILURES

log = logging.getLogger(__name__)

# In repository.CLICK_COLUMNS order; ``created_at`` and ``ip`` pre-encoded
# (repository.encode_timestamptz_ms / encode_inet).
ClickRow = tuple[Any, ...]

DEFAULT_CAPACITY = 500_000
MAX_RETRY_DELAY_SECONDS = 1.0
STOP_FLUSH_SECONDS = 10.0
# Errors that say "this data can never be stored" rather than "try again later".
PERMANENT_DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)


class ClickBuffer:
    def __init__(
        self,
        dsn: str,
        interval_ms: int,
        max_rows: int,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self.dsn = dsn
        self.interval = interval_ms / 1000
        self.max_rows = max_rows
        self.capacity = capacity
        self.pending: dict[int, ClickRow] = {}
        self.in_flight: dict[int, ClickRow] = {}
        self.flushed_rows = 0
        self.failed_flushes = 0
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._uncertain = False  # the last COPY may have committed without us knowing
        self._lock = asyncio.Lock()
        self._last_full_warning = 0.0

    # --- hot path ---------------------------------------------------------------

    def has_room(self) -> bool:
        if len(self.pending) + len(self.in_flight) < self.capacity:
            return True
        now = time.monotonic()
        if now - self._last_full_warning > 5:
            self._last_full_warning = now
            log.critical(
                "click buffer full (%d rows unflushed): refusing clicks until PostgreSQL "
                "accepts writes again",
                len(self.pending) + len(self.in_flight),
            )
        return False

    def add(self, click_id: int, row: ClickRow) -> None:
        pending = self.pending
        pending[click_id] = row
        if len(pending) >= self.max_rows:
            self._wake.set()

    def depth(self) -> int:
        """Clicks answered but not yet stored."""
        return len(self.pending) + len(self.in_flight)

    def get(self, click_id: int) -> ClickRow | None:
        return self.pending.get(click_id) or self.in_flight.get(click_id)

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        await self._connection()
        self._task = asyncio.create_task(self._flush_forever(), name="click-buffer-flush")

    async def stop(self) -> None:
        """Flush everything that is buffered, then close (graceful stop)."""
        self._stopping = True
        self._wake.set()
        self._stop_requested.set()
        if self._task is not None:
            # Not cancelled: a COPY interrupted half-way would leave its outcome unknown.
            await self._task
            self._task = None
        deadline = time.monotonic() + STOP_FLUSH_SECONDS
        while self.pending or self.in_flight:
            if await self.flush():
                continue
            if time.monotonic() > deadline:
                log.critical(
                    "stopping with %d clicks NOT written to PostgreSQL",
                    len(self.pending) + len(self.in_flight),
                )
                break
            await asyncio.sleep(0.1)
        if self._conn is not None:
            try:
                await self._conn.close(timeout=5)
            except Exception:
                self._conn.terminate()
            self._conn = None

    async def _flush_forever(self) -> None:
        retry_delay = 0.0
        while not self._stopping:
            if retry_delay:
                # PostgreSQL is failing: back off (the buffer keeps filling; a
                # full batch must not turn this into a tight reconnect loop).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), timeout=retry_delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            if self._stopping:
                break  # stop() does the final flush
            ok = await self.flush()
            retry_delay = 0.0 if ok else min(max(retry_delay * 2, 0.05), MAX_RETRY_DELAY_SECONDS)

    # --- flushing -------------------------------------------------------------------

    async def flush(self) -> bool:
        """Write ``in_flight`` + ``pending``; True on success (or nothing to do)."""
        async with self._lock:
            if self.pending:
                if self.in_flight:
                    self.in_flight.update(self.pending)
                else:
                    self.in_flight = self.pending
                self.pending = {}
            if not self.in_flight:
                return True
            rows = list(self.in_flight.values())
            started = time.perf_counter()
            try:
                try:
                    await self._write(rows)
                except PERMANENT_DATA_ERRORS as exc:
                    log.error("click batch rejected (%s); writing rows one by one", exc)
                    await self._write_one_by_one(rows)
            except Exception as exc:
                self.failed_flushes += 1
                CLICK_FLUSH_FAILURES.inc()
                self._uncertain = True
                log.error(
                    "click flush failed (%s: %s); %d rows kept for retry",
                    type(exc).__name__,
                    exc,
                    len(rows),
                )
                await self._drop_connection()
                return False
            CLICK_FLUSH_DURATION.observe(time.perf_counter() - started)
            self.flushed_rows += len(rows)
            self.in_flight = {}
            return True

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(
                self.dsn,
                timeout=5,
                server_settings={"application_name": "click-gateway-click-buffer"},
            )
            await repository.prepare_copy_connection(conn)
            self._conn = conn
        return self._conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _write(self, rows: list[ClickRow]) -> None:
        conn = await self._connection()
        if self._uncertain:
            # The previous attempt may have committed: skip rows already stored.
            await repository.insert_clicks_skipping_existing(conn, rows)
            self._uncertain = False
        else:
            await repository.copy_clicks(conn, rows)

    async def _write_one_by_one(self, rows: list[ClickRow]) -> None:
        """Last resort for a batch PostgreSQL refuses: store every row it accepts.

        Inputs are sanitised before they are buffered, so this should never
        run; a row refused on its own is logged in full (it can never be
        stored, and retrying it forever would block every other click).
        """
        conn = await self._connection()
        for row in rows:
            try:
                await repository.insert_clicks_skipping_existing(conn, [row])
            except PERMANENT_DATA_ERRORS as exc:
                log.critical("click row refused by PostgreSQL (%s), not stored: %r", exc, row)
