"""All SQL of the delivery path (raw asyncpg: this is the hot path).

The claim is the heart of "never lost, never looping": one atomic
``INSERT … ON CONFLICT DO UPDATE … RETURNING`` counts the attempt *before* the
request is made, so the attempt limit holds across crashes and redeliveries,
and a conversion already delivered in the same replay generation is not sent
again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg

ClaimKind = Literal["send", "stale", "delivered", "dead", "limit"]

# Errors that belong to the rows of a statement, not to the database being away:
# retrying the same rows can't help, so they are isolated (claims) or stored in a
# reduced form (dead letters) instead of being retried.
DATA_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    ValueError,
    TypeError,
    OverflowError,
)
# The database is away (down, restarting, unreachable, out of connections): wait
# for it rather than bounce messages through the broker, which burns their
# delivery limit.
DATABASE_AWAY: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)


@dataclass(slots=True)
class Claim:
    kind: ClaimKind
    attempt_no: int
    first_attempt_at: datetime | None = None


_MARK_SKIPPED = """
INSERT INTO deliveries AS d (conversion_id, event_id, publisher_id, status, sequence, attempts,
                             updated_at)
VALUES ($1, $2, $3, 'skipped', $4, 0, now())
ON CONFLICT (conversion_id) DO UPDATE SET status = 'skipped', sequence = EXCLUDED.sequence,
    updated_at = now()
WHERE EXCLUDED.sequence > d.sequence
   OR (EXCLUDED.sequence = d.sequence AND d.status NOT IN ('delivered', 'dead'))
"""


async def mark_skipped(
    conn: asyncpg.Connection,
    *,
    conversion_id: int,
    event_id: uuid.UUID,
    publisher_id: int,
    sequence: int,
) -> None:
    await conn.execute(_MARK_SKIPPED, conversion_id, event_id, publisher_id, sequence)


@dataclass(frozen=True, slots=True)
class PostbackTarget:
    url_template: str
    security_token: str | None


async def load_postback_settings(
    conn: asyncpg.Connection, publisher_id: int
) -> PostbackTarget | None:
    row = await conn.fetchrow(
        "SELECT url_template, security_token FROM postback_settings WHERE publisher_id = $1",
        publisher_id,
    )
    if row is None or not (row["url_template"] or "").strip():
        return None
    return PostbackTarget(row["url_template"], row["security_token"])


def nul_free(text: str | None) -> str | None:
    """Text for a text column: PostgreSQL can't store NUL (a receiver's answer may hold one)."""
    if text is None or "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd")


ATTEMPT_COLUMNS = (
    "conversion_id",
    "event_id",
    "publisher_id",
    "sequence",
    "attempt_no",
    "trigger",
    "outcome",
    "url_masked",
    "http_status",
    "duration_ms",
    "error_class",
    "error_message",
    "response_excerpt",
    "created_at",
)


@dataclass(slots=True)
class AttemptRecord:
    conversion_id: int | None
    event_id: uuid.UUID | None
    publisher_id: int
    sequence: int
    attempt_no: int
    trigger: str
    outcome: str
    url_masked: str | None
    http_status: int | None
    duration_ms: float | None
    error_class: str | None
    error_message: str | None
    response_excerpt: str | None
    created_at: datetime

    def as_tuple(self) -> tuple[Any, ...]:
        duration = None if self.duration_ms is None else Decimal(str(round(self.duration_ms, 2)))
        return (
            self.conversion_id,
            self.event_id,
            self.publisher_id,
            self.sequence,
            self.attempt_no,
            self.trigger,
            self.outcome,
            nul_free(self.url_masked),
            self.http_status,
            duration,
            nul_free(self.error_class),
            nul_free(self.error_message),
            nul_free(self.response_excerpt),
            self.created_at,
        )


@dataclass(slots=True)
class DeliveryOutcome:
    """The state a finished attempt leaves on the conversion's delivery row."""

    conversion_id: int
    sequence: int
    status: str  # pending (will retry) | delivered | dead
    last_status: int | None
    last_error: str | None
    # Claimed attempts given back (a send the breaker deferred after its claim):
    # the row's last_status/last_error stay as they were.
    released_attempts: int = 0


