"""Conversion SQL, on plain asyncpg: this is the hot path of every conversion.

Idempotency lives in unique indexes, not in a read-then-write:
``(click_id, goal_id, txid)`` always, and ``(click_id, goal_id)`` for goals
that allow one conversion per click (``once_per_click``). A new conversion,
its first history row and its outbox event are written by one statement (so
they commit together), and a repeat inserts none of them.

Status changes lock the conversion row, so a conversion's events get
consecutive ``sequence`` numbers and two changes can't interleave.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TypeAlias

import asyncpg
import orjson

from postback_core.enums import ConversionActor

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class GoalTerms:
    id: int
    name: str
    payout: Decimal | None
    revenue_share_percent: Decimal | None
    hold_days: int | None
    daily_cap: int | None
    total_cap: int | None
    allow_multiple: bool

    @property
    def capped(self) -> bool:
        return self.daily_cap is not None or self.total_cap is not None


@dataclass(frozen=True, slots=True)
class OfferTerms:
    advertiser_id: int
    payout: Decimal
    attribution_window_days: int
    goals: dict[str, GoalTerms]


@dataclass(frozen=True, slots=True)
class NewConversion:
    """A conversion row (new or loaded); the fields after ``created_at`` have defaults."""

    id: int
    click_id: int
    txid: str
    event_id: uuid.UUID
    advertiser_id: int
    publisher_id: int
    offer_id: int | None
    smartlink_id: int | None
    payout: Decimal
    status: str
    created_at: datetime
    goal_id: int = 0
    goal: str = "default"
    once_per_click: bool = False
    amount: Decimal | None = None
    reject_reason: str | None = None
    hold_until: datetime | None = None
    sequence: int = 1
    actor: str = ConversionActor.ADVERTISER
    status_changed_at: datetime | None = None


StoredConversion = NewConversion


@dataclass(frozen=True, slots=True)
class StatusChange:
    sequence: int
    status: str
    previous_status: str | None
    actor: str
    actor_id: int | None
    reason: str | None
    at: datetime


_OFFER_TERMS = """
SELECT o.advertiser_id, o.payout AS offer_payout, o.attribution_window_days,
       g.id, g.name, g.payout, g.revenue_share_percent, g.hold_days, g.daily_cap, g.total_cap,
       g.allow_multiple
FROM offers o LEFT JOIN goals g ON g.offer_id = o.id
WHERE o.id = $1
"""


async def offer_terms(db: Executor, offer_id: int) -> OfferTerms | None:
    rows = await db.fetch(_OFFER_TERMS, offer_id)
    if not rows:
        return None
    goals = {
        row["name"]: GoalTerms(
            id=row["id"],
            name=row["name"],
            payout=row["payout"],
            revenue_share_percent=row["revenue_share_percent"],
            hold_days=row["hold_days"],
            daily_cap=row["daily_cap"],
            total_cap=row["total_cap"],
            allow_multiple=row["allow_multiple"],
        )
        for row in rows
        if row["id"] is not None
    }
    first = rows[0]
    return OfferTerms(
        first["advertiser_id"], first["offer_payout"], first["attribution_window_days"], goals
    )


async def reserve_ids(db: Executor, count: int) -> list[int]:
    """Conversion ids from the table's identity sequence, a block at a time."""
    rows = await db.fetch(
        "SELECT nextval(pg_get_serial_sequence('conversions', 'id')) AS id "
        "FROM generate_series(1, $1)",
        count,
    )
    return [row["id"] for row in rows]


