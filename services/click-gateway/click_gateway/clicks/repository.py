"""All SQL of the click path, on raw asyncpg (COPY needs it; the rest is hot-ish too).

Functions take an ``asyncpg`` pool or connection (anything with fetch/execute).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import date, datetime
from functools import lru_cache
from typing import Any, TypeAlias

import asyncpg

# Column order of every buffered click row (a tuple) and of COPY. In buffered
# rows ``created_at`` and ``ip`` are pre-encoded wire bytes (see below).
CLICK_COLUMNS: tuple[str, ...] = (
    "click_id",
    "created_at",
    "external_id",
    "publisher_id",
    "smartlink_id",
    "offer_id",
    "ip",
    "country",
    "os",
    "device",
    "user_agent",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
    "is_bot",
    "method",
)

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection

# A write or lease call that takes longer than this is treated as failed (and
# retried) rather than left hanging on a half-dead connection.
STATEMENT_TIMEOUT_SECONDS = 30.0
LEASE_TIMEOUT_SECONDS = 5.0

# PostgreSQL's binary ``inet`` datum: family, prefix bits, is_cidr, length, address.
_INET4_HEADER = bytes((2, 32, 0, 4))
_INET6_HEADER = bytes((3, 128, 0, 16))


@lru_cache(maxsize=20_000)
def encode_inet(ip: str) -> bytes:
    """An IP address in ``inet``'s binary wire format, computed once per address.

    asyncpg's own inet encoder re-parses the text for every row (~2.5 µs, the
    largest client-side cost of a click COPY); buffered rows carry these bytes.
    """
    address = ipaddress.ip_address(ip)
    header = _INET4_HEADER if address.version == 4 else _INET6_HEADER
    return header + address.packed


def decode_inet(wire: bytes) -> str:
    return str(ipaddress.ip_address(wire[4:]))


# ``timestamptz`` on the wire: signed 64-bit microseconds since 2000-01-01 UTC.
_PG_EPOCH_MS = 946_684_800_000


def encode_timestamptz_ms(unix_ms: int) -> bytes:
    """A millisecond timestamp in ``timestamptz``'s binary wire format.

    asyncpg's datetime encoder costs ~1 µs per row; the click path already
    knows the millisecond (it is in the click id) and reuses these bytes for
    every click of the same millisecond.
    """
    return ((unix_ms - _PG_EPOCH_MS) * 1000).to_bytes(8, "big", signed=True)


def _passthrough(value: bytes) -> bytes:
    return value


async def prepare_copy_connection(conn: asyncpg.Connection) -> None:
    """The flush connection sends ``inet`` and ``timestamptz`` values pre-encoded.

    Only this connection (COPY and its fallback insert) gets the pass-through
    codecs; everything that reads uses the normal ones.
    """
    for type_name in ("inet", "timestamptz"):
        await conn.set_type_codec(
            type_name,
            schema="pg_catalog",
            encoder=_passthrough,
            decoder=_passthrough,
            format="binary",
        )


# --- click-id infrastructure -------------------------------------------------


async def cluster_secret(db: Executor, name: str, candidate: bytes) -> bytes:
    """The cluster-wide secret ``name``; the first process to ask stores ``candidate``."""
    await db.execute(
        "INSERT INTO cluster_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        name,
        candidate,
    )
    value: bytes = await db.fetchval("SELECT value FROM cluster_secrets WHERE name = $1", name)
    return value


async def lease_id_node(db: Executor, holder: str, max_node: int, seconds: float) -> int | None:
    """Take a random node that is free or whose lease expired; None if we lost a race.

    The conditional upsert re-checks expiry under the row lock, so two
    processes racing for the same node can't both get it.
    """
    node: int | None = await db.fetchval(
        """
        WITH candidate AS (
            SELECT n AS node
            FROM generate_series(0, $2::int) AS n
            LEFT JOIN id_nodes i ON i.node = n
            WHERE i.node IS NULL OR i.leased_until < now()
            ORDER BY random()
            LIMIT 1
        )
        INSERT INTO id_nodes (node, holder, leased_until)
        SELECT node, $1, now() + make_interval(secs => $3) FROM candidate
        ON CONFLICT (node) DO UPDATE
            SET holder = excluded.holder, leased_until = excluded.leased_until
            WHERE id_nodes.leased_until < now()
        RETURNING node
        """,
        holder,
        max_node,
        seconds,
    )
    return node


async def renew_id_node(db: Executor, node: int, holder: str, seconds: float) -> bool:
    renewed = await db.fetchval(
        """
        UPDATE id_nodes SET leased_until = now() + make_interval(secs => $3)
        WHERE node = $1 AND holder = $2
        RETURNING node
        """,
        node,
        holder,
        seconds,
        timeout=LEASE_TIMEOUT_SECONDS,
    )
    return renewed is not None


async def release_id_node(db: Executor, node: int, holder: str, cooldown_seconds: float) -> None:
    await db.execute(
        """
        UPDATE id_nodes SET leased_until = now() + make_interval(secs => $3)
        WHERE node = $1 AND holder = $2
        """,
        node,
        holder,
        cooldown_seconds,
    )


# --- SmartLink / offer catalogue ---------------------------------------------


async def catalog_fingerprint(db: Executor) -> tuple[Any, ...]:
    """A cheap summary that changes whenever anything the cache holds changes.

    ``updated_at`` catches edits made through the ORM; the id/flag hashes catch
    raw activations, deactivations and link changes that don't touch it.
    """
    row = await db.fetchrow(
        """
        SELECT
            (SELECT row(max(updated_at), count(*),
                        sum(hashtext(id || ':' || is_active || ':' || publisher_id)))::text
             FROM smartlinks) AS smartlinks,
            (SELECT row(max(updated_at), count(*),
                        sum(hashtext(id || ':' || is_active || ':' || weight)))::text
             FROM offers) AS offers,
            (SELECT row(count(*), sum(hashtext(smartlink_id || ':' || offer_id)))::text
             FROM smartlink_offers) AS links,
            (SELECT row(count(*), sum(hashtext(id || ':' || is_active)))::text
             FROM publishers) AS publishers,
            (SELECT row(count(*), sum(hashtext(id || ':' || is_active)))::text
             FROM advertisers) AS advertisers
        """
    )
    # Reaching (or leaving) a cap changes no row the query above summarises.
    return (*row.values(), frozenset(await capped_offer_ids(db)))


# Offers whose default goal reached its daily (UTC) or total cap: rotation skips them.
CAPPED_OFFERS = """
SELECT g.offer_id FROM goals g
WHERE g.name = 'default' AND (g.daily_cap IS NOT NULL OR g.total_cap IS NOT NULL) AND (
    g.daily_cap <= coalesce((SELECT c.count FROM goal_counters c WHERE c.goal_id = g.id
                             AND c.day = (now() AT TIME ZONE 'UTC')::date), 0)
    OR g.total_cap <= coalesce((SELECT c.count FROM goal_counters c WHERE c.goal_id = g.id
                                AND c.day = '-infinity'::date), 0))
