"""``/metrics`` as operators run the services: several worker processes, one answer.

Each worker records into the shared multiprocess files; whichever process
answers a scrape adds them all up. The serving command gives the run a
private directory under ``PROMETHEUS_MULTIPROC_DIR`` and removes it on exit (or,
when the process ended by a signal, at the next start).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from postback_core.db.base import asyncpg_dsn
from tests.click_gateway.clicks_support import (
    BROWSER,
    create_advertiser,
    create_offer,
    create_publisher,
    create_smartlink,
)
from tests.deploy.metrics_support import scrape
from tests.postback_dispatcher.conftest import (
    create_publisher_with_settings,
    fresh_vhost,
    make_event,
    publish_many,
)
from tests.support.polling import wait_for
from tests.support.servers import Receiver, free_port

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=2)
    yield pool
    await pool.close()


@asynccontextmanager
async def _serving(command: list[str], env: dict[str, str], port: int) -> AsyncIterator[str]:
    proc = subprocess.Popen(
        command,
        env={**os.environ, "ENV": "dev", "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, timeout=60, message=f"{command[0]} ready")
        yield base_url
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 60)
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        assert proc.returncode in (0, -signal.SIGTERM), (
            proc.stderr.read().decode() if proc.stderr else ""
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run_dirs(base: Path, service: str) -> list[Path]:
    return [p for p in base.iterdir() if p.name.startswith(f"{service}-")]


def _per_process(run_dir: Path, sample: str, labels: dict[str, str]) -> dict[int, float]:
    """One process's share of a counter, read from its own file alone."""
    shares = {}
    for db_file in run_dir.glob("counter_*.db"):
        pid = int(db_file.stem.rsplit("_", 1)[1])
        alone = run_dir.parent / f"share-{pid}"
        alone.mkdir()
        shutil.copy(db_file, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        shares[pid] = registry.get_sample_value(sample, labels) or 0.0
        shutil.rmtree(alone)
    return shares


async def test_gateway_workers_add_up_in_every_scrape(
    database_url: str, amqp_url: str, db: asyncpg.Pool, tmp_path: Path
) -> None:
    publisher_id = await create_publisher(db)
    offer_id = await create_offer(db, await create_advertiser(db))
    _, code = await create_smartlink(db, publisher_id, [offer_id])
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "AMQP_URL": amqp_url,
        "GATEWAY_PORT": str(port),
        "GATEWAY_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    command = [str(BIN / "click-gateway"), "serve", "--no-migrate"]
    async with _serving(command, env, port) as base_url:
        (run_dir,) = _run_dirs(tmp_path, "click-gateway")

        async def click() -> int:
            # A connection per click, so the kernel spreads them over both workers.
            async with httpx.AsyncClient(base_url=base_url) as client:
                return (await client.get(f"/get/{code}?cid=mp", headers=BROWSER)).status_code

        redirects = 0

        async def served() -> bool:
            nonlocal redirects
            if await click() == 302:
                redirects += 1
            return redirects > 0

        await wait_for(served, timeout=15, message="smartlink served")
        statuses = [await click() for _ in range(80)]
        assert statuses == [302] * 80
        expected = redirects + 80  # a fresh process tree: its counters started at 0
        redirected = {"outcome": "redirected"}
        async with httpx.AsyncClient(base_url=base_url) as client:

            async def counted() -> bool:
                # Each scrape may be answered by either worker: all must agree.
                values = [
                    (await scrape(client)).value("click_gateway_clicks_total", redirected)
                    for _ in range(4)
                ]
                return values == [expected] * 4

            await wait_for(counted, timeout=20, message="every click counted in every scrape")
        shares = _per_process(run_dir, "click_gateway_clicks_total", redirected)
        assert sum(shares.values()) == expected
        assert len([v for v in shares.values() if v > 0]) == 2, shares  # both workers counted
    assert _run_dirs(tmp_path, "click-gateway") == []  # removed on exit


async def test_dispatcher_consumer_processes_add_up(
    database_url: str, db: asyncpg.Pool, receiver: Receiver, tmp_path: Path
) -> None:
    async def slow(request: object) -> int:
        await asyncio.sleep(0.05)
        return 200

    receiver.responder = slow
    publisher_id = await create_publisher_with_settings(db, receiver.base_url + "/mp")
    port = free_port()
    async with fresh_vhost() as amqp_url:
        env = {
            "DATABASE_URL": database_url,
            "AMQP_URL": amqp_url,
            "DISPATCHER_PORT": str(port),
            "DISPATCHER_WORKERS": "2",
            # Small prefetch: the serving process can't hold the whole burst alone.
            "DISPATCHER_CONCURRENCY": "4",
            "POSTBACK_ALLOW_PRIVATE_TARGETS": "true",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        }
        command = [str(BIN / "postback-dispatcher"), "serve"]
        async with _serving(command, env, port) as base_url:
            (run_dir,) = _run_dirs(tmp_path, "postback-dispatcher")
            events = [make_event(publisher_id) for _ in range(120)]
            await publish_many(amqp_url, events)
            delivered = {"result": "delivered"}
            async with httpx.AsyncClient(base_url=base_url) as client:

                async def counted() -> bool:
                    now = await scrape(client)
                    return now.value("postback_dispatcher_messages_total", delivered) == 120

                await wait_for(counted, timeout=60, message="120 deliveries counted")
            shares = _per_process(run_dir, "postback_dispatcher_messages_total", delivered)
            assert sum(shares.values()) == 120
            assert len([v for v in shares.values() if v > 0]) == 2, shares


async def test_an_operators_metrics_dir_is_safe_with_one_process_and_for_the_migration(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set for every pod (the ConfigMap): missing, one process, a Job."""
    base = tmp_path / "not" / "created" / "yet"
    env = {"DATABASE_URL": database_url, "AMQP_URL": amqp_url}
    migrate = subprocess.run(
        [str(BIN / "click-gateway"), "migrate"],
        env={**os.environ, "ENV": "dev", **env, "PROMETHEUS_MULTIPROC_DIR": str(base)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert not base.exists()  # the one-shot records no metrics
    port = free_port()
    env |= {
        "GATEWAY_PORT": str(port),
        "GATEWAY_WORKERS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(base),
    }
    command = [str(BIN / "click-gateway"), "serve", "--no-migrate"]
    async with _serving(command, env, port) as base_url:
        (run_dir,) = _run_dirs(base, "click-gateway")
        async with httpx.AsyncClient(base_url=base_url) as client:
            assert (await client.get("/get/no-such-link")).status_code == 404

            async def counted() -> bool:
                now = await scrape(client)
                return now.value("click_gateway_clicks_total", {"outcome": "not_found"}) == 1

            await wait_for(counted, timeout=10, message="the click counted")
        assert list(run_dir.glob("counter_*.db"))  # in the run's own directory
        assert sorted(p.name for p in base.iterdir()) == [run_dir.name]