# One statement, so one transaction: the history and outbox rows exist iff
# their conversion row was inserted by this statement. It takes a batch (group
# commit: one commit for many requests); the unique indexes still decide each
# row on its own, also between duplicates inside one batch, and RETURNING
# names the rows inserted. The batch travels as one JSON parameter: encoding a
# dozen typed arrays cost the client ~110 us per statement.
INSERT_MANY_WITH_EVENTS = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS t(
        id bigint, click_id bigint, goal_id bigint, txid text, once_per_click boolean,
        event_id uuid, advertiser_id bigint, publisher_id bigint, offer_id bigint,
        smartlink_id bigint, payout numeric, amount numeric, status text, reject_reason text,
        hold_until timestamptz, actor text, created_at timestamptz, payload text)
),
new_conversion AS (
    INSERT INTO conversions (id, click_id, goal_id, txid, once_per_click, event_id,
                             advertiser_id, publisher_id, offer_id, smartlink_id, payout,
                             amount, status, reject_reason, hold_until, created_at)
    SELECT id, click_id, goal_id, txid, once_per_click, event_id,
           advertiser_id, publisher_id, offer_id, smartlink_id, payout,
           amount, status, reject_reason, hold_until, created_at
    FROM input
    ON CONFLICT DO NOTHING
    RETURNING id, event_id
),
new_history AS (
    INSERT INTO conversion_status_history
        (conversion_id, sequence, status, actor, actor_id, reason, at)
    SELECT i.id, 1, i.status, i.actor, i.advertiser_id, i.reject_reason, i.created_at
    FROM new_conversion AS n JOIN input AS i ON i.id = n.id
),
new_event AS (
    INSERT INTO outbox (event_id, exchange, routing_key, payload)
    SELECT n.event_id, $2::text, $3::text, convert_to(i.payload, 'UTF8')
    FROM new_conversion AS n JOIN input AS i ON i.id = n.id
    ORDER BY n.id
)
SELECT id FROM new_conversion
"""


def _money(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")  # exact: a JSON string, never a float


def _row(conversion: NewConversion, payload: bytes) -> dict[str, object]:
    return {
        "id": conversion.id,
        "click_id": conversion.click_id,
        "goal_id": conversion.goal_id,
        "txid": conversion.txid,
        "once_per_click": conversion.once_per_click,
        "event_id": str(conversion.event_id),
        "advertiser_id": conversion.advertiser_id,
        "publisher_id": conversion.publisher_id,
        "offer_id": conversion.offer_id,
        "smartlink_id": conversion.smartlink_id,
        "payout": _money(conversion.payout),
        "amount": _money(conversion.amount),
        "status": conversion.status,
        "reject_reason": conversion.reject_reason,
        "hold_until": conversion.hold_until.isoformat() if conversion.hold_until else None,
        "actor": conversion.actor,
        "created_at": conversion.created_at.isoformat(),
        "payload": payload.decode(),
    }


async def insert_many_with_events(
    db: Executor,
    conversions: Sequence[tuple[NewConversion, bytes]],
    *,
    exchange: str,
    routing_key: str,
) -> list[bool]:
    """Per conversion: True when inserted, False when it was already recorded.

    Payloads are UTF-8 JSON (the event contract), stored byte for byte.
    """
    rows = await db.fetch(
        INSERT_MANY_WITH_EVENTS,
        orjson.dumps([_row(c, payload) for c, payload in conversions]).decode(),
        exchange,
        routing_key,
    )
    inserted = {row["id"] for row in rows}
    return [c.id in inserted for c, _ in conversions]


_SELECT_CONVERSION = """
SELECT c.id, c.click_id, c.goal_id, coalesce(g.name, 'default') AS goal, c.txid,
       c.once_per_click, c.event_id, c.advertiser_id, c.publisher_id, c.offer_id,
       c.smartlink_id, c.payout, c.amount, c.status, c.reject_reason, c.hold_until,
       c.sequence, c.created_at, c.status_changed_at
