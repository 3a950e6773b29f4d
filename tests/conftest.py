"""Session-wide real infrastructure: a fresh database and a fresh vhost per test run."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from tests.support.infra import (
    create_test_database,
    create_test_vhost,
    delete_vhost,
    drop_database,
)
from tests.support.servers import Receiver, run_receiver

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"

# Settings classes read the environment; make the whole run self-consistent.
os.environ.setdefault("ENV", "test")
os.environ["ADMIN_TOKEN"] = ADMIN_TOKEN
# Every test talks from 127.0.0.1 and many test refusals on purpose; the failed-auth
# limit has its own tests (tests/api_hardening), which set it low on their own servers.
os.environ.setdefault("AUTH_FAILURE_LIMIT", "100000")


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    url = await create_test_database()
    os.environ["DATABASE_URL"] = url
    yield url
    if not os.environ.get("KEEP_TEST_DATABASE"):
        await drop_database(url)


@pytest.fixture(scope="session")
async def amqp_url() -> AsyncIterator[str]:
    name, url = await create_test_vhost()
    os.environ["AMQP_URL"] = url
    yield url
    await delete_vhost(name)


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with run_receiver() as r:
        yield r
