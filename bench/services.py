"""Start the real services (and the receiver) as subprocesses, exactly as operators run them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from bench.common import (
    BIN,
    Infra,
    Proc,
    free_port,
    running,
    say,
    service_env,
    spawn,
    wait_http_ok,
)
from bench.profile import profiled


@asynccontextmanager
async def gateway(infra: Infra, name: str, **env: Any) -> AsyncIterator[tuple[Proc, str]]:
    """``click-gateway serve --no-migrate`` (database already migrated); yields (proc, base)."""
    port = free_port()
    settings = {"GATEWAY_PORT": port, "TRUSTED_PROXIES": "127.0.0.1/32", **env}
    proc = spawn(
        name,
        [str(BIN / "click-gateway"), "serve", "--no-migrate"],
        service_env(infra, **settings),
    )
    async with running(proc):
        base = f"http://127.0.0.1:{port}"
        await wait_http_ok(base + "/healthz", proc, timeout=60)
        say(f"gateway {name} up on {base}")
        async with profiled(proc):
            yield proc, base
        say(f"stopping gateway {name}")


@asynccontextmanager
async def dispatcher(infra: Infra, name: str, **env: Any) -> AsyncIterator[tuple[Proc, str]]:
    """``postback-dispatcher serve`` with private (loopback) targets allowed."""
    port = free_port()
    settings = {
        "DISPATCHER_PORT": port,
        "POSTBACK_ALLOW_PRIVATE_TARGETS": "true",
        **env,
    }
    proc = spawn(name, [str(BIN / "postback-dispatcher"), "serve"], service_env(infra, **settings))
    async with running(proc):
        base = f"http://127.0.0.1:{port}"
        await wait_http_ok(base + "/healthz", proc, timeout=60)
        say(f"dispatcher {name} up on {base}")
        async with profiled(proc):
            yield proc, base
        say(f"stopping dispatcher {name}")


class ReceiverClient:
    """Talks to ``bench.receiver``'s control paths."""

    def __init__(self, base: str) -> None:
        self.base = base

    async def _get(self, path: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.base + path) as resp,
        ):
            return orjson.loads(await resp.read())

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._get("/__stats")
        return result

    async def count(self) -> int:
        return int((await self.stats())["count"])

    async def arrivals(self) -> list[tuple[float, str]]:
        return [(t, u) for t, u in (await self._get("/__arrivals"))["arrivals"]]

    async def reset(self) -> None:
        await self._get("/__reset")


@asynccontextmanager
async def receiver(
    name: str, delay_ms: float = 0.0, record: bool = False
) -> AsyncIterator[ReceiverClient]:
    port = free_port()
    argv = [str(BIN / "python"), "-m", "bench.receiver", "--port", str(port)]
    if delay_ms:
        argv += ["--delay-ms", str(delay_ms)]
    if record:
        argv.append("--record")
    proc = spawn(name, argv)
    async with running(proc):
        client = ReceiverClient(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while True:
            try:
                await client.stats()
                break
            except (OSError, aiohttp.ClientError):
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"receiver did not start:\n{proc.log_tail()}") from None
                import asyncio

                await asyncio.sleep(0.05)
        yield client