FROM conversions c LEFT JOIN goals g ON g.id = c.goal_id
"""


def _conversion(row: asyncpg.Record) -> NewConversion:
    return NewConversion(
        id=row["id"],
        click_id=row["click_id"],
        txid=row["txid"],
        event_id=row["event_id"],
        advertiser_id=row["advertiser_id"],
        publisher_id=row["publisher_id"],
        offer_id=row["offer_id"],
        smartlink_id=row["smartlink_id"],
        payout=row["payout"],
        status=row["status"],
        created_at=row["created_at"],
        goal_id=row["goal_id"],
        goal=row["goal"],
        once_per_click=row["once_per_click"],
        amount=row["amount"],
        reject_reason=row["reject_reason"],
        hold_until=row["hold_until"],
        sequence=row["sequence"],
        status_changed_at=row["status_changed_at"],
    )


async def get_existing(
    db: Executor, click_id: int, goal_id: int, txid: str
) -> StoredConversion | None:
    """The conversion a repeated report collides with."""
    row = await db.fetchrow(
        _SELECT_CONVERSION + " WHERE c.click_id = $1 AND c.goal_id = $2"
        " AND (c.txid = $3 OR c.once_per_click) ORDER BY c.id LIMIT 1",
        click_id,
        goal_id,
        txid,
    )
    return _conversion(row) if row is not None else None


async def get(
    db: Executor, conversion_id: int, *, for_update: bool = False
) -> StoredConversion | None:
    lock = " FOR UPDATE OF c" if for_update else ""
    row = await db.fetchrow(_SELECT_CONVERSION + " WHERE c.id = $1" + lock, conversion_id)
    return _conversion(row) if row is not None else None


async def find_by_click_and_txid(
    db: Executor, click_id: int, txid: str, goal: str | None
) -> list[StoredConversion]:
    """Conversions of a click with this txid (one per goal at most), oldest first."""
    rows = await db.fetch(
        _SELECT_CONVERSION + " WHERE c.click_id = $1 AND c.txid = $2"
        " AND ($3::text IS NULL OR g.name = $3) ORDER BY c.id",
        click_id,
        txid,
        goal,
    )
    return [_conversion(row) for row in rows]


async def history(db: Executor, conversion_id: int) -> list[StatusChange]:
    rows = await db.fetch(
        "SELECT sequence, status, previous_status, actor, actor_id, reason, at "
        "FROM conversion_status_history WHERE conversion_id = $1 ORDER BY sequence",
        conversion_id,
    )
    return [StatusChange(**dict(row)) for row in rows]


async def list_after(
    db: Executor,
    *,
    after_id: int,
    limit: int,
    advertiser_id: int | None,
    status: str | None,
    goal: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[StoredConversion]:
    """A keyset page by id; every filter is optional (NULL = any)."""
    rows = await db.fetch(
        _SELECT_CONVERSION + " WHERE c.id > $1"
        " AND ($3::bigint IS NULL OR c.advertiser_id = $3)"
        " AND ($4::text IS NULL OR c.status = $4)"
        " AND ($5::text IS NULL OR g.name = $5)"
        " AND ($6::timestamptz IS NULL OR c.created_at >= $6)"
        " AND ($7::timestamptz IS NULL OR c.created_at < $7)"
        " ORDER BY c.id LIMIT $2",
        after_id,
        limit,
        advertiser_id,
        status,
        goal,
        since,
        until,
    )
    return [_conversion(row) for row in rows]


async def apply_status_change(
    conn: asyncpg.Connection,
    conversion: StoredConversion,
    change: StatusChange,
    *,
    reject_reason: str | None,
    event_id: uuid.UUID,
    exchange: str,
    routing_key: str,
    payload: bytes,
) -> None:
    """The new status, its history row and its outbox event (inside the caller's tx)."""
    await conn.execute(
        """
        WITH changed AS (
            UPDATE conversions
            SET status = $2, reject_reason = $3, sequence = $4, status_changed_at = $5,
                hold_until = NULL
            WHERE id = $1
        ), logged AS (
            INSERT INTO conversion_status_history
                (conversion_id, sequence, status, previous_status, actor, actor_id, reason, at)
            VALUES ($1, $4, $2, $6, $7, $8, $9, $5)
        )
        INSERT INTO outbox (event_id, exchange, routing_key, payload)
        VALUES ($10, $11, $12, $13)
        """,
        conversion.id,
        change.status,
        reject_reason,
        change.sequence,
        change.at,
        change.previous_status,
        change.actor,
        change.actor_id,
        change.reason,
        event_id,
        exchange,
        routing_key,
        payload,
    )


async def lock_due_holds(conn: asyncpg.Connection, now: datetime, limit: int) -> list[int]:
    """Pending conversions whose hold ended, locked; rows another job holds are skipped."""
    rows = await conn.fetch(
        "SELECT id FROM conversions WHERE status = 'pending' AND hold_until IS NOT NULL"
        " AND hold_until <= $1 ORDER BY hold_until LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    return [row["id"] for row in rows]


# --- caps ------------------------------------------------------------------------------


async def take_cap_slot(conn: asyncpg.Connection, goal: GoalTerms, day: date) -> bool:
    """Count one conversion against the goal's caps; False (nothing counted) when full.

    Inside the caller's transaction: the counter rows stay locked until it
    ends, and an UPDATE that waited re-checks ``count < cap`` on the row it
    finally gets, so concurrent conversions can't overshoot. Every path locks
    the all-time row before the day's row (no deadlocks between them).
    """
    if goal.total_cap is not None and not await _bump(conn, goal.id, None, goal.total_cap):
        return False
    if goal.daily_cap is not None and not await _bump(conn, goal.id, day, goal.daily_cap):
        if goal.total_cap is not None:
            await _adjust(conn, goal.id, None, -1)
        return False
    return True


async def _bump(conn: asyncpg.Connection, goal_id: int, day: date | None, cap: int) -> bool:
    """``day`` None: the all-time row."""
    await conn.execute(
        "INSERT INTO goal_counters (goal_id, day, count)"
        " VALUES ($1, coalesce($2::date, '-infinity'::date), 0) ON CONFLICT DO NOTHING",
        goal_id,
        day,
    )
    taken = await conn.fetchval(
        "UPDATE goal_counters SET count = count + 1"
        " WHERE goal_id = $1 AND day = coalesce($2::date, '-infinity'::date) AND count < $3"
        " RETURNING count",
        goal_id,
        day,
        cap,
    )
    return taken is not None


async def _adjust(conn: asyncpg.Connection, goal_id: int, day: date | None, delta: int) -> None:
    """Move an existing counter (no row: the goal is not counted that day); never below 0."""
    await conn.execute(
        "UPDATE goal_counters SET count = greatest(count + $3, 0)"
        " WHERE goal_id = $1 AND day = coalesce($2::date, '-infinity'::date)",
        goal_id,
        day,
        delta,
    )


async def release_cap_slot(conn: asyncpg.Connection, goal_id: int, day: date) -> None:
    """A conversion stopped counting (rejected): give its slots back, where counted."""
    await _adjust(conn, goal_id, None, -1)
    await _adjust(conn, goal_id, day, -1)


async def count_cap_slot(conn: asyncpg.Connection, goal_id: int, day: date) -> None:
    """A conversion counts again (an operator approved a rejected one): no cap check."""
    await _adjust(conn, goal_id, None, 1)
    await _adjust(conn, goal_id, day, 1)
