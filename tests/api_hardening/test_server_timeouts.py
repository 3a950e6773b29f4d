"""The servers as operators run them (``serve``) cut off slow and idle connections."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.api_hardening.raw_http import closed_within, connect, read_response, request_head
from tests.postback_dispatcher.conftest import fresh_vhost
from tests.support.polling import wait_for
from tests.support.servers import free_port

BIN = Path(sys.executable).parent
HEADER_TIMEOUT = 2
KEEP_ALIVE_TIMEOUT = 1


@asynccontextmanager
async def serving(command: str, port_variable: str, env: dict[str, str]) -> AsyncIterator[str]:
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(
        [str(BIN / command), "serve", *(["--no-migrate"] if command == "click-gateway" else [])],
        env={
            **os.environ,
            "ENV": "dev",
            "HOST": "127.0.0.1",
            port_variable: str(port),
            "HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "HTTP_KEEP_ALIVE_TIMEOUT_SECONDS": str(KEEP_ALIVE_TIMEOUT),
            "LOG_LEVEL": "WARNING",
            "DB_POOL_SIZE": "2",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            try:
                await wait_for(up, timeout=60, message=f"{command} serving")
            except AssertionError:
                log.seek(0)
                raise AssertionError(log.read().decode(errors="replace")[-3000:]) from None
        yield url
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
        except TimeoutError:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module", params=["click-gateway", "postback-dispatcher"])
async def served(
    request: pytest.FixtureRequest, database_url: str, amqp_url: str
) -> AsyncIterator[str]:
    if request.param == "click-gateway":
        # Two workers: the deadline must reach every worker process.
        env = {"DATABASE_URL": database_url, "AMQP_URL": amqp_url, "GATEWAY_WORKERS": "2"}
        async with serving("click-gateway", "GATEWAY_PORT", env) as url:
            yield url
    else:
        async with fresh_vhost() as vhost:
            env = {"DATABASE_URL": database_url, "AMQP_URL": vhost, "DISPATCHER_WORKERS": "1"}
            async with serving("postback-dispatcher", "DISPATCHER_PORT", env) as url:
                yield url


async def test_headers_trickling_in_are_cut_off_at_the_header_timeout(served: str) -> None:
    reader, writer = await connect(served)
    started = time.monotonic()
    closed = asyncio.create_task(closed_within(reader, 60))
    trickle = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"z" * 60
    sent = 0
    for byte in trickle:  # one byte a second, as a slowloris client does
        if closed.done():
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        await asyncio.wait([closed], timeout=1)
    await asyncio.wait_for(closed, 10)
    elapsed = time.monotonic() - started
    writer.close()
    assert sent < len(trickle), "the server waited for the whole trickle"
    assert elapsed < HEADER_TIMEOUT + 6, f"closed after {elapsed:.1f}s"


async def test_a_connection_that_sends_nothing_is_closed(served: str) -> None:
    reader, writer = await connect(served)
    elapsed = await closed_within(reader, 30)
    writer.close()
    assert elapsed < HEADER_TIMEOUT + 6


async def test_an_idle_keep_alive_connection_is_closed(served: str) -> None:
    reader, writer = await connect(served)
    writer.write(request_head("GET", "/healthz", {}))
    await writer.drain()
    response = await read_response(reader)
    assert response.status == 200
    elapsed = await closed_within(reader, 30)
    writer.close()
    assert elapsed < KEEP_ALIVE_TIMEOUT + 6
