"""``postback-dispatcher consume`` and ``serve --no-consume``: consumers and APIs apart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import unquote

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from postback_core.topology import DEAD_LETTER_QUEUE, WORK_QUEUE
from tests.postback_dispatcher.conftest import (
    create_publisher_with_settings,
    delivery_row,
    fresh_vhost,
    make_event,
    publish_event,
)
from tests.postback_dispatcher.test_reconnect import consumers_of
from tests.support.polling import wait_for
from tests.support.servers import Receiver, free_port

CLI = Path(sys.executable).with_name("postback-dispatcher")
ADMIN_TOKEN = "split-test-admin-token-0123456789abcdef"


@contextmanager
def _dispatcher(args: list[str], env: Mapping[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([str(CLI), *args], env={**os.environ, **env})
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _env(database_url: str, amqp_url: str, **extra: str) -> dict[str, str]:
    return {
        "ENV": "test",
        "DATABASE_URL": database_url,
        "AMQP_URL": amqp_url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "HOST": "127.0.0.1",
        "POSTBACK_ALLOW_PRIVATE_TARGETS": "true",
        "POSTBACK_SETTINGS_CACHE_SECONDS": "0",
        "DISPATCHER_WORKERS": "1",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@asynccontextmanager
async def _ready(port: int, proc: subprocess.Popen[bytes]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

        async def ready() -> bool:
            assert proc.poll() is None, "the dispatcher exited"
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, timeout=90, message="/readyz answers 200")
        yield http


async def test_consume_delivers_and_answers_health_only(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/consume")
    port = free_port()
    async with fresh_vhost() as amqp_url:
        env = _env(database_url, amqp_url, DISPATCHER_CONSUMER_PORT=str(port))
        with _dispatcher(["consume"], env) as proc:
            async with _ready(port, proc) as http:
                event = make_event(publisher_id)
                await publish_event(amqp_url, event)

                async def delivered() -> bool:
                    row = await delivery_row(pg, event.conversion_id)
                    return row is not None and row["status"] == "delivered"

                await wait_for(delivered, timeout=60, message="delivered by `consume`")
                assert (await http.get("/healthz")).status_code == 200

                async def counted_delivered() -> bool:
                    return _delivered_count((await http.get("/metrics")).text) == 1

                await wait_for(counted_delivered, timeout=10, message="/metrics counts it")
                # Consumers only: the operator API is not served here.
                headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
                assert (await http.get("/api/v1/dead-letters", headers=headers)).status_code == 404
                counts = await consumers_of(unquote(amqp_url.rsplit("/", 1)[1]))
                assert counts.get(WORK_QUEUE, 0) >= 1 and counts.get(DEAD_LETTER_QUEUE, 0) >= 1


async def test_serve_no_consume_answers_the_api_and_consumes_nothing(
    database_url: str, pg: asyncpg.Pool, receiver: Receiver
) -> None:
    publisher_id = await create_publisher_with_settings(pg, receiver.base_url + "/api-only")
    port = free_port()
    async with fresh_vhost() as amqp_url:
        vhost = unquote(amqp_url.rsplit("/", 1)[1])
        env = _env(database_url, amqp_url, DISPATCHER_PORT=str(port))
        with _dispatcher(["serve", "--no-consume"], env) as proc:
            async with _ready(port, proc) as http:
                headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
                answer = await http.get("/api/v1/dead-letters", headers=headers)
                assert answer.status_code == 200, answer.text
                event = make_event(publisher_id)
                await publish_event(amqp_url, event)
                counts = await consumers_of(vhost)
                assert counts.get(WORK_QUEUE, 0) == 0 and counts.get(DEAD_LETTER_QUEUE, 0) == 0
                assert _delivered_count((await http.get("/metrics")).text) == 0
        assert await delivery_row(pg, event.conversion_id) is None
        assert receiver.matching("/api-only") == []


def _delivered_count(exposition: str) -> float:
    """``postback_dispatcher_messages_total{result="delivered"}`` of a /metrics answer."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if (
                sample.name == "postback_dispatcher_messages_total"
                and sample.labels.get("result") == "delivered"
            ):
                return sample.value
    return 0.0
