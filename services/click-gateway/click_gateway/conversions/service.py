"""Recording conversions and changing their status, atomically and idempotently.

Latency matters here (the postback chain's clock starts at this request), so
the common case — a goal without caps — is two database round trips: find the
click, then one statement that writes the conversion, its first history row
and its outbox event. Both are group-committed: requests arriving together
share one lookup query and one insert statement (one commit, one WAL flush).
Advertiser keys and offer terms (with the offer's goals) come from short-lived
in-process caches; conversion ids are reserved from the identity sequence in
blocks, so the event can be complete before the insert.

A goal with a cap takes its own transaction: the cap counters are
incremented (``count < cap``) before the insert and kept locked until the
commit, so caps hold exactly under concurrency; a repeat rolls it all back.

Every status change locks the conversion, checks the transition, and writes
the new status, a history row and a ``conversion.status_changed`` event in one
transaction, with the conversion's next ``sequence``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TypeVar

import asyncpg

from click_gateway.clicks.service import ClickRecord, ClickService
from click_gateway.conversions import repository
from click_gateway.conversions.repository import (
    GoalTerms,
    NewConversion,
    OfferTerms,
    StatusChange,
    StoredConversion,
)
from click_gateway.conversions.schemas import ConversionRead
from postback_core.batching import MicroBatcher
from postback_core.contracts import (
    CONVERSION_CREATED,
    CONVERSION_STATUS_CHANGED,
    ConversionEventV2,
    SubIds,
)
from postback_core.db.base import asyncpg_dsn, keep_session_state
from postback_core.db.lanes import ConnectionLanes
from postback_core.db.models import DEFAULT_GOAL
from postback_core.enums import ConversionActor, ConversionRejectReason, ConversionStatus
from postback_core.topology import EVENTS_EXCHANGE

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]
MONEY_QUANTUM = Decimal("0.0001")  # the column's scale
ID_BLOCK_SIZE = 50
OFFER_TERMS_TTL_SECONDS = 2.0
# A conversion that vanished between our failed insert and our read (nothing
# deletes conversions today) is retried this many times before giving up.
INSERT_ATTEMPTS = 3
# Group commit: up to this many insert statements at once, each taking all the
# conversions that arrived while the others ran.
INSERTS_IN_FLIGHT = 2
MAX_INSERT_BATCH = 256

PENDING = ConversionStatus.PENDING
APPROVED = ConversionStatus.APPROVED
REJECTED = ConversionStatus.REJECTED
# Who may move a conversion from one status to another (operators may do everything listed).
ALLOWED_TRANSITIONS: dict[tuple[str, str], frozenset[str]] = {
    (PENDING, APPROVED): frozenset(
        {ConversionActor.ADVERTISER, ConversionActor.OPERATOR, ConversionActor.HOLD_EXPIRY}
    ),
    (PENDING, REJECTED): frozenset({ConversionActor.ADVERTISER, ConversionActor.OPERATOR}),
    (APPROVED, REJECTED): frozenset({ConversionActor.ADVERTISER, ConversionActor.OPERATOR}),
    (REJECTED, APPROVED): frozenset({ConversionActor.OPERATOR}),
}


def utc_now() -> datetime:
    return datetime.now(UTC)


class ConversionRefused(Exception):
    """Maps to an HTTP error: ``status_code`` and ``detail``."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ConversionResult:
    conversion: ConversionRead
    created: bool


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: an advertiser (scoped to its own conversions) or an operator."""

    advertiser_id: int | None

    @property
    def actor(self) -> ConversionActor:
        return (
            ConversionActor.OPERATOR if self.advertiser_id is None else ConversionActor.ADVERTISER
        )


OPERATOR = Caller(None)


def read_model(stored: NewConversion) -> ConversionRead:
    return ConversionRead(
        conversion_id=stored.id,
        click_id=stored.click_id,
        goal=stored.goal,
        payout=stored.payout,
        amount=stored.amount,
        txid=stored.txid or None,
        status=stored.status,
        reject_reason=stored.reject_reason,
        created_at=stored.created_at,
    )


def build_event(
    conversion: NewConversion,
    click: ClickRecord | None,
    *,
    event_id: uuid.UUID,
    event_type: str = CONVERSION_CREATED,
    previous_status: str | None = None,
    occurred_at: datetime | None = None,
) -> ConversionEventV2:
    """Everything the dispatcher needs to render any macro, without reading clicks.

    ``click`` is None only when the click is gone (past the clicks' retention).
    """
    subs = (
        SubIds(sub1=click.sub1, sub2=click.sub2, sub3=click.sub3, sub4=click.sub4, sub5=click.sub5)
        if click is not None
        else SubIds()
    )
    return ConversionEventV2(
        event_type=event_type,
        event_id=event_id,
        conversion_id=conversion.id,
        sequence=conversion.sequence,
        click_id=conversion.click_id,
        external_id=click.external_id if click else None,
        publisher_id=conversion.publisher_id,
        smartlink_id=conversion.smartlink_id,
        offer_id=conversion.offer_id,
        advertiser_id=conversion.advertiser_id,
        goal=conversion.goal,
        status=ConversionStatus(conversion.status),
        previous_status=ConversionStatus(previous_status) if previous_status else None,
        reject_reason=conversion.reject_reason,
        payout=conversion.payout,
        amount=conversion.amount,
        txid=conversion.txid or None,
        country=click.country if click else None,
        ip=click.ip if click else None,
        os=click.os if click else None,
        device=click.device if click else None,
        user_agent=click.user_agent if click else None,
        sub_ids=subs,
        clicked_at=click.created_at if click else None,
        converted_at=conversion.created_at,
        occurred_at=occurred_at or conversion.created_at,
    )


def goal_payout(
    goal: GoalTerms, payout: Decimal | None, amount: Decimal | None, max_payout: Decimal
) -> Decimal:
    """An explicit payout wins; else the goal's fixed payout or its share of ``amount``."""
    if payout is None:
        if goal.payout is not None:
            payout = goal.payout
        else:
            assert goal.revenue_share_percent is not None
            if amount is None:
                raise ConversionRefused(
                    422,
                    f"goal {goal.name!r} pays {goal.revenue_share_percent}% of the amount: "
                    "send amount",
                )
            payout = (amount * goal.revenue_share_percent / 100).quantize(
                MONEY_QUANTUM, ROUND_HALF_UP
            )
            if payout > max_payout:
                raise ConversionRefused(422, f"the payout would be above {max_payout}")
    return payout.quantize(MONEY_QUANTUM)


def initial_status(
    goal: GoalTerms, terms: OfferTerms, clicked_at: datetime, now: datetime
) -> tuple[str, str | None, datetime | None]:
    """(status, reject_reason, hold_until) of a new conversion, before caps."""
    if now - clicked_at > timedelta(days=terms.attribution_window_days):
        return REJECTED, ConversionRejectReason.ATTRIBUTION_WINDOW.value, None
    if goal.hold_days == 0:
        return APPROVED, None, None
    hold_until = now + timedelta(days=goal.hold_days) if goal.hold_days is not None else None
    return PENDING, None, hold_until


def check_transition(current: str, wanted: str, actor: str, conversion_id: int) -> None:
    allowed = ALLOWED_TRANSITIONS.get((current, wanted))
    if allowed is None or actor not in allowed:
        who = "" if allowed is None else " (only an operator may)"
        raise ConversionRefused(
            409, f"conversion {conversion_id} is {current}: it can't become {wanted}{who}"
        )


class ConversionRecorder:
    """Owns the conversion path's connection pool and its small caches (one per process)."""

    def __init__(
        self,
        database_url: str,
        max_payout: Decimal,
        pool_size: int = 10,
        on_committed: Callable[[], None] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """``on_committed`` is called after new outbox rows commit (wakes the relay).

        ``clock`` tells the time of conversions and status changes (tests move it).
        """
        self.dsn = asyncpg_dsn(database_url)
        self.max_payout = max_payout
        self.pool_size = pool_size
        self.clock = clock
        self._on_committed = on_committed
        self._pool: asyncpg.Pool | None = None
        self._ids: list[int] = []
        self._ids_lock = asyncio.Lock()
        self._offer_terms: dict[int, tuple[OfferTerms, float]] = {}
        self._lanes = ConnectionLanes(
            self.dsn, INSERTS_IN_FLIGHT, application_name="click-gateway-conversions"
        )
        self._inserts: MicroBatcher[tuple[NewConversion, bytes], bool] = MicroBatcher(
            self._insert_batch,
            max_batch=MAX_INSERT_BATCH,
            max_in_flight=INSERTS_IN_FLIGHT,
            name="conversion-insert",
        )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the conversion recorder is not started")
        return self._pool

    async def start(self) -> None:
        await self._lanes.start()
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                server_settings={"application_name": "click-gateway-conversions"},
                reset=keep_session_state,
            )

    async def stop(self) -> None:
        await self._inserts.drain()
        await self._lanes.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def committed(self) -> None:
        """New outbox rows committed: wake the relay."""
        if self._on_committed is not None:
            self._on_committed()

    async def in_transaction(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``work`` as one unit of work (status changes); commits unless it raises."""
        async with self.pool.acquire() as conn, conn.transaction():
            result = await work(conn)
        self.committed()
        return result

    def forget_offer(self, offer_id: int) -> None:
        """An offer (or one of its goals) changed in this process: don't wait for the TTL."""
        self._offer_terms.pop(offer_id, None)

    async def terms(self, offer_id: int) -> OfferTerms | None:
        cached = self._offer_terms.get(offer_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        terms = await repository.offer_terms(self.pool, offer_id)
        if terms is not None:
            if len(self._offer_terms) > 100_000:
                self._offer_terms.clear()
            self._offer_terms[offer_id] = (terms, now + OFFER_TERMS_TTL_SECONDS)
        return terms

    async def _next_id(self) -> int:
        async with self._ids_lock:
            if not self._ids:
                self._ids = list(reversed(await repository.reserve_ids(self.pool, ID_BLOCK_SIZE)))
            return self._ids.pop()

    async def record(
        self,
        clicks: ClickService,
        *,
        advertiser_id: int | None,
        click_id: int,
        payout: Decimal | None,
        txid: str | None,
        goal: str | None = None,
        amount: Decimal | None = None,
    ) -> ConversionResult:
        """Store the conversion, its history and its outbox event in one transaction.

        ``advertiser_id`` None: an operator reports it for the click's advertiser.
        Raises ``ConversionRefused`` (404 unknown click, 403 another
        advertiser's click, 422 unknown goal or payout above the cap). A repeat
        returns the stored conversion with ``created=False`` and queues nothing.
        A conversion beyond a cap or outside the attribution window is stored
        (and answered) as rejected.
        """
        if payout is not None and payout > self.max_payout:
            raise ConversionRefused(422, f"payout must be at most {self.max_payout}")
        click = await clicks.find_click(click_id)
        if click is None:
            raise ConversionRefused(404, f"click {click_id} not found")
        terms = await self.terms(click.offer_id) if click.offer_id is not None else None
        if terms is None or (advertiser_id is not None and terms.advertiser_id != advertiser_id):
            raise ConversionRefused(403, f"click {click_id} was not sent to one of your offers")
        goal_name = goal or DEFAULT_GOAL
        goal_terms = terms.goals.get(goal_name)
        if goal_terms is None:
            names = ", ".join(sorted(terms.goals)) or "none"
            raise ConversionRefused(
                422, f"unknown goal {goal_name!r} for offer {click.offer_id}; its goals: {names}"
            )
        value = goal_payout(goal_terms, payout, amount, self.max_payout)
        txid = txid or ""
        for _ in range(INSERT_ATTEMPTS):
            now = self.clock()
            status, reason, hold_until = initial_status(goal_terms, terms, click.created_at, now)
            conversion = NewConversion(
                id=await self._next_id(),
                click_id=click_id,
                txid=txid,
                event_id=uuid.uuid4(),
                advertiser_id=terms.advertiser_id,
                publisher_id=click.publisher_id,
                offer_id=click.offer_id,
                smartlink_id=click.smartlink_id,
                payout=value,
                status=status,
                created_at=now,
                goal_id=goal_terms.id,
                goal=goal_terms.name,
                once_per_click=not goal_terms.allow_multiple,
                amount=amount.quantize(MONEY_QUANTUM) if amount is not None else None,
                reject_reason=reason,
                hold_until=hold_until,
                actor=ConversionActor.RULES if reason else ConversionActor.ADVERTISER,
            )
            if goal_terms.capped and status != REJECTED:
                inserted_conversion = await self._insert_capped(conversion, goal_terms, click)
                inserted = inserted_conversion is not None
                if inserted_conversion is not None:
                    conversion = inserted_conversion
            else:
                payload = build_event(conversion, click, event_id=conversion.event_id).to_json()
                inserted = await self._inserts.submit((conversion, payload))
            if inserted:
                return ConversionResult(read_model(conversion), created=True)
            existing = await repository.get_existing(self.pool, click_id, goal_terms.id, txid)
            if existing is not None:
                return ConversionResult(read_model(existing), created=False)
        raise ConversionRefused(409, "the conversion changed concurrently; retry")

    async def _insert_capped(
        self, conversion: NewConversion, goal: GoalTerms, click: ClickRecord
    ) -> NewConversion | None:
        """Take a cap slot and insert in one transaction; None (nothing kept) on a repeat."""
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                if not await repository.take_cap_slot(conn, goal, conversion.created_at.date()):
                    conversion = replace(
                        conversion,
                        status=REJECTED,
                        reject_reason=ConversionRejectReason.CAP_REACHED.value,
                        hold_until=None,
                        actor=ConversionActor.RULES,
                    )
                payload = build_event(conversion, click, event_id=conversion.event_id).to_json()
                inserted = await repository.insert_many_with_events(
                    conn,
                    [(conversion, payload)],
                    exchange=EVENTS_EXCHANGE,
                    routing_key=CONVERSION_CREATED,
                )
            except BaseException:
                await transaction.rollback()
                raise
            if not inserted[0]:
                await transaction.rollback()  # a repeat: give the cap slot back
                return None
            await transaction.commit()
        self.committed()
        return conversion

    async def _insert_batch(
        self, batch: list[tuple[NewConversion, bytes]]
    ) -> list[bool | BaseException]:
        """One statement for the whole batch; if it fails, each row alone (isolation)."""
        results: list[bool | BaseException]
        try:
            results = list(await self._insert(batch))
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if len(batch) == 1:
                return [exc]
            log.warning("conversion batch of %d failed (%s); inserting one by one", len(batch), exc)
            results = []
            for item in batch:
                try:
                    results.extend(await self._insert([item]))
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as one_exc:
                    results.append(one_exc)
        if any(r is True for r in results):
            self.committed()
        return results

    async def _insert(self, batch: list[tuple[NewConversion, bytes]]) -> list[bool]:
        return await self._lanes.run(
            lambda conn: repository.insert_many_with_events(
                conn, batch, exchange=EVENTS_EXCHANGE, routing_key=CONVERSION_CREATED
            )
        )


# --- status changes (not the hot path: one transaction each, run by the caller) --------


async def change_status(
    conn: asyncpg.Connection,
    find_click: Callable[[int], Awaitable[ClickRecord | None]],
    conversion: StoredConversion,
    wanted: str,
    *,
    actor: ConversionActor,
    actor_id: int | None,
    reason: str | None,
    now: datetime,
) -> StoredConversion:
    """Move a conversion locked by the caller's transaction to ``wanted`` (409 if refused).

    Writes the status, a history row and the ``conversion.status_changed``
    event; a rejection gives its cap slot back, an operator's re-approval
    takes one again (without the cap check: the operator decided). The same
    status again changes nothing.
    """
    if conversion.status == wanted:
        return conversion
    check_transition(conversion.status, wanted, actor, conversion.id)
    day = conversion.created_at.astimezone(UTC).date()
    if wanted == REJECTED:
        await repository.release_cap_slot(conn, conversion.goal_id, day)
    elif conversion.status == REJECTED:
        await repository.count_cap_slot(conn, conversion.goal_id, day)
    change = StatusChange(
        sequence=conversion.sequence + 1,
        status=wanted,
        previous_status=conversion.status,
        actor=actor,
        actor_id=actor_id,
        reason=reason,
        at=now,
    )
    changed = replace(
        conversion,
        status=wanted,
        reject_reason=(reason or "rejected") if wanted == REJECTED else None,
        hold_until=None,
        sequence=change.sequence,
        status_changed_at=now,
    )
    click = await find_click(conversion.click_id)
    event_id = uuid.uuid4()
    event = build_event(
        changed,
        click,
        event_id=event_id,
        event_type=CONVERSION_STATUS_CHANGED,
        previous_status=conversion.status,
        occurred_at=now,
    )
    await repository.apply_status_change(
        conn,
        conversion,
        change,
        reject_reason=changed.reject_reason,
        event_id=event_id,
        exchange=EVENTS_EXCHANGE,
        routing_key=CONVERSION_STATUS_CHANGED,
        payload=event.to_json(),
    )
    return changed


async def load_for_change(
    conn: asyncpg.Connection, conversion_id: int, caller: Caller
) -> StoredConversion:
    """The conversion, locked for the caller's transaction (404 when not the caller's)."""
    conversion = await repository.get(conn, conversion_id, for_update=True)
    if conversion is None or (
        caller.advertiser_id is not None and conversion.advertiser_id != caller.advertiser_id
    ):
        raise ConversionRefused(404, f"conversion {conversion_id} not found")
    return conversion


async def find_for_change(
    conn: asyncpg.Connection, caller: Caller, click_id: int, txid: str | None, goal: str | None
) -> StoredConversion:
    """The conversion reported as (click_id, txid[, goal]), locked (404 / 422 ambiguous)."""
    found = [
        c
        for c in await repository.find_by_click_and_txid(conn, click_id, txid or "", goal)
        if caller.advertiser_id is None or c.advertiser_id == caller.advertiser_id
    ]
    if not found:
        raise ConversionRefused(
            404, f"no conversion of click {click_id} with txid {txid or ''!r} was reported"
        )
    if len(found) > 1:
        goals = ", ".join(c.goal for c in found)
        raise ConversionRefused(
            422, f"click {click_id} has conversions of several goals ({goals}): send goal"
        )
    return await load_for_change(conn, found[0].id, caller)
