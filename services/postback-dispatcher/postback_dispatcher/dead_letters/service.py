"""Dead-letter operations: list, inspect, replay, purge, and the money at risk.

Replay spans two systems (database and broker), so it runs in its own short
transactions instead of the request's: the row is switched to 'replayed' and
committed *before* the publish (a concurrent replay then sees it taken and
gets 409), and switched back if the broker does not confirm.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from postback_core.db.base import unit_of_work
from postback_core.db.models import DeadLetter, DeliveryAttempt
from postback_core.enums import AttemptOutcome, AttemptTrigger, DeadLetterReason, DeadLetterState
from postback_core.security import mask_in_text
from postback_dispatcher.dead_letters import schemas
from postback_dispatcher.dead_letters.publisher import PublishError, ReplayPublisher, replay_headers
from postback_dispatcher.dead_letters.repository import (
    OPEN,
    PURGED,
    ClaimedDeadLetter,
    DeadLetterFilters,
    DeadLetterRepository,
)
from postback_dispatcher.pagination import decode_time_id_cursor, encode_cursor

REPLAY_BATCH_SIZE = 200
PUBLISH_CONCURRENCY = 32


class DeadLetterNotFound(LookupError):
    pass


class DeadLetterConflict(RuntimeError):
    """The dead letter is not open (already replayed or purged) or has nothing to replay."""


class BrokerUnavailable(RuntimeError):
    pass


def _masked(text: str | None, token: str | None) -> str | None:
    return mask_in_text(text, token) if text else text


def _masked_json(value: Any, token: str | None) -> Any:
    """Every string in the stored history, masked like the columns."""
    if isinstance(value, str):
        return _masked(value, token)
    if isinstance(value, list):
        return [_masked_json(v, token) for v in value]
    if isinstance(value, dict):
        return {k: _masked_json(v, token) for k, v in value.items()}
    return value


def to_item(row: DeadLetter, token: str | None = None) -> schemas.DeadLetterItem:
    """As shown: masked again on the way out (rows stored before masking covered userinfo)."""
    return schemas.DeadLetterItem(
        id=row.id,
        conversion_id=row.conversion_id,
        click_id=row.click_id,
        publisher_id=row.publisher_id,
        offer_id=row.offer_id,
        payout=row.payout,
        url=_masked(row.url_masked, token),
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=_masked(row.last_error, token),
        first_attempt_at=row.first_attempt_at,
        last_attempt_at=row.last_attempt_at,
        dead_at=row.dead_at,
        reason=DeadLetterReason(row.reason),
    )


def to_attempt(row: DeliveryAttempt, token: str | None = None) -> schemas.AttemptItem:
    return schemas.AttemptItem(
        id=row.id,
        sequence=row.sequence,
        attempt_no=row.attempt_no,
        trigger=AttemptTrigger(row.trigger),
        outcome=AttemptOutcome(row.outcome),
        url=_masked(row.url_masked, token),
        http_status=row.http_status,
        duration_ms=float(row.duration_ms) if row.duration_ms is not None else None,
        error_class=row.error_class,
        error_message=_masked(row.error_message, token),
        response_excerpt=_masked(row.response_excerpt, token),
        created_at=row.created_at,
    )


async def list_page(
    session: AsyncSession, filters: DeadLetterFilters, *, limit: int, cursor: str | None
) -> schemas.DeadLetterPage:
    after = decode_time_id_cursor(cursor) if cursor else None
    rows = await DeadLetterRepository(session).list_open(filters, limit=limit, after=after)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].dead_at, page[-1].id) if len(rows) > limit else None
    return schemas.DeadLetterPage(items=[to_item(r) for r in page], next_cursor=next_cursor)


async def get_detail(session: AsyncSession, dead_letter_id: int) -> schemas.DeadLetterDetail:
    repo = DeadLetterRepository(session)
    row = await repo.get(dead_letter_id)
    if row is None or row.state == PURGED:
        raise DeadLetterNotFound(dead_letter_id)
    attempts = (
        await repo.attempts_for_conversion(row.conversion_id)
        if row.conversion_id is not None
        else []
    )
    token = await repo.security_token(row.publisher_id) if row.publisher_id else None
    return schemas.DeadLetterDetail(
        **to_item(row, token).model_dump(),
        event_id=str(row.event_id) if row.event_id else None,
        sequence=row.sequence,
        state=DeadLetterState(row.state),
        replayed_at=row.replayed_at,
        history=_masked_json(row.history, token),
        attempt_history=[to_attempt(a, token) for a in attempts],
    )


async def _publish(publisher: ReplayPublisher, claimed: ClaimedDeadLetter) -> None:
    assert claimed.payload is not None
    await publisher.publish_event(
        claimed.payload, replay_headers(claimed.sequence), message_id=claimed.event_id
    )


async def replay_one(
    sessionmaker: async_sessionmaker[AsyncSession],
    publisher: ReplayPublisher,
    dead_letter_id: int,
) -> schemas.ReplayAccepted:
    async with unit_of_work(sessionmaker) as session:
        repo = DeadLetterRepository(session)
        row = await repo.get(dead_letter_id)
        if row is None or row.state == PURGED:
            raise DeadLetterNotFound(dead_letter_id)
        if row.payload is None:
            raise DeadLetterConflict("this dead letter has no stored event to replay")
        claimed = await repo.claim_for_replay(dead_letter_id)
        if claimed is None:
            raise DeadLetterConflict(
                "already replayed; it can be replayed again only if it dead-letters again"
            )
    try:
        await _publish(publisher, claimed)
    except PublishError as exc:
        async with unit_of_work(sessionmaker) as session:
            await DeadLetterRepository(session).reopen([claimed.id])
        raise BrokerUnavailable(str(exc)) from exc
    return schemas.ReplayAccepted(
        id=claimed.id, state=DeadLetterState.REPLAYED, sequence=claimed.sequence + 1
    )


async def dry_run_totals(
    session: AsyncSession, filters: DeadLetterFilters, *, replayable_only: bool = True
) -> schemas.DryRunTotals:
    """What a bulk action would touch: count and payout (replay skips rows with no event)."""
    totals = await DeadLetterRepository(session).totals(filters, replayable_only=replayable_only)
    return schemas.DryRunTotals(count=totals.count, payout_total=totals.payout_total)


@dataclass
class BulkOutcome:
    replayed: int = 0
    failed: int = 0


async def replay_matching(
    sessionmaker: async_sessionmaker[AsyncSession],
    publisher: ReplayPublisher,
    filters: DeadLetterFilters,
    *,
    limit: int | None = None,
    batch_size: int = REPLAY_BATCH_SIZE,
) -> BulkOutcome:
    """Replay every matching open dead letter, ``batch_size`` rows per transaction.

    Stops at the first batch the broker rejects (the rest stay listed) so a
    broker outage does not churn through the whole table.
    """
    started_at = datetime.now(UTC)
    outcome = BulkOutcome()
    gate = asyncio.Semaphore(PUBLISH_CONCURRENCY)

    async def publish_guarded(claimed: ClaimedDeadLetter) -> bool:
        async with gate:
            try:
                await _publish(publisher, claimed)
            except PublishError:
                return False
            return True

    while limit is None or outcome.replayed < limit:
        size = batch_size if limit is None else min(batch_size, limit - outcome.replayed)
        async with unit_of_work(sessionmaker) as session:
            claimed = await DeadLetterRepository(session).claim_batch_for_replay(
                filters, limit=size, dead_before=started_at
            )
        if not claimed:
            break
        results = await asyncio.gather(*(publish_guarded(c) for c in claimed))
        failed_ids = [c.id for c, ok in zip(claimed, results, strict=True) if not ok]
        outcome.replayed += len(claimed) - len(failed_ids)
        if failed_ids:
            async with unit_of_work(sessionmaker) as session:
                await DeadLetterRepository(session).reopen(failed_ids)
            outcome.failed += len(failed_ids)
            break
        if len(claimed) < size:
            break
    return outcome


async def purge_one(session: AsyncSession, dead_letter_id: int) -> None:
    repo = DeadLetterRepository(session)
    row = await repo.get(dead_letter_id)
    if row is None or row.state == PURGED:
        raise DeadLetterNotFound(dead_letter_id)
    if row.state != OPEN or not await repo.purge(dead_letter_id):
        raise DeadLetterConflict("only an open dead letter can be purged (this one was replayed)")


async def purge_matching(session: AsyncSession, filters: DeadLetterFilters) -> int:
    return await DeadLetterRepository(session).purge_matching(filters)


async def stats(session: AsyncSession) -> schemas.DeadLetterStats:
    exposures = await DeadLetterRepository(session).exposure_by_publisher()
    return schemas.DeadLetterStats(
        total_count=sum(e.count for e in exposures),
        total_payout_at_risk=sum((e.payout_at_risk for e in exposures), Decimal(0)),
        publishers=[
            schemas.PublisherExposureItem(
                publisher_id=e.publisher_id,
                count=e.count,
                payout_at_risk=e.payout_at_risk,
                oldest_dead_at=e.oldest_dead_at,
                newest_dead_at=e.newest_dead_at,
            )
            for e in exposures
        ],
    )
