"""The migrations build exactly the schema the models describe (no drift).

A fresh database is migrated to head and compared with ``postback_core.db.models``
by Alembic's autogenerate comparison (tables, columns, types, server defaults,
nullability, indexes, unique and foreign keys), plus the names of CHECK
constraints, which autogenerate does not compare. What the models can't express
is left out: the ``clicks`` partitions (the tables PostgreSQL marks
``relispartition``; the migration and ``ensure_click_partitions`` create them).
The partition functions and the outbox trigger need no filter: autogenerate does
not compare functions or triggers. Nor does it compare a partial index's WHERE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CheckConstraint, Column, Connection, Integer, MetaData, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from postback_core.db import models  # noqa: F401  (registers every table)
from postback_core.db.base import MIGRATIONS_DIR, NAMING_CONVENTION, Base
from tests.support.infra import create_test_database, drop_database


@pytest.fixture(scope="module")
async def migrated() -> AsyncIterator[AsyncEngine]:
    """A database of its own, created and migrated to head for this module."""
    url = await create_test_database("postback_migrations")
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()
        await drop_database(url)


def partitions(conn: Connection) -> set[str]:
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relispartition AND n.nspname = current_schema()"
        )
    ).scalars()
    return set(names)


def schema_drift(conn: Connection, metadata: MetaData) -> list[str]:
    """Every difference between the database on ``conn`` and ``metadata``, one line each.

    ``add_*``: in the models, missing from the database (a migration is missing);
    ``remove_*``: in the database, not in the models.
    """
    skipped = partitions(conn)

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return not (type_ == "table" and name in skipped)

    context = MigrationContext.configure(
        conn,
        opts={"compare_type": True, "compare_server_default": True, "include_name": include_name},
    )
    drift = [_describe(diff) for diff in compare_metadata(context, metadata)]
    inspector = inspect(conn)
    database_tables = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in database_tables:
            continue  # reported as add_table already
        modelled = {str(c.name) for c in table.constraints if isinstance(c, CheckConstraint)}
        present = {str(c["name"]) for c in inspector.get_check_constraints(table.name)}
        drift += [f"add_check {table.name}.{name}" for name in sorted(modelled - present)]
        drift += [f"remove_check {table.name}.{name}" for name in sorted(present - modelled)]
    return drift


def _describe(diff: Any) -> str:
    if isinstance(diff, list):  # the changes to one column come grouped
        return "; ".join(_describe(change) for change in diff)
    kind = diff[0]
    if kind.startswith("modify_"):
        _kind, _schema, table, column, _existing, in_database, in_models = diff
        return f"{kind} {table}.{column}: database {_sql(in_database)}, models {_sql(in_models)}"
    if kind in ("add_column", "remove_column"):
        _kind, _schema, table, column = diff
        return f"{kind} {table}.{column.name} {column.type}"
    item = diff[-1]
    table = getattr(item, "table", None)
    where = f" on {table.name}" if table is not None and table is not item else ""
    return f"{kind} {getattr(item, 'name', item)}{where}"


def _sql(value: Any) -> str:
    """A type, nullability or server default as SQL-ish text (not an object's repr)."""
    clause = getattr(value, "arg", value)  # a server default: its expression
    return str(getattr(clause, "text", clause))


async def test_migrations_at_head_build_the_schema_of_the_models(migrated: AsyncEngine) -> None:
    heads = ScriptDirectory(str(MIGRATIONS_DIR)).get_heads()
    async with migrated.connect() as conn:
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars()
        assert sorted(versions) == sorted(heads)
        drift = await conn.run_sync(schema_drift, Base.metadata)
    assert drift == [], "the migrations and the models differ:\n" + "\n".join(drift)


async def test_drift_is_reported_and_partitions_are_not(migrated: AsyncEngine) -> None:
    """The comparison above can fail: each kind of drift shows up, by name."""
    drifted = MetaData(naming_convention=NAMING_CONVENTION)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["publishers"].append_column(Column("loyalty_tier", Integer))

    def drift_after_changes(conn: Connection) -> tuple[set[str], list[str]]:
        for statement in (
            "ALTER TABLE offers DROP CONSTRAINT ck_offers_weight_not_negative",
            "ALTER TABLE offers ALTER COLUMN weight DROP DEFAULT",
            "ALTER TABLE outbox ALTER COLUMN last_error SET NOT NULL",
            "CREATE INDEX ix_publishers_name ON publishers (name)",
            "DROP INDEX ix_dead_letters_open_dead_at",
        ):
            conn.execute(text(statement))
        try:
            return partitions(conn), schema_drift(conn, drifted)
        finally:
            conn.rollback()

    async with migrated.connect() as conn:
        clicks_partitions, drift = await conn.run_sync(drift_after_changes)
    assert "clicks_default" in clicks_partitions and len(clicks_partitions) > 1
    text_of_drift = "\n".join(drift)
    assert not any(name in text_of_drift for name in clicks_partitions), drift
    assert "add_column publishers.loyalty_tier INTEGER" in drift
    assert "add_check offers.ck_offers_weight_not_negative" in drift
    assert "remove_index ix_publishers_name on publishers" in drift
    assert "add_index ix_dead_letters_open_dead_at on dead_letters" in drift
    assert "modify_default offers.weight: database None, models 100" in drift
    assert any(line.startswith("modify_nullable outbox.last_error:") for line in drift), drift
    assert len(drift) == 6, drift
