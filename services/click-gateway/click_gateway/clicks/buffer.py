"""The click write buffer: clicks are answered from memory and reach PostgreSQL by COPY.

A click row is added to ``pending`` (keyed by click id, so ``find_click`` can
see it); a single flusher task moves ``pending`` into ``in_flight`` and COPYs
it every ``interval`` or as soon as ``max_rows`` are waiting. A failed flush
keeps its rows in ``in_flight`` and the next attempt retries them together
with whatever arrived meanwhile: rows are never dropped for a transient
failure.

While PostgreSQL is away the redirect goes on: rows that could not be written
are appended to a local spill file (``spill.py``) as soon as a flush fails,
and while the outage lasts every new batch is on disk before it is tried. So
a stop or a crash (even ``kill -9``) during the outage loses at most the
clicks of the last flush interval, and memory stays bounded: beyond
``capacity`` rows, rows that are safe on disk leave memory. The spill file is
written to the database (rows already stored are skipped) as soon as it takes
writes again, or by the next gateway process to start on the same database.
Only if a row can be neither written nor spilled does the service refuse new
clicks (503) rather than redirect visitors it could not record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from click_gateway.clicks import repository
from click_gateway.clicks.spill import SpillFile
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


def default_spill_dir(dsn: str) -> Path:
    """A spill directory per database, so a file is only ever adopted for the database
    its clicks belong to (two deployments on one host share the temporary directory)."""
    digest = hashlib.sha256(dsn.rsplit("@", 1)[-1].encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "click-gateway-spill" / digest


class ClickBuffer:
    def __init__(
        self,
        dsn: str,
        interval_ms: int,
        max_rows: int,
        capacity: int = DEFAULT_CAPACITY,
        spill_dir: Path | None = None,
    ) -> None:
        """``spill_dir``: where rows go while PostgreSQL is away (None: a directory per
        database under the system's temporary directory)."""
        self.dsn = dsn
        self.interval = interval_ms / 1000
        self.max_rows = max_rows
        self.capacity = capacity
        self.spill_dir = spill_dir if spill_dir is not None else default_spill_dir(dsn)
        self.pending: dict[int, ClickRow] = {}
        self.in_flight: dict[int, ClickRow] = {}
        self.flushed_rows = 0
        self.failed_flushes = 0
        self.spilled_rows = 0
        self._spill: SpillFile | None = None
        self._adopted: list[SpillFile] = []
        # In-flight rows that are in our spill file already, and how many rows are
        # in it only (left memory to keep it bounded): then the file must be replayed.
        self._on_disk: set[int] = set()
        self._evicted = 0
        self._failing = False
        self._backlog_written = asyncio.Event()
        self._backlog_written.set()
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
        # Rows already on disk can leave memory whenever needed.
        if len(self.pending) + len(self.in_flight) - len(self._on_disk) < self.capacity:
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

    @property
    def has_backlog(self) -> bool:
        """Rows that are only on disk (spilled and out of memory, or adopted) wait."""
        return not self._backlog_written.is_set()

    async def wait_backlog_written(self, seconds: float) -> bool:
        """Wait until rows kept only on disk are in PostgreSQL; False after ``seconds``."""
        try:
            await asyncio.wait_for(self._backlog_written.wait(), seconds)
        except TimeoutError:
            return False
        return True

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        await self._connection()
        self._adopted = await asyncio.to_thread(SpillFile.adopt_orphans, self.spill_dir)
        if self._adopted:
            rows = sum(f.rows for f in self._adopted)
            log.warning(
                "adopted %d spill file(s) with %d clicks left by a stopped gateway; writing them",
                len(self._adopted),
                rows,
            )
            self._backlog_written.clear()
            self._wake.set()
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
        while self.pending or self.in_flight or self.has_backlog:
            if await self.flush():
                continue
            if time.monotonic() > deadline:
                await self._keep_for_next_start()
                break
            await asyncio.sleep(0.1)
        self._close_spill_files()
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
        """Write the backlog, ``in_flight`` and ``pending``; True on success (or nothing to do)."""
        async with self._lock:
            if self.pending:
                if self.in_flight:
                    self.in_flight.update(self.pending)
                else:
                    self.in_flight = self.pending
                self.pending = {}
            if not self.in_flight and not self.has_backlog:
                return True
            if self._failing:
                # An outage is going on: a batch is on disk before it is tried, so a
                # crash while a write hangs loses nothing older than this interval.
                await self._spill_unspilled()
            rows = list(self.in_flight.values())
            started = time.perf_counter()
            try:
                await self._write_backlog()
                await self._write_rows(rows)
            except Exception as exc:
                self.failed_flushes += 1
                CLICK_FLUSH_FAILURES.inc()
                self._uncertain = True
                self._failing = True
                log.error(
                    "click flush failed (%s: %s); %d rows kept for retry",
                    type(exc).__name__,
                    exc,
                    len(rows) + self._evicted,
                )
                await self._drop_connection()
                await self._spill_unspilled()
                return False
            CLICK_FLUSH_DURATION.observe(time.perf_counter() - started)
            self.flushed_rows += len(rows)
            self.in_flight = {}
            self._on_disk.clear()
            self._failing = False
            if self._spill is not None and self._spill.rows:
                await asyncio.to_thread(self._spill.clear)
            self._backlog_written.set()
            return True

    async def _write_rows(self, rows: list[ClickRow]) -> None:
        if not rows:
            return
        try:
            await self._write(rows)
        except PERMANENT_DATA_ERRORS as exc:
            log.error("click batch rejected (%s); writing rows one by one", exc)
            await self._write_one_by_one(rows)

    async def _write_backlog(self) -> None:
        """Rows that are only on disk: adopted files, then our own file if rows left memory."""
        while self._adopted:
            orphan = self._adopted[0]
            await self._replay(orphan)
            await asyncio.to_thread(orphan.remove)
            self._adopted.pop(0)
            log.info("spill file %s written to PostgreSQL (%d clicks)", orphan.path, orphan.rows)
        if self._evicted and self._spill is not None:
            await self._replay(self._spill)
            self._evicted = 0

    async def _replay(self, spill: SpillFile) -> None:
        """Write a spill file's rows, skipping those already stored (an earlier attempt's
        outcome was unknown, or they are in memory too and were written already)."""
        conn = await self._connection()
        chunks = spill.read_chunks(self.max_rows)  # one chunk in memory at a time
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            try:
                await repository.insert_clicks_skipping_existing(conn, chunk)
            except PERMANENT_DATA_ERRORS as exc:
                log.error("spilled click batch rejected (%s); writing rows one by one", exc)
                await self._write_one_by_one(chunk)
        # In-memory rows may be among those just written.
        self._uncertain = True

    async def _spill_unspilled(self) -> None:
        """Put every in-flight row that is not on disk yet into our spill file; then rows
        beyond ``capacity`` can leave memory."""
        missing = [(i, row) for i, row in self.in_flight.items() if i not in self._on_disk]
        if not missing:
            return
        try:
            await asyncio.to_thread(self._append, [row for _, row in missing])
        except OSError as exc:
            log.error("cannot spill %d clicks to %s: %s", len(missing), self.spill_dir, exc)
            return
        self._on_disk.update(i for i, _ in missing)
        self._leave_memory_if_full()
        self.spilled_rows += len(missing)
        self._backlog_written.clear()

    def _append(self, rows: list[ClickRow]) -> None:
        if self._spill is None:
            self._spill = SpillFile.create(self.spill_dir)
        self._spill.append(rows)

    def _leave_memory_if_full(self) -> None:
        """Beyond ``capacity``, the oldest rows that are safe on disk leave memory."""
        excess = len(self.in_flight) - self.capacity
        if excess <= 0:
            return
        for click_id in list(self.in_flight)[:excess]:
            if click_id in self._on_disk:
                del self.in_flight[click_id]
                self._on_disk.discard(click_id)
                self._evicted += 1

    async def _keep_for_next_start(self) -> None:
        """Stopping while PostgreSQL is away: every row must be on disk."""
        if self.pending:
            self.in_flight.update(self.pending)
            self.pending = {}
        await self._spill_unspilled()
        unsaved = len(self.in_flight) - len(self._on_disk)
        kept = (self._spill.rows if self._spill else 0) + sum(f.rows for f in self._adopted)
        if unsaved:
            log.critical("stopping with %d clicks NOT written anywhere", unsaved)
        if kept:
            log.warning(
                "stopping with %d clicks in spill files under %s; the next gateway to start "
                "on this database writes them",
                kept,
                self.spill_dir,
            )

    def _close_spill_files(self) -> None:
        for spill in [self._spill, *self._adopted]:
            if spill is None:
                continue
            if spill.rows:
                spill.close()  # left for the next start to adopt
            else:
                spill.remove()
        self._spill = None
        self._adopted = []

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
