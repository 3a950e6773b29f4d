"""Throw-away PostgreSQL databases and RabbitMQ vhosts, one per test run."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from urllib.parse import quote

import asyncpg

from postback_core.db.base import asyncpg_dsn, prepare_database

PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
AMQP_SERVER = "amqp://guest:guest@127.0.0.1:5672"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def create_test_database(prefix: str = "postback_test") -> str:
    url = f"{PG_SERVER}/{unique_name(prefix)}"
    await prepare_database(url)
    return url


async def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(asyncpg_dsn(f"{PG_SERVER}/postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _rabbitmqctl(*args: str) -> None:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([exe, "-q", *args], check=True, capture_output=True, timeout=60)


async def create_test_vhost(prefix: str = "postback-test") -> tuple[str, str]:
    """Create a vhost with full rights for guest; returns (name, amqp url)."""
    name = unique_name(prefix).replace("_", "-")
    await asyncio.to_thread(_rabbitmqctl, "add_vhost", name)
    await asyncio.to_thread(_rabbitmqctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name, f"{AMQP_SERVER}/{quote(name, safe='')}"


async def delete_vhost(name: str) -> None:
    await asyncio.to_thread(_rabbitmqctl, "delete_vhost", name)
