"""Alembic environment: runs migrations over the async engine."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from postback_core.db import models  # noqa: F401  (registers every table)
from postback_core.db.base import Base

target_metadata = Base.metadata


def _database_url() -> str:
    """Explicit URL from the caller, else DATABASE_URL, else alembic.ini."""
    from postback_core.settings import DEFAULT_DATABASE_URL

    return (
        context.config.attributes.get("database_url")
        or os.environ.get("DATABASE_URL")
        or context.config.get_main_option("sqlalchemy.url")
        or DEFAULT_DATABASE_URL
    )


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_database_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