async def insert_attempts(conn: asyncpg.Connection, records: Sequence[AttemptRecord]) -> None:
    await conn.copy_records_to_table(
        "delivery_attempts", records=[r.as_tuple() for r in records], columns=ATTEMPT_COLUMNS
    )


_APPLY_OUTCOMES = """
UPDATE deliveries AS d SET
    status = CASE WHEN d.status = 'delivered' THEN d.status ELSE u.status END,
    last_status = CASE WHEN u.released > 0 THEN d.last_status ELSE u.last_status END,
    last_error = CASE WHEN u.released > 0 THEN d.last_error ELSE u.last_error END,
    attempts = greatest(d.attempts - u.released, 0),
    delivered_at = CASE WHEN u.status = 'delivered' AND d.delivered_at IS NULL THEN now()
                        ELSE d.delivered_at END,
    updated_at = now()
FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::text[], $6::int[])
     AS u(conversion_id, sequence, status, last_status, last_error, released)
WHERE d.conversion_id = u.conversion_id AND d.sequence = u.sequence
"""


async def apply_outcomes(conn: asyncpg.Connection, outcomes: Sequence[DeliveryOutcome]) -> None:
    # One row per conversion: the latest outcome in the batch wins; released attempts add up.
    latest: dict[tuple[int, int], DeliveryOutcome] = {}
    released: dict[tuple[int, int], int] = {}
    for outcome in outcomes:
        key = (outcome.conversion_id, outcome.sequence)
        released[key] = released.get(key, 0) + outcome.released_attempts
        if not outcome.released_attempts or key not in latest:
            latest[key] = outcome
    keys = list(latest)
    rows = [latest[key] for key in keys]
    await conn.execute(
        _APPLY_OUTCOMES,
        [o.conversion_id for o in rows],
        [o.sequence for o in rows],
        [o.status for o in rows],
        [o.last_status for o in rows],
        [nul_free(o.last_error) for o in rows],
        [released[key] for key in keys],
    )


_UPSERT_DEAD_LETTER = """
INSERT INTO dead_letters AS x (
    event_key, event_id, sequence, conversion_id, click_id, publisher_id, offer_id, payout,
    url_masked, attempts, last_status, last_error, reason, first_attempt_at, last_attempt_at,
    dead_at, state, payload, history
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now(), 'dead',
          $16, $17::jsonb)
ON CONFLICT (event_key) DO UPDATE SET
    event_id = EXCLUDED.event_id, sequence = EXCLUDED.sequence,
    conversion_id = EXCLUDED.conversion_id, click_id = EXCLUDED.click_id,
    publisher_id = EXCLUDED.publisher_id, offer_id = EXCLUDED.offer_id, payout = EXCLUDED.payout,
    url_masked = EXCLUDED.url_masked, attempts = EXCLUDED.attempts,
    last_status = EXCLUDED.last_status, last_error = EXCLUDED.last_error,
    reason = EXCLUDED.reason, first_attempt_at = EXCLUDED.first_attempt_at,
    last_attempt_at = EXCLUDED.last_attempt_at, dead_at = now(), state = 'dead',
    replayed_at = NULL, payload = EXCLUDED.payload, history = EXCLUDED.history
WHERE EXCLUDED.sequence > x.sequence
"""


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    event_key: str
    event_id: uuid.UUID | None
    sequence: int
    conversion_id: int | None
    click_id: int | None
    publisher_id: int | None
    offer_id: int | None
    payout: Decimal | None
    url_masked: str | None
    attempts: int
    last_status: int | None
    last_error: str | None
    reason: str
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    payload: bytes
    history_json: str