"""


async def capped_offer_ids(db: Executor) -> set[int]:
    rows = await db.fetch(CAPPED_OFFERS)
    return {row["offer_id"] for row in rows}


async def load_catalog(db: Executor) -> list[asyncpg.Record]:
    """Every servable SmartLink with its active offers (one row per link; NULL offer = none)."""
    rows: list[asyncpg.Record] = await db.fetch(
        """
        SELECT s.id AS smartlink_id, s.code, s.publisher_id, s.fallback_url,
               o.id AS offer_id, o.url_template, o.countries, o.os, o.devices, o.weight
        FROM smartlinks s
        JOIN publishers p ON p.id = s.publisher_id AND p.is_active
        LEFT JOIN (
            smartlink_offers so
            JOIN offers o ON o.id = so.offer_id AND o.is_active
            JOIN advertisers a ON a.id = o.advertiser_id AND a.is_active
        ) ON so.smartlink_id = s.id
        WHERE s.is_active
        ORDER BY s.id, o.id
        """
    )
    return rows


# --- clicks --------------------------------------------------------------------


async def copy_clicks(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """The fast path: one COPY of the whole batch."""
    await conn.copy_records_to_table(
        "clicks", records=rows, columns=CLICK_COLUMNS, timeout=STATEMENT_TIMEOUT_SECONDS
    )


async def insert_clicks_skipping_existing(
    conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]
) -> None:
    """COPY through a temp table and skip ids already stored.

    Used after a COPY whose outcome is unknown (e.g. the connection dropped
    after the server committed it): retrying must not fail on our own rows.
    """
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE clicks_incoming (LIKE clicks INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        await conn.copy_records_to_table(
            "clicks_incoming",
            records=rows,
            columns=CLICK_COLUMNS,
            timeout=STATEMENT_TIMEOUT_SECONDS,
        )
        columns = ", ".join(CLICK_COLUMNS)
        await conn.execute(
            f"INSERT INTO clicks ({columns}) SELECT {columns} FROM clicks_incoming "  # noqa: S608
            "ON CONFLICT DO NOTHING"
        )


async def find_click(db: Executor, click_id: int, created_at: datetime) -> asyncpg.Record | None:
    """One row by primary key; ``created_at`` pins it to a single partition."""
    row: asyncpg.Record | None = await db.fetchrow(
        """
        SELECT click_id, created_at, external_id, publisher_id, smartlink_id, offer_id,
               host(ip) AS ip, country, os, device, sub1, sub2, sub3, sub4, sub5, user_agent
        FROM clicks
        WHERE click_id = $1 AND created_at = $2
        """,
        click_id,
        created_at,
    )
    return row


# One round trip for many lookups. The LATERAL subquery is parameterised by each
# key, so run-time partition pruning sends every probe to exactly one daily
# partition's primary key, however many partitions are kept. Its LIMIT 1 (the
# key is the primary key) keeps the planner from flattening it into a hash join
# over every partition.
FIND_CLICKS = """
SELECT c.click_id, c.created_at, c.external_id, c.publisher_id, c.smartlink_id, c.offer_id,
       host(c.ip) AS ip, c.country, c.os, c.device, c.sub1, c.sub2, c.sub3, c.sub4, c.sub5,
       c.user_agent
FROM unnest($1::bigint[], $2::timestamptz[]) AS k(click_id, created_at)
CROSS JOIN LATERAL (
    SELECT * FROM clicks
    WHERE clicks.click_id = k.click_id AND clicks.created_at = k.created_at
    LIMIT 1
) AS c
"""


async def find_clicks(
    db: Executor, keys: Sequence[tuple[int, datetime]]
) -> list[asyncpg.Record | None]:
    """Rows for many (click_id, created_at) keys, in the keys' order (None: not found)."""
    rows = await db.fetch(FIND_CLICKS, [k[0] for k in keys], [k[1] for k in keys])
    by_id = {row["click_id"]: row for row in rows}
    return [by_id.get(click_id) for click_id, _ in keys]


async def ensure_click_partitions(db: Executor, days_back: int, days_ahead: int) -> int:
    created: int = await db.fetchval(
        "SELECT ensure_click_partitions($1, $2)", days_back, days_ahead
    )
    return created


async def drop_click_partitions_before(db: Executor, cutoff: date) -> int:
    dropped: int = await db.fetchval("SELECT drop_click_partitions_before($1)", cutoff)
    return dropped
