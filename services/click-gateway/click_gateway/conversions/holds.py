"""The scheduled job that approves held conversions when their hold ends.

Every gateway process runs one. Each pass locks due conversions with
``FOR UPDATE SKIP LOCKED`` and approves them in the same transaction as their
history rows and ``conversion.status_changed`` events, so with several
gateways each conversion is approved exactly once: a row another job holds is
skipped, and once committed it is no longer pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from click_gateway.clicks.service import ClickRecord
from click_gateway.conversions import repository, service
from click_gateway.conversions.service import Clock, ConversionRecorder
from postback_core.enums import ConversionActor, ConversionStatus

log = logging.getLogger(__name__)

BATCH_SIZE = 200
HOLD_ENDED = "hold ended"
ClickFinder = Callable[[int], Awaitable[ClickRecord | None]]


class HoldExpiry:
    def __init__(
        self,
        recorder: ConversionRecorder,
        find_click: ClickFinder,
        interval_seconds: float,
        clock: Clock | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        """``clock`` defaults to the recorder's (tests move it)."""
        self.recorder = recorder
        self.find_click = find_click
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.batch_size = batch_size
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Approve every conversion whose hold has ended; how many this job approved."""
        approved = 0
        while True:
            done = await self.recorder.in_transaction(self._approve_batch)
            approved += done
            if done < self.batch_size:
                return approved

    async def _approve_batch(self, conn: asyncpg.Connection) -> int:
        now = (self.clock or self.recorder.clock)()
        due = await repository.lock_due_holds(conn, now, self.batch_size)
        for conversion_id in due:
            conversion = await repository.get(conn, conversion_id, for_update=True)
            if conversion is None or conversion.status != ConversionStatus.PENDING:
                continue
            await service.change_status(
                conn,
                self.find_click,
                conversion,
                ConversionStatus.APPROVED,
                actor=ConversionActor.HOLD_EXPIRY,
                actor_id=None,
                reason=HOLD_ENDED,
                now=now,
            )
        return len(due)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="conversion-hold-expiry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                approved = await self.run_once()
                if approved:
                    log.info("approved %d conversions whose hold ended", approved)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    log.exception("approving held conversions failed; retrying")
                failing = True