async def upsert_dead_letter(conn: asyncpg.Connection, record: DeadLetterRecord) -> None:
    """Store a dead letter; a redelivered copy is a no-op, a later generation revives the row."""
    await conn.execute(
        _UPSERT_DEAD_LETTER,
        record.event_key,
        record.event_id,
        record.sequence,
        record.conversion_id,
        record.click_id,
        record.publisher_id,
        record.offer_id,
        record.payout,
        record.url_masked,
        record.attempts,
        record.last_status,
        record.last_error,
        record.reason,
        record.first_attempt_at,
        record.last_attempt_at,
        record.payload,
        record.history_json,
    )


_CLAIM_MANY = """
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::int[])
        AS i(conversion_id, event_id, publisher_id, sequence)
), claimed AS (
    INSERT INTO deliveries AS d (
        conversion_id, event_id, publisher_id, status, sequence, attempts,
        first_attempt_at, last_attempt_at, updated_at
    )
    SELECT conversion_id, event_id, publisher_id, 'pending', sequence, 1, now(), now(), now()
    FROM input
    ON CONFLICT (conversion_id) DO UPDATE SET
        attempts = CASE WHEN EXCLUDED.sequence > d.sequence THEN 1 ELSE d.attempts + 1 END,
        status = 'pending',
        first_attempt_at = CASE WHEN EXCLUDED.sequence > d.sequence OR d.first_attempt_at IS NULL
                                THEN now() ELSE d.first_attempt_at END,
        sequence = EXCLUDED.sequence,
        event_id = EXCLUDED.event_id,
        delivered_at = CASE WHEN EXCLUDED.sequence > d.sequence THEN NULL ELSE d.delivered_at END,
        last_attempt_at = now(),
        updated_at = now()
    WHERE EXCLUDED.sequence > d.sequence
       OR (EXCLUDED.sequence = d.sequence
           AND d.status NOT IN ('delivered', 'dead')
           AND d.attempts < $5)
    RETURNING d.conversion_id, d.attempts, d.first_attempt_at
)
SELECT i.conversion_id, i.sequence AS wanted_sequence,
       c.attempts, c.first_attempt_at,
       cur.sequence AS current_sequence, cur.status AS current_status,
       cur.attempts AS current_attempts, cur.first_attempt_at AS current_first_attempt_at
FROM input i
LEFT JOIN claimed c ON c.conversion_id = i.conversion_id
LEFT JOIN deliveries cur ON cur.conversion_id = i.conversion_id AND c.conversion_id IS NULL
"""


@dataclass(slots=True)
class ClaimRequest:
    conversion_id: int
    event_id: uuid.UUID
    publisher_id: int
    sequence: int


async def claim_attempts(
    conn: asyncpg.Connection, requests: Sequence[ClaimRequest], max_attempts: int
) -> dict[int, Claim]:
    """Claim one attempt for each of many conversions in one statement (ids distinct)."""
    rows = await conn.fetch(
        _CLAIM_MANY,
        [r.conversion_id for r in requests],
        [r.event_id for r in requests],
        [r.publisher_id for r in requests],
        [r.sequence for r in requests],
        max_attempts,
    )
    claims: dict[int, Claim] = {}
    for row in rows:
        conversion_id = row["conversion_id"]
        if row["attempts"] is not None:
            claims[conversion_id] = Claim("send", row["attempts"], row["first_attempt_at"])
            continue
        attempts = row["current_attempts"] or 0
        first = row["current_first_attempt_at"]
        if row["current_sequence"] is None or row["wanted_sequence"] < row["current_sequence"]:
            claims[conversion_id] = Claim("stale", attempts, first)
        elif row["current_status"] == "delivered":
            claims[conversion_id] = Claim("delivered", attempts, first)
        elif row["current_status"] == "dead":
            claims[conversion_id] = Claim("dead", attempts, first)
        else:
            claims[conversion_id] = Claim("limit", attempts, first)
    return claims
