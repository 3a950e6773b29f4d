"""The closed sets of values are enforced by the database, as the models declare them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import CheckConstraint

from postback_core.db.base import MIGRATIONS_DIR, Base, asyncpg_dsn, ensure_database
from postback_core.enums import (
    AttemptOutcome,
    AttemptTrigger,
    DeadLetterReason,
    DeadLetterState,
    DeliveryStatus,
    SessionKind,
)
from tests.support.infra import PG_SERVER, drop_database, unique_name

ENUM_COLUMNS = {
    ("deliveries", "status"): DeliveryStatus,
    ("delivery_attempts", "trigger"): AttemptTrigger,
    ("delivery_attempts", "outcome"): AttemptOutcome,
    ("dead_letters", "reason"): DeadLetterReason,
    ("dead_letters", "state"): DeadLetterState,
    ("web_sessions", "kind"): SessionKind,
}


def _migrate(url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    command.upgrade(config, revision)


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    url = f"{PG_SERVER}/{unique_name('postback_enums')}"
    await ensure_database(url)
    yield url
    await drop_database(url)


def _allowed_values(definition: str) -> list[str]:
    return re.findall(r"'([^']*)'::", definition)


async def test_models_and_migrations_declare_the_same_checks(empty_database: str) -> None:
    await asyncio.to_thread(_migrate, empty_database, "0002")
    conn = await asyncpg.connect(asyncpg_dsn(empty_database))
    try:
        rows = await conn.fetch(
            "SELECT conrelid::regclass::text AS table_name, conname,"
            " pg_get_constraintdef(oid) AS definition"
            " FROM pg_constraint WHERE contype = 'c' AND conname LIKE '%\\_known'"
        )
    finally:
        await conn.close()
    in_database = {(r["table_name"], r["conname"]): _allowed_values(r["definition"]) for r in rows}
    in_models = {}
    for (table, column), enum in ENUM_COLUMNS.items():
        checks = [
            c
            for c in Base.metadata.tables[table].constraints
            if isinstance(c, CheckConstraint) and str(c.sqltext).startswith(f"{column} IN")
        ]
        assert len(checks) == 1, (table, column)
        in_models[(table, str(checks[0].name))] = [m.value for m in enum]
    assert in_database == in_models


async def test_the_migration_maps_rows_stored_before_the_checks(empty_database: str) -> None:
    await asyncio.to_thread(_migrate, empty_database, "0001")
    conn = await asyncpg.connect(asyncpg_dsn(empty_database))
    try:
        for key, reason in (("a", "permanent"), ("b", "rejected"), ("c", "weird"), ("d", "poison")):
            await conn.execute(
                "INSERT INTO dead_letters (event_key, reason) VALUES ($1, $2)", key, reason
            )
        await conn.execute(
            "INSERT INTO delivery_attempts (publisher_id, attempt_no, trigger, outcome)"
            " VALUES (1, 1, 'bogus', 'retry'), (1, 2, 'bogus', 'dead')"
        )
        await asyncio.to_thread(_migrate, empty_database, "0002")
        reasons = await conn.fetch(
            "SELECT event_key, reason, history->>'original_reason' AS original"
            " FROM dead_letters ORDER BY event_key"
        )
        triggers = await conn.fetch("SELECT trigger FROM delivery_attempts ORDER BY attempt_no")
    finally:
        await conn.close()
    assert [tuple(r) for r in reasons] == [
        ("a", "permanent_http_4xx", "permanent"),
        ("b", "broker_rejected", "rejected"),
        ("c", "unknown", "weird"),
        ("d", "poison", None),
    ]
    assert [r["trigger"] for r in triggers] == ["first", "retry"]
